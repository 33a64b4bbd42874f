-- elementwise.lua: unary and binary ops with broadcasting, clamp, where,
-- in-place variants (trailing underscore) and arithmetic metamethods.
-- Dtypes follow PyTorch (see src/ops/elementwise.c): a number on either
-- side of a binary op counts as a scalar (an integer-valued number keeps an
-- integer tensor's dtype, any other gives f32); a Lua boolean is a bool
-- scalar.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx, mt = core.C, core.ctx, core.tensor_mt
local export, is_tensor = core.export, core.is_tensor

return function(lumen)
  local out1 = core.out1

  local function fail(level) core.fail(level + 1) end

  -- A tensor argument's handle, or an error naming the op at the user's line.
  local function th(t, op, what, level)
    if not is_tensor(t) then
      error(string.format('lumen.%s: %s must be a tensor, got %s', op, what, type(t)), level + 1)
    end
    local h = t.h
    if h == nil then error(string.format('lumen.%s: %s was freed', op, what), level + 1) end
    return h
  end

  -- A Lua boolean as a 0-d bool tensor (so b + true stays bool, as in torch).
  local function bool_scalar(v)
    local t = core.call(C.lm_empty, C.LM_BOOL, 0, nil, out1)
    C.lm_fill(ctx, t.h, v and 1 or 0)
    return t
  end

  ---------------------------------------------------------------------------
  -- binary ops: op(a, b[, dst]) with a number allowed on either side
  local function binary(name, code, a, b, dst, level)
    level = level + 1
    local dh = nil
    if dst ~= nil then dh = th(dst, name, 'destination', level) end
    if type(a) == 'boolean' then a = bool_scalar(a) end
    if type(b) == 'boolean' then b = bool_scalar(b) end
    local ta, tb = is_tensor(a), is_tensor(b)
    local st
    out1[0] = nil
    -- with a destination no result comes back (an out would hold a second
    -- reference to dst that nobody releases)
    local out = dh == nil and out1 or nil
    if ta and tb then
      st = C.lm_binary(ctx, code, th(a, name, 'first operand', level), th(b, name, 'second operand', level), dh, out)
    elseif ta and type(b) == 'number' then
      st = C.lm_binary_scalar(ctx, code, th(a, name, 'first operand', level), b, 0, dh, out)
    elseif tb and type(a) == 'number' then
      st = C.lm_binary_scalar(ctx, code, th(b, name, 'second operand', level), a, 1, dh, out)
    else
      error(string.format('lumen.%s: expected tensors or a tensor and a number, got %s and %s',
        name, type(a), type(b)), level)
    end
    if st ~= 0 then fail(level) end
    if dst ~= nil then return dst end
    return core.wrap(out1[0])
  end

  local binary_ops = {
    add = C.LM_OP_ADD, sub = C.LM_OP_SUB, mul = C.LM_OP_MUL, div = C.LM_OP_DIV, pow = C.LM_OP_POW,
    maximum = C.LM_OP_MAXIMUM, minimum = C.LM_OP_MINIMUM,
    eq = C.LM_OP_EQ, ne = C.LM_OP_NE, lt = C.LM_OP_LT, le = C.LM_OP_LE, gt = C.LM_OP_GT, ge = C.LM_OP_GE,
    logical_and = C.LM_OP_LOGICAL_AND, logical_or = C.LM_OP_LOGICAL_OR, logical_xor = C.LM_OP_LOGICAL_XOR,
  }
  for name, code in pairs(binary_ops) do
    -- lumen.add(a, b) / a:add(b); a:add_(b) writes into a
    export(lumen, name, function(a, b) return binary(name, code, a, b, nil, 2) end)
    local ip = name .. '_'
    export(lumen, ip, function(a, b)
      th(a, ip, 'input', 2)
      return binary(ip, code, a, b, a, 2)
    end)
  end
  lumen.multiply, lumen.divide, lumen.subtract = lumen.mul, lumen.div, lumen.sub

  -- the arithmetic metamethods (no __eq/__lt/__le: Lua wants booleans there)
  mt.__add = function(a, b) return binary('add', C.LM_OP_ADD, a, b, nil, 2) end
  mt.__sub = function(a, b) return binary('sub', C.LM_OP_SUB, a, b, nil, 2) end
  mt.__mul = function(a, b) return binary('mul', C.LM_OP_MUL, a, b, nil, 2) end
  mt.__div = function(a, b) return binary('div', C.LM_OP_DIV, a, b, nil, 2) end
  mt.__pow = function(a, b) return binary('pow', C.LM_OP_POW, a, b, nil, 2) end

  ---------------------------------------------------------------------------
  -- unary ops: lumen.exp(t) / t:exp(); t:exp_() in place
  local unary_ops = {
    neg = C.LM_OP_NEG, abs = C.LM_OP_ABS, exp = C.LM_OP_EXP, log = C.LM_OP_LOG, log1p = C.LM_OP_LOG1P,
    sqrt = C.LM_OP_SQRT, rsqrt = C.LM_OP_RSQRT, sin = C.LM_OP_SIN, cos = C.LM_OP_COS,
    sigmoid = C.LM_OP_SIGMOID, tanh = C.LM_OP_TANH, relu = C.LM_OP_RELU, floor = C.LM_OP_FLOOR,
    ceil = C.LM_OP_CEIL, round = C.LM_OP_ROUND, sign = C.LM_OP_SIGN, reciprocal = C.LM_OP_RECIPROCAL,
    logical_not = C.LM_OP_LOGICAL_NOT,
  }
  for name, code in pairs(unary_ops) do
    export(lumen, name, function(t)
      return core.call(C.lm_unary, code, th(t, name, 'input', 2), nil, out1)
    end)
    local ip = name .. '_'
    export(lumen, ip, function(t)
      local h = th(t, ip, 'input', 2)
      if C.lm_unary(ctx, code, h, h, nil) ~= 0 then fail(2) end
      return t
    end)
  end
  lumen.negative = lumen.neg
  mt.__unm = function(t) return core.call(C.lm_unary, C.LM_OP_NEG, th(t, 'neg', 'input', 2), nil, out1) end

  ---------------------------------------------------------------------------
  -- clamp(t, lo, hi): nil leaves a side open
  local function bound(v, name, what, default)
    if v == nil then return default end
    if type(v) ~= 'number' then
      error(string.format('lumen.%s: %s must be a number or nil, got %s', name, what, type(v)), 4)
    end
    return v
  end
  local function clamp(name, t, lo, hi, inplace)
    local h = th(t, name, 'input', 3)
    if lo == nil and hi == nil then error('lumen.' .. name .. ': at least one of lo and hi must be given', 3) end
    lo, hi = bound(lo, name, 'lo', -math.huge), bound(hi, name, 'hi', math.huge)
    if inplace then
      if C.lm_clamp(ctx, h, lo, hi, h, nil) ~= 0 then fail(3) end
      return t
    end
    out1[0] = nil
    if C.lm_clamp(ctx, h, lo, hi, nil, out1) ~= 0 then fail(3) end
    return core.wrap(out1[0])
  end
  export(lumen, 'clamp', function(t, lo, hi) return clamp('clamp', t, lo, hi, false) end)
  export(lumen, 'clamp_', function(t, lo, hi) return clamp('clamp_', t, lo, hi, true) end)
  export(lumen, 'clamp_min', function(t, lo) return clamp('clamp_min', t, lo, nil, false) end)
  export(lumen, 'clamp_max', function(t, hi) return clamp('clamp_max', t, nil, hi, false) end)
  lumen.clip = lumen.clamp

  ---------------------------------------------------------------------------
  -- where(cond, a, b): a where cond is true, else b; a or b may be numbers
  -- (typed like torch's scalars: the other side's dtype when it is a float
  -- tensor or the number is integer-valued and it is an integer tensor).
  local function is_int(v) return v == math.floor(v) and math.abs(v) < 2 ^ 63 end
  local function scalar_dtype(v, other)
    if type(v) == 'boolean' then return C.LM_BOOL end
    local od = other and core.info(other).dtype
    if od and core.is_float(od) then return od end
    if not is_int(v) then return C.LM_F32 end
    if od and od ~= C.LM_BOOL then return od end
    return C.LM_I64
  end
  local function scalar_of(v, code)
    local t = core.call(C.lm_empty, code, 0, nil, out1)
    C.lm_fill(ctx, t.h, type(v) == 'boolean' and (v and 1 or 0) or v)
    return t
  end
  export(lumen, 'where', function(cond, a, b)
    local ch = th(cond, 'where', 'condition', 2)
    for _, v in ipairs { { a, 'a' }, { b, 'b' } } do
      local x = v[1]
      if not is_tensor(x) and type(x) ~= 'number' and type(x) ~= 'boolean' then
        error(string.format('lumen.where: %s must be a tensor or a number, got %s', v[2], type(x)), 2)
      end
    end
    if not is_tensor(a) then a = scalar_of(a, scalar_dtype(a, is_tensor(b) and b or nil)) end
    if not is_tensor(b) then b = scalar_of(b, scalar_dtype(b, a)) end
    return core.call(C.lm_where, ch, th(a, 'where', 'a', 2), th(b, 'where', 'b', 2), out1)
  end)
end
