-- reduce.lua: reductions and cumsum. Each is lumen.name(t, ...) and t:name(...).
--   t:sum()  t:sum(dim)  t:sum({d0, d1}, keepdim)      (also mean, prod, all,
--   any, count_nonzero, amax, amin)
--   t:var(dim, {correction = 1, keepdim = false})  or  t:var(dim, keepdim)
--   t:norm(p, dim, keepdim)       p: a number, 'inf', '-inf' or 'fro' (2)
--   t:max() -> 0-d tensor;  t:max(dim[, keepdim]) -> values, indices
--   t:argmax([dim[, keepdim]]) (no dim: the flat index);  t:cumsum(dim)
-- Results are tensors, 0-d for full reductions (use :item() for a number).
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx
local handle, export = core.handle, core.export

return function(lumen)
  local dims_buf = ffi.new('int32_t[8]')
  local vals = ffi.new('lm_tensor*[1]')
  local idxs = ffi.new('lm_tensor*[1]')

  local function is_int(v) return type(v) == 'number' and v == math.floor(v) and v == v end

  -- dim: nil (every dim), an integer or a list of integers; fills dims_buf
  local function put_dims(op, dim)
    if dim == nil then return 0 end
    if type(dim) == 'number' then
      if not is_int(dim) then error(string.format('lumen.%s: dimension must be an integer, got %s', op, tostring(dim)), 4) end
      dims_buf[0] = dim
      return 1
    end
    if type(dim) ~= 'table' or core.is_tensor(dim) then
      error(string.format('lumen.%s: dim must be an integer or a list of integers, got %s', op, type(dim)), 4)
    end
    if #dim > 8 then error(string.format('lumen.%s: %d dimensions given, at most 8', op, #dim), 4) end
    for i = 1, #dim do
      if not is_int(dim[i]) then
        error(string.format('lumen.%s: dimension %d is %s, expected an integer', op, i, tostring(dim[i])), 4)
      end
      dims_buf[i - 1] = dim[i]
    end
    return #dim
  end

  local function keep_arg(op, keepdim)
    if keepdim == nil then return 0 end
    if type(keepdim) ~= 'boolean' then
      error(string.format('lumen.%s: keepdim must be a boolean, got %s', op, type(keepdim)), 4)
    end
    return keepdim and 1 or 0
  end

  -- Runs lm_reduce; returns values (and indices when want_idx).
  local function reduce(op, code, t, dim, keepdim, param, want_idx)
    local h = handle(t, op, 'input')
    local n = put_dims(op, dim)
    local k = keep_arg(op, keepdim)
    vals[0], idxs[0] = nil, nil
    local st = C.lm_reduce(ctx, code, h, n, dims_buf, k, param or 0, vals, want_idx and idxs or nil)
    if st ~= 0 then core.fail(3) end
    local v = core.wrap(vals[0])
    if want_idx then return v, core.wrap(idxs[0]) end
    return v
  end

  for _, name in ipairs { 'sum', 'mean', 'prod', 'all', 'any', 'count_nonzero' } do
    local code = C['LM_OP_' .. name:upper()]
    export(lumen, name, function(t, dim, keepdim) return reduce(name, code, t, dim, keepdim) end)
  end
  -- amax/amin: values only, over any set of dims
  export(lumen, 'amax', function(t, dim, keepdim) return reduce('amax', C.LM_OP_MAX, t, dim, keepdim) end)
  export(lumen, 'amin', function(t, dim, keepdim) return reduce('amin', C.LM_OP_MIN, t, dim, keepdim) end)

  -- var/std(dim, opts): opts is keepdim or {correction = 1, keepdim = false}
  -- ({unbiased = false} means correction 0); opts may also come first.
  local function var_like(name, code)
    export(lumen, name, function(t, dim, opts)
      if type(dim) == 'table' and not core.is_tensor(dim) and dim[1] == nil and next(dim) ~= nil then
        dim, opts = nil, dim
      end
      local correction, keepdim = 1, nil
      if type(opts) == 'table' then
        keepdim = opts.keepdim
        if opts.unbiased ~= nil then correction = opts.unbiased and 1 or 0 end
        if opts.correction ~= nil then correction = opts.correction end
        if type(correction) ~= 'number' then
          error(string.format('lumen.%s: correction must be a number, got %s', name, type(correction)), 2)
        end
      else
        keepdim = opts
      end
      return reduce(name, code, t, dim, keepdim, correction)
    end)
  end
  var_like('var', C.LM_OP_VAR)
  var_like('std', C.LM_OP_STD)

  local named_p = { inf = math.huge, ['-inf'] = -math.huge, fro = 2 }
  export(lumen, 'norm', function(t, p, dim, keepdim)
    if p == nil then p = 2 end
    if type(p) == 'string' then p = named_p[p] or p end
    if type(p) ~= 'number' or p ~= p then
      error(string.format("lumen.norm: p must be a number, 'inf', '-inf' or 'fro', got %s", tostring(p)), 2)
    end
    return reduce('norm', C.LM_OP_NORM, t, dim, keepdim, p)
  end)

  -- max/min(): a 0-d tensor; max/min(dim[, keepdim]): values, indices;
  -- max/min(other tensor): the elementwise maximum/minimum.
  local function extremum(name, code, elementwise)
    export(lumen, name, function(t, dim, keepdim)
      if dim == nil then return reduce(name, code, t, nil, keepdim) end
      if core.is_tensor(dim) then
        local f = lumen[elementwise]
        if not f then error(string.format('lumen.%s: %s is not available', name, elementwise), 2) end
        return f(t, dim)
      end
      if type(dim) ~= 'number' then
        error(string.format('lumen.%s: dim must be an integer, got %s (use amax/amin for several dims)', name, type(dim)), 2)
      end
      return reduce(name, code, t, dim, keepdim, 0, true)
    end)
  end
  extremum('max', C.LM_OP_MAX, 'maximum')
  extremum('min', C.LM_OP_MIN, 'minimum')

  local function arg_like(name, code)
    export(lumen, name, function(t, dim, keepdim)
      if dim ~= nil and type(dim) ~= 'number' then
        error(string.format('lumen.%s: dim must be an integer, got %s', name, type(dim)), 2)
      end
      return reduce(name, code, t, dim, keepdim)
    end)
  end
  arg_like('argmax', C.LM_OP_ARGMAX)
  arg_like('argmin', C.LM_OP_ARGMIN)

  export(lumen, 'cumsum', function(t, dim)
    local h = handle(t, 'cumsum', 'input')
    if not is_int(dim) then
      error(string.format('lumen.cumsum: dimension must be an integer, got %s', tostring(dim)), 2)
    end
    return core.call(C.lm_cumsum, h, dim, core.out1)
  end)
end
