-- Reductions and cumsum against PyTorch.
local lumen = require 'lumen'
local ffi = require 'ffi'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'

-- Deterministic values in [lo, hi) (integers for integer dtypes, 0/1 for
-- bool), built in Lua so the inputs do not depend on other ops.
local function gen(shape, dtype, lo, hi, seed)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  local buf = ffi.new('double[?]', math.max(n, 1))
  local int = dtype ~= 'f32' and dtype ~= 'f64'
  for i = 0, n - 1 do
    local u = (math.sin((i + 1) * 12.9898 + seed * 78.233) * 43758.5453) % 1
    local v = lo + (hi - lo) * u
    if dtype == 'bool' then v = u < 0.6 and 1 or 0 elseif int then v = math.floor(v) end
    buf[i] = v
  end
  local t = lumen.empty(shape, dtype)
  if n > 0 then t:copy_(lumen.from_ptr(buf, shape, 'f64')) end
  return t
end

-- a 0-d tensor holding v
local function scalar(v, dtype) return lumen.tensor({ v }, dtype):reshape({}) end

describe('reductions', function()
  local a = gen({ 3, 4, 5 }, 'f32', -1, 1, 1)
  local d = gen({ 3, 4, 5 }, 'f64', -1, 1, 2)
  local i32 = gen({ 3, 4, 5 }, 'i32', -5, 5, 3)
  local i64 = gen({ 4, 6 }, 'i64', -3, 3, 4)
  local u8 = gen({ 3, 4, 5 }, 'u8', 0, 4, 5)
  local b = gen({ 3, 4, 5 }, 'bool', 0, 1, 6)
  local at = a:transpose(0, 2)                          -- 5x4x3, non-contiguous
  local as = a[{ {}, { 0, nil, 2 }, { 1, nil, 2 } }]    -- 3x2x2, stepped slices
  local ae = gen({ 4, 1 }, 'f32', -1, 1, 7):expand(4, 6) -- stride 0
  local z = lumen.zeros(0, 3)
  local one = gen({ 1 }, 'f32', -1, 1, 8)
  local s0 = scalar(2.5)
  -- NaNs at known places
  local nan = gen({ 4, 5 }, 'f32', -1, 1, 9)
  nan[{ 1, 2 }] = 0 / 0
  nan[{ 3, 0 }] = 0 / 0
  nan[{ 3, 4 }] = 0 / 0
  -- ties: argmax/max(dim) must give the first position
  local ties = lumen.tensor({ { 1, 3, 3, 0 }, { 2, 2, 1, 2 }, { 0, 0, 0, 0 } })
  -- large inputs for the blocked, threaded and column paths
  local big = gen({ 2 ^ 20 }, 'f32', 0, 1, 10)
  local mat = gen({ 1024, 1024 }, 'f32', -1, 1, 11)
  local tall = gen({ 2 ^ 17, 3 }, 'f32', -1, 1, 12)
  local talli = gen({ 2 ^ 17, 3 }, 'i32', -1000, 1000, 13)
  local longi = gen({ 3 * 2 ^ 16 }, 'i64', 0, 50, 14)
  -- a small spread far from zero: the variance must not lose it
  local off = gen({ 64, 2053 }, 'f64', 1000, 1000.01, 15):f32()

  local cases = {
    -- sum
    { 'a.sum()', function() return a:sum() end, a = a },
    { 'a.sum(1)', function() return a:sum(1) end, a = a },
    { 'a.sum(-1, keepdim=True)', function() return a:sum(-1, true) end, a = a },
    { 'a.sum((0, 2))', function() return a:sum({ 0, 2 }) end, a = a },
    { 'a.sum((2, 0), keepdim=True)', function() return lumen.sum(a, { 2, 0 }, true) end, a = a },
    { 'd.sum((0, 1))', function() return d:sum({ 0, 1 }) end, d = d },
    { 'x.sum(0)', function() return at:sum(0) end, x = at },
    { 'x.sum((0, 2))', function() return at:sum({ 0, 2 }) end, x = at },
    { 'x.sum(1)', function() return as:sum(1) end, x = as },
    { 'x.sum()', function() return as:sum() end, x = as },
    { 'x.sum(0)', function() return ae:sum(0) end, x = ae },
    { 'x.sum(1)', function() return ae:sum(1) end, x = ae },
    { 'i.sum(1)', function() return i32:sum(1) end, i = i32 },
    { 'i.sum()', function() return i64:sum() end, i = i64 },
    { 'u.sum(0)', function() return u8:sum(0) end, u = u8 },
    { 'b.sum((1, 2))', function() return b:sum({ 1, 2 }) end, b = b },
    { 'z.sum(0)', function() return z:sum(0) end, z = z },
    { 'z.sum(1)', function() return z:sum(1) end, z = z },
    { 'z.sum()', function() return z:sum() end, z = z },
    { 'o.sum(0)', function() return one:sum(0) end, o = one },
    { 's.sum()', function() return s0:sum() end, s = s0 },
    { 's.sum(0, keepdim=True)', function() return s0:sum(0, true) end, s = s0 },
    -- mean, prod
    { 'a.mean()', function() return a:mean() end, a = a },
    { 'a.mean((1, 2), keepdim=True)', function() return a:mean({ 1, 2 }, true) end, a = a },
    { 'x.mean(2)', function() return at:mean(2) end, x = at },
    { 'd.mean(0)', function() return d:mean(0) end, d = d },
    { 'z.mean(0)', function() return z:mean(0) end, z = z },
    { 'a.prod(1)', function() return a:prod(1) end, a = a },
    { 'd.prod()', function() return d:prod() end, d = d },
    { 'i.prod(2)', function() return i32:prod(2) end, i = i32 },
    { 'b.prod(0)', function() return b:prod(0) end, b = b },
    { 'z.prod(0)', function() return z:prod(0) end, z = z },
    { 'x.prod(0)', function() return as:prod(0) end, x = as },
    -- max, min, argmax, argmin
    { 'a.max()', function() return a:max() end, a = a },
    { 'a.min()', function() return a:min() end, a = a },
    { 'a.max(1)', function() return a:max(1) end, a = a },
    { 'a.min(-1, keepdim=True)', function() return a:min(-1, true) end, a = a },
    { 'x.max(0)', function() return at:max(0) end, x = at },
    { 'x.min(2)', function() return at:min(2) end, x = at },
    { 'd.max(2)', function() return d:max(2) end, d = d },
    { 'i.max(1)', function() return i32:max(1) end, i = i32 },
    { 'i.min(0)', function() return i64:min(0) end, i = i64 },
    { 'u.max(2)', function() return u8:max(2) end, u = u8 },
    { 'b.max()', function() return b:max() end, b = b },
    { 'b.min(1)', function() return b:min(1) end, b = b },
    { 'torch.amax(a, (0, 2))', function() return a:amax({ 0, 2 }) end, a = a },
    { 'torch.amin(i, (1, 2), keepdim=True)', function() return i32:amin({ 1, 2 }, true) end, i = i32 },
    { 'a.argmax()', function() return a:argmax() end, a = a },
    { 'a.argmin(1)', function() return a:argmin(1) end, a = a },
    { 'x.argmax(1, keepdim=True)', function() return at:argmax(1, true) end, x = at },
    { 'x.argmin()', function() return at:argmin() end, x = at },
    { 'i.argmax(2)', function() return i32:argmax(2) end, i = i32 },
    { 'u.argmin(0)', function() return u8:argmin(0) end, u = u8 },
    { 't.argmax(1)', function() return ties:argmax(1) end, t = ties },
    { 't.argmin(0)', function() return ties:argmin(0) end, t = ties },
    { 't.max(1)', function() return ties:max(1) end, t = ties },
    { 't.min(0)', function() return ties:min(0) end, t = ties },
    { 't.argmax()', function() return ties:argmax() end, t = ties },
    { 'n.max()', function() return nan:max() end, n = nan },
    { 'n.min()', function() return nan:min() end, n = nan },
    { 'n.max(1)', function() return nan:max(1) end, n = nan },
    { 'n.min(0)', function() return nan:min(0) end, n = nan },
    { 'n.argmax(1)', function() return nan:argmax(1) end, n = nan },
    { 'n.argmin()', function() return nan:argmin() end, n = nan },
    { 'z.max(1)', function() return z:max(1) end, z = z },
    { 'o.max(0)', function() return one:max(0) end, o = one },
    { 's.max(0)', function() return s0:max(0) end, s = s0 },
    { 's.argmax()', function() return s0:argmax() end, s = s0 },
    -- var, std
    { 'a.var()', function() return a:var() end, a = a },
    { 'a.var(1)', function() return a:var(1) end, a = a },
    { 'a.var((0, 2), correction=0, keepdim=True)', function() return a:var({ 0, 2 }, { correction = 0, keepdim = true }) end, a = a },
    { 'a.std(0, keepdim=True)', function() return a:std(0, true) end, a = a },
    { 'x.std(0, correction=0)', function() return at:std(0, { correction = 0 }) end, x = at },
    { 'x.var(2, correction=2)', function() return at:var(2, { correction = 2 }) end, x = at },
    { 'd.std()', function() return d:std() end, d = d },
    { 'd.var(unbiased=False)', function() return d:var({ unbiased = false }) end, d = d },
    { 'o.var()', function() return one:var() end, o = one },
    { 'z.var(0)', function() return z:var(0) end, z = z },
    { 'n.var(1)', function() return nan:var(1) end, n = nan },
    -- norm
    { 'torch.linalg.vector_norm(a)', function() return a:norm() end, a = a },
    { 'torch.linalg.vector_norm(a, 2, 1)', function() return a:norm(2, 1) end, a = a },
    { 'torch.linalg.vector_norm(a, 1, (0, 2), keepdim=True)', function() return a:norm(1, { 0, 2 }, true) end, a = a },
    { 'torch.linalg.vector_norm(x, float("inf"), 0)', function() return at:norm('inf', 0) end, x = at },
    { 'torch.linalg.vector_norm(x, float("-inf"), 2)', function() return at:norm(-math.huge, 2) end, x = at },
    { 'torch.linalg.vector_norm(a, 3, 2)', function() return a:norm(3, 2) end, a = a },
    { 'torch.linalg.vector_norm(a, 0.5)', function() return a:norm(0.5) end, a = a },
    { 'torch.linalg.vector_norm(a, 0, 1)', function() return a:norm(0, 1) end, a = a },
    { 'torch.linalg.vector_norm(d, 2, 0)', function() return d:norm(2, 0) end, d = d },
    { 'torch.linalg.vector_norm(n, float("inf"), 1)', function() return nan:norm('inf', 1) end, n = nan },
    { 'torch.linalg.vector_norm(z, 2, 0)', function() return z:norm(2, 0) end, z = z },
    -- all, any, count_nonzero
    { 'b.all()', function() return b:all() end, b = b },
    { 'b.any(2)', function() return b:any(2) end, b = b },
    { 'b.all(1, keepdim=True)', function() return b:all(1, true) end, b = b },
    { 'a.all()', function() return a:all() end, a = a },
    { 'i.any(1).any(0)', function() return i32:any({ 0, 1 }) end, i = i32 },
    { 'i.all(2)', function() return i32:all(2) end, i = i32 },
    { 'u.all(1).bool()', function() return u8:all(1) end, u = u8 },
    { 'u.any(0).bool()', function() return u8:any(0) end, u = u8 },
    { 'n.all(0)', function() return nan:all(0) end, n = nan },
    { 'z.all(0)', function() return z:all(0) end, z = z },
    { 'z.any(0)', function() return z:any(0) end, z = z },
    { 'torch.count_nonzero(i)', function() return i32:count_nonzero() end, i = i32 },
    { 'torch.count_nonzero(i, (0, 2))', function() return i32:count_nonzero({ 0, 2 }) end, i = i32 },
    { 'torch.count_nonzero(b, 1)', function() return lumen.count_nonzero(b, 1) end, b = b },
    { 'torch.count_nonzero(u, -1)', function() return u8:count_nonzero(-1) end, u = u8 },
    { 'torch.count_nonzero(x, 1)', function() return as:count_nonzero(1) end, x = as },
    -- cumsum
    { 'a.cumsum(1)', function() return a:cumsum(1) end, a = a },
    { 'a.cumsum(-1)', function() return a:cumsum(-1) end, a = a },
    { 'x.cumsum(0)', function() return at:cumsum(0) end, x = at },
    { 'x.cumsum(2)', function() return as:cumsum(2) end, x = as },
    { 'x.cumsum(1)', function() return ae:cumsum(1) end, x = ae },
    { 'd.cumsum(0)', function() return d:cumsum(0) end, d = d },
    { 'i.cumsum(2)', function() return i32:cumsum(2) end, i = i32 },
    { 'b.cumsum(0)', function() return b:cumsum(0) end, b = b },
    { 'u.cumsum(1)', function() return u8:cumsum(1) end, u = u8 },
    { 'z.cumsum(0)', function() return z:cumsum(0) end, z = z },
    { 's.cumsum(0)', function() return s0:cumsum(0) end, s = s0 },
    -- large: blocked sums, rows split across threads, the column path
    { 'g.sum()', function() return big:sum() end, g = big },
    { 'g.mean()', function() return big:mean() end, g = big },
    { 'g.max()', function() return big:max() end, g = big },
    { 'g.argmin()', function() return big:argmin() end, g = big },
    { 'g.var()', function() return big:var() end, g = big },
    -- PyTorch's f32 norm drifts by ~1e-5 over 2^20 values; compare with f64
    { 'torch.linalg.vector_norm(g.double()).float()', function() return big:norm() end, g = big },
    { 'g.cumsum(0)', function() return big:cumsum(0) end, g = big },
    { 'm.sum(0)', function() return mat:sum(0) end, m = mat },
    { 'm.sum(1)', function() return mat:sum(1) end, m = mat },
    { 'm.max(0)', function() return mat:max(0) end, m = mat },
    { 'm.var(0)', function() return mat:var(0) end, m = mat },
    { 'm.t().sum(0)', function() return mat:t():sum(0) end, m = mat },
    { 'm.t().sum(1)', function() return mat:t():sum(1) end, m = mat },
    { 'm.cumsum(0)', function() return mat:cumsum(0) end, m = mat },
    { 'm.sum()', function() return mat:sum() end, m = mat },
    { 't.mean(0)', function() return tall:mean(0) end, t = tall },
    { 't.std(0)', function() return tall:std(0) end, t = tall },
    { 't.min(0)', function() return tall:min(0) end, t = tall },
    { 'torch.linalg.vector_norm(t, 1, 0)', function() return tall:norm(1, 0) end, t = tall },
    { 't.t().sum(1)', function() return tall:t():sum(1) end, t = tall },
    { 'i.max(0)', function() return talli:max(0) end, i = talli },
    { 'i.sum(0)', function() return talli:sum(0) end, i = talli },
    { 'torch.count_nonzero(i, 0)', function() return talli:count_nonzero(0) end, i = talli },
    { 'h.double().var(1).float()', function() return off:var(1) end, h = off, tol = { rtol = 2e-6, atol = 0 } },
    { 'h.double().std().float()', function() return off:std() end, h = off, tol = { rtol = 2e-6, atol = 0 } },
    { 'h.double().var(0).float()', function() return off:var(0) end, h = off, tol = { rtol = 2e-6, atol = 0 } },
    { 'l.argmax()', function() return longi:argmax() end, l = longi },
    { 'l.argmin()', function() return longi:argmin() end, l = longi },
    { 'l.max(0)', function() return longi:max(0) end, l = longi },
    { 'l.sum()', function() return longi:sum() end, l = longi },
  }

  -- PyTorch's NaNs can come back with every bit set, which LuaJIT may read
  -- as nil: rewrite each float output's NaNs as the plain NaN.
  local function canon(expr)
    return '(lambda r: tuple(x.nan_to_num(nan=float("nan"), posinf=float("inf"), neginf=float("-inf"))'
      .. ' if x.is_floating_point() else x for x in (r if isinstance(r, tuple) else (r,))))(' .. expr .. ')'
  end
  local batch = {}
  for k, c in ipairs(cases) do
    batch[k] = { canon(c[1]) }
    for name, t in pairs(c) do
      if type(name) == 'string' and name ~= 'tol' then batch[k][name] = t end
    end
  end
  local ref = oracle.run(batch)

  for k, c in ipairs(cases) do
    it(c[1], function()
      assert(not ref[k].error, ref[k].error)
      local got = { c[2]() }
      assert.are.equal(#ref[k], #got)
      for j, e in ipairs(ref[k]) do
        local dt = e:dtype()
        local opts = { rtol = 0, atol = 0 }
        if dt == 'f32' then opts = c.tol or { rtol = 1e-5, atol = 1e-5 } end
        if dt == 'f64' then opts = { rtol = 1e-10, atol = 1e-12 } end
        check.assert_close(got[j], e, opts, 'output ' .. j)
      end
    end)
  end

  it('sums 2^20 f32 values as accurately as double', function()
    local exact = big:f64():sum():item()
    local got = big:sum():item()
    assert(math.abs(got - exact) <= 1e-6 * math.abs(exact), string.format('%.9g vs %.9g', got, exact))
  end)

  it('gives the same results with one thread', function()
    local n = lumen.get_num_threads()
    lumen.set_num_threads(1)
    local s1, a1, v1 = big:sum():item(), longi:argmax():item(), tall:var(0)
    lumen.set_num_threads(n)
    assert.are.equal(a1, longi:argmax():item())
    assert(math.abs(s1 - big:sum():item()) <= 1e-6 * math.abs(s1))
    check.assert_close(v1, tall:var(0), { rtol = 1e-6 })
  end)

  it('follows the PyTorch dtype rules', function()
    assert.are.equal('i64', i32:sum():dtype())
    assert.are.equal('i64', b:sum():dtype())
    assert.are.equal('i64', u8:prod():dtype())
    assert.are.equal('u8', u8:max():dtype())
    assert.are.equal('i32', i32:min(0):dtype())
    assert.are.equal('i64', select(2, a:max(0)):dtype())
    assert.are.equal('i64', a:argmax():dtype())
    assert.are.equal('bool', a:any():dtype())
    assert.are.equal('i64', a:count_nonzero():dtype())
    assert.are.equal('f64', d:cumsum(0):dtype())
    assert.are.equal('i64', i32:cumsum(0):dtype())
    assert.are.equal(0, a:sum():dim())
    assert.are.equal(0, a:max():dim())
  end)

  it('rejects non-float inputs where PyTorch does', function()
    local r = oracle.run { { 'i.mean()', i = i32 }, { 'i.var()', i = i32 }, { 'torch.linalg.vector_norm(i)', i = i32 } }
    for k = 1, 3 do assert(r[k].error, 'PyTorch accepted case ' .. k) end
    assert.has_error(function() i32:mean() end, 'lumen.mean: expected a floating-point input (f32 or f64), got i32')
    assert.has_error(function() i64:var() end, 'lumen.var: expected a floating-point input (f32 or f64), got i64')
    assert.has_error(function() b:std(0) end, 'lumen.std: expected a floating-point input (f32 or f64), got bool')
    assert.has_error(function() u8:norm() end, 'lumen.norm: expected a floating-point input (f32 or f64), got u8')
  end)

  it('reports bad dimensions and arguments', function()
    assert.has_error(function() a:sum(3) end, 'lumen.sum: dimension 3 out of range for a 3-D tensor')
    assert.has_error(function() a:mean(-4) end, 'lumen.mean: dimension -4 out of range for a 3-D tensor')
    assert.has_error(function() a:sum({ 1, -2 }) end, 'lumen.sum: dimension -2 appears more than once')
    assert.has_error(function() a:max(5) end, 'lumen.max: dimension 5 out of range for a 3-D tensor')
    assert.has_error(function() s0:sum(1) end, 'lumen.sum: dimension 1 out of range for a 0-D tensor')
    assert.has_error(function() a:cumsum(3) end, 'lumen.cumsum: dimension 3 out of range for a 3-D tensor')
    assert.has_error(function() a:cumsum() end, 'lumen.cumsum: dimension must be an integer, got nil')
    assert.has_error(function() a:sum(1.5) end, 'lumen.sum: dimension must be an integer, got 1.5')
    assert.has_error(function() a:sum({ 0, 'x' }) end, 'lumen.sum: dimension 2 is x, expected an integer')
    assert.has_error(function() a:sum(0, 1) end, 'lumen.sum: keepdim must be a boolean, got number')
    assert.has_error(function() a:norm('two') end, "lumen.norm: p must be a number, 'inf', '-inf' or 'fro', got two")
    assert.has_error(function() a:max({ 0, 1 }) end, 'lumen.max: dim must be an integer, got table (use amax/amin for several dims)')
    assert.has_error(function() lumen.sum(42) end, 'lumen.sum: input must be a tensor, got number')
    assert.has_error(function() lumen.cumsum('x', 0) end, 'lumen.cumsum: input must be a tensor, got string')
  end)

  it('refuses extrema of empty dimensions, naming the op', function()
    assert.has_error(function() z:max() end, 'lumen.max: cannot reduce over an empty dimension (input shape 0x3)')
    assert.has_error(function() z:min(0) end, 'lumen.min: cannot reduce over an empty dimension (input shape 0x3)')
    assert.has_error(function() z:argmax() end, 'lumen.argmax: cannot reduce over an empty dimension (input shape 0x3)')
    assert.has_error(function() z:amin(0) end, 'lumen.min: cannot reduce over an empty dimension (input shape 0x3)')
    local r = oracle.run { { 'z.max()', z = z }, { 'z.argmax()', z = z }, { 'z.min(0)', z = z } }
    for k = 1, 3 do assert(r[k].error, 'PyTorch accepted case ' .. k) end
  end)

  it('leaks nothing, on success or error', function()
    collectgarbage('collect')
    local before = lumen.memory().live
    for _ = 1, 20 do
      a:sum({ 0, 2 }); at:var(0); a:max(1); i32:cumsum(1); at:sum({ 0, 2 }); tall:mean(0)
      pcall(function() return z:max() end)
      pcall(function() return i32:mean() end)
      pcall(function() return a:sum({ 0, 0 }) end)
    end
    collectgarbage('collect')
    collectgarbage('collect')
    assert.are.equal(before, lumen.memory().live)
  end)

  it('checks the C arguments', function()
    local C, ctx = lumen.core.C, lumen.core.ctx
    local v, ix = ffi.new('lm_tensor*[1]'), ffi.new('lm_tensor*[1]')
    local dims = ffi.new('int32_t[2]', 0, 1)
    assert.are.equal(C.LM_E_ARG, C.lm_reduce(ctx, C.LM_OP_SUM, a.h, 1, dims, 0, 0, nil, nil))
    assert.are.equal(C.LM_E_ARG, C.lm_reduce(ctx, C.LM_OP_ADD, a.h, 0, nil, 0, 0, v, nil))
    assert.are.equal(C.LM_E_ARG, C.lm_reduce(ctx, C.LM_OP_SUM, nil, 0, nil, 0, 0, v, nil))
    assert.are.equal(C.LM_E_ARG, C.lm_reduce(ctx, C.LM_OP_SUM, a.h, 1, nil, 0, 0, v, nil))
    assert.are.equal(C.LM_E_ARG, C.lm_reduce(ctx, C.LM_OP_SUM, a.h, 9, dims, 0, 0, v, nil))
    assert.are.equal(C.LM_E_ARG, C.lm_reduce(ctx, C.LM_OP_MAX, a.h, 2, dims, 0, 0, v, ix))
    assert.are.equal(C.LM_E_ARG, C.lm_reduce(ctx, C.LM_OP_SUM, a.h, 1, dims, 0, 0, v, ix))
    assert.are.equal(C.LM_E_ARG, C.lm_reduce(ctx, C.LM_OP_NORM, a.h, 0, nil, 0, 0 / 0, v, nil))
    assert.are.equal(C.LM_E_ARG, C.lm_cumsum(ctx, nil, 0, v))
    assert.are.equal(C.LM_E_ARG, C.lm_cumsum(ctx, a.h, 0, nil))
    C.lm_ctx_clear_error(ctx)
  end)
end)
