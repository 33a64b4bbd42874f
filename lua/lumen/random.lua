-- random.lua: seeding and drawing random numbers. The generator is Philox
-- (counter-based): element i of a draw depends only on (seed, offset + i),
-- so results do not change with the thread count.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx
local call, handle, export = core.call, core.handle, core.export

return function(lumen)
  local u64 = ffi.typeof('uint64_t')
  local seed_out, offset_out = ffi.new('uint64_t[1]'), ffi.new('uint64_t[1]')

  -- A seed or offset as uint64: integer Lua numbers (negative ones wrap, as
  -- in PyTorch) or 64-bit cdata.
  local function to_u64(x, op, what)
    if type(x) == 'number' then
      if x ~= math.floor(x) or not (x >= -2 ^ 63 and x < 2 ^ 64) then
        error(string.format('lumen.%s: %s must be an integer, got %s', op, what, tostring(x)), 3)
      end
      if x < 0 then return ffi.cast(u64, ffi.cast('int64_t', x)) end
      return ffi.cast(u64, x)
    elseif type(x) == 'cdata' and (ffi.istype('uint64_t', x) or ffi.istype('int64_t', x)) then
      return ffi.cast(u64, x)
    end
    error(string.format('lumen.%s: %s must be an integer, got %s', op, what, type(x)), 3)
  end
  -- A Lua number when exact, else the uint64 cdata.
  local function from_u64(x)
    if x < 2 ^ 53 then return tonumber(x) end
    return x
  end

  function lumen.manual_seed(seed)
    C.lm_seed(ctx, to_u64(seed, 'manual_seed', 'seed'))
  end
  lumen.seed = lumen.manual_seed

  -- get_rng_state() -> {seed = ..., offset = ...}
  function lumen.get_rng_state()
    C.lm_rng_get_state(ctx, seed_out, offset_out)
    return { seed = from_u64(seed_out[0]), offset = from_u64(offset_out[0]) }
  end
  function lumen.set_rng_state(state)
    if type(state) ~= 'table' or state.seed == nil or state.offset == nil then
      error('lumen.set_rng_state: expected a table {seed = ..., offset = ...} from get_rng_state', 2)
    end
    C.lm_rng_set_state(ctx, to_u64(state.seed, 'set_rng_state', 'seed'), to_u64(state.offset, 'set_rng_state', 'offset'))
  end

  local function number_arg(x, default, op, what)
    if x == nil then return default end
    if type(x) ~= 'number' then
      error(string.format('lumen.%s: %s must be a number, got %s', op, what, type(x)), 3)
    end
    return x
  end
  local int_arg = core.int_arg

  -- in-place draws; each returns t
  export(lumen, 'uniform_', function(t, lo, hi)
    local h = handle(t, 'uniform_', 'tensor')
    core.check(C.lm_uniform_(ctx, h, number_arg(lo, 0, 'uniform_', 'lo'), number_arg(hi, 1, 'uniform_', 'hi')))
    return t
  end)
  export(lumen, 'normal_', function(t, mean, std)
    local h = handle(t, 'normal_', 'tensor')
    core.check(C.lm_normal_(ctx, h, number_arg(mean, 0, 'normal_', 'mean'), number_arg(std, 1, 'normal_', 'std')))
    return t
  end)
  export(lumen, 'bernoulli_', function(t, p)
    local h = handle(t, 'bernoulli_', 'tensor')
    core.check(C.lm_bernoulli_(ctx, h, number_arg(p, 0.5, 'bernoulli_', 'p')))
    return t
  end)

  -- the C op is randint_; errors are reported under the Lua name op
  local function randint_(t, lo, hi, op)
    if C.lm_randint_(ctx, t.h, lo, hi) ~= 0 then core.fail_as(op, 3) end
  end

  -- random_(lo, hi): integers in [lo, hi); random_(hi): [0, hi); random_():
  -- every value the dtype holds exactly from 0 up (as in PyTorch).
  local full_range = {
    [C.LM_F32] = 2 ^ 24 + 1, [C.LM_F64] = 2 ^ 53 + 1, [C.LM_I32] = 2 ^ 31,
    [C.LM_U8] = 256, [C.LM_BOOL] = 2,
  }
  export(lumen, 'random_', function(t, lo, hi)
    handle(t, 'random_', 'tensor')
    if hi == nil then
      if lo == nil then
        local code = core.info(t).dtype
        lo, hi = 0, full_range[code] or ffi.new('int64_t', 0x7fffffffffffffffLL)
      else
        lo, hi = 0, lo
      end
    end
    lo = int_arg(lo, 'random_', 'lo')
    if not ffi.istype('int64_t', hi) then hi = int_arg(hi, 'random_', 'hi') end
    randint_(t, lo, hi, 'random_')
    return t
  end)

  -- A new float tensor from the arguments parsed by core.shape_args (called
  -- by rand and randn themselves, so that its errors blame their caller).
  local function float_shape(op, shape, dtype, device)
    if not core.is_float(dtype) then
      error(string.format('lumen.%s: dtype must be f32 or f64, got %s', op, core.dtype_names[dtype]), 3)
    end
    return core.empty_on(op, shape, dtype, device)
  end

  -- rand(2, 3[, dtype]) or rand({2, 3}[, dtype or {dtype =, device =}]):
  -- uniform on [0, 1); on a device, the same numbers as on the CPU
  function lumen.rand(...)
    local t = float_shape('rand', core.shape_args('rand', ...))
    core.check(C.lm_uniform_(ctx, t.h, 0, 1))
    return t
  end
  -- randn(...): standard normal
  function lumen.randn(...)
    local t = float_shape('randn', core.shape_args('randn', ...))
    core.check(C.lm_normal_(ctx, t.h, 0, 1))
    return t
  end

  -- randint(lo, hi, shape[, dtype = 'i64']) or randint(hi, shape[, dtype])
  function lumen.randint(lo, hi, shape, dtype)
    if type(hi) == 'table' then lo, hi, shape, dtype = 0, lo, hi, shape end
    if type(shape) == 'number' then shape = { shape } end
    if type(shape) ~= 'table' then
      error('lumen.randint: expected randint(lo, hi, shape[, dtype]) with shape a table of sizes', 2)
    end
    lo, hi = int_arg(lo, 'randint', 'lo'), int_arg(hi, 'randint', 'hi')
    local device
    dtype, device = core.dtype_device(dtype, 'randint')
    local code = core.dtype_code(dtype or 'i64', 2)
    local t = core.empty_on('randint', shape, code, device)
    randint_(t, lo, hi, 'randint')
    return t
  end

  -- randperm(n[, dtype = 'i64' or {dtype =, device =}]): a random
  -- permutation of 0 .. n-1; on a device, the CPU's for the same seed
  -- (drawn on the host and copied: Fisher-Yates is serial)
  function lumen.randperm(n, dtype)
    n = int_arg(n, 'randperm', 'n')
    local device
    dtype, device = core.dtype_device(dtype, 'randperm')
    return call(C.lm_randperm_on, device, n, core.dtype_code(dtype or 'i64', 2), core.out1)
  end

  -- bernoulli(probs): 0/1 draws with per-element probabilities, same dtype
  export(lumen, 'bernoulli', function(probs)
    return call(C.lm_bernoulli, handle(probs, 'bernoulli', 'probs'), core.out1)
  end)
end
