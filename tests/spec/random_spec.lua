-- Random numbers: determinism, thread independence, state, moments and
-- errors. The generator is Philox, not PyTorch's, so values are checked by
-- their statistics (fixed seeds: deterministic, never flaky); the raw
-- Philox known answers live in tests/c/test_rng.c.
local lumen = require 'lumen'
local ffi = require 'ffi'

-- contiguous copy of t's values as a byte string (exact comparison)
local function bytes(t)
  local c = t:contiguous()
  return ffi.string(c:data_ptr(), c:numel() * lumen.core.C.lm_dtype_size(lumen.core.dtypes[c:dtype()]))
end

-- mean and (population) variance of a contiguous float or integer tensor,
-- read through a pointer so the spec does not depend on the reduce family
local function moments(t)
  local p = ffi.cast(lumen.core.ctypes[lumen.core.dtypes[t:dtype()]], t:data_ptr())
  local n = t:numel()
  local s, s2 = 0, 0
  for i = 0, n - 1 do
    local v = tonumber(p[i])
    s = s + v
    s2 = s2 + v * v
  end
  local m = s / n
  return m, s2 / n - m * m
end

local function minmax(t)
  local lo, hi = math.huge, -math.huge
  for _, v in ipairs(require('helpers.check').values(t)) do
    lo, hi = math.min(lo, v), math.max(hi, v)
  end
  return lo, hi
end

local N = 1000000

describe('random', function()
  after_each(function() lumen.set_num_threads(2) end)

  it('repeats with the same seed and differs with another', function()
    lumen.manual_seed(123)
    local a, an = lumen.rand(1000), lumen.randn(5, 7, 'f64')
    lumen.manual_seed(123)
    local b, bn = lumen.rand(1000), lumen.randn(5, 7, 'f64')
    assert.are.equal(bytes(a), bytes(b))
    assert.are.equal(bytes(an), bytes(bn))
    lumen.seed(124)
    assert.are_not.equal(bytes(a), bytes(lumen.rand(1000)))
    -- successive draws differ too (the offset moves on)
    lumen.manual_seed(123)
    local c = lumen.rand(1000)
    assert.are_not.equal(bytes(c), bytes(lumen.rand(1000)))
  end)

  it('gives the same numbers with 1 and 2 threads', function()
    local function draws()
      lumen.manual_seed(7)
      return {
        lumen.rand(300000, 'f64'), lumen.randn(300001), lumen.randint(-5, 1000, { 250000 }),
        lumen.zeros(200000, 'u8'):bernoulli_(0.25), lumen.bernoulli(lumen.full({ 100000 }, 0.5)),
        lumen.zeros(500, 600):t():uniform_(-1, 1),
      }
    end
    lumen.set_num_threads(1)
    local one = draws()
    lumen.set_num_threads(2)
    local two = draws()
    for i = 1, #one do assert.are.equal(bytes(one[i]), bytes(two[i]), 'draw ' .. i) end
  end)

  it('round-trips the state', function()
    lumen.manual_seed(99)
    lumen.rand(17)
    local st = lumen.get_rng_state()
    assert.are.same({ seed = 99, offset = 17 }, st)
    local a = lumen.randn(64)
    local p = lumen.randperm(50)
    lumen.set_rng_state(st)
    assert.are.equal(bytes(a), bytes(lumen.randn(64)))
    assert.are.equal(bytes(p), bytes(lumen.randperm(50)))
    -- 64-bit seeds survive as cdata
    lumen.manual_seed(ffi.new('uint64_t', 0xfedcba9876543210ULL))
    local s64 = lumen.get_rng_state()
    assert.is_true(s64.seed == 0xfedcba9876543210ULL)
    local x = lumen.rand(8)
    lumen.set_rng_state(s64)
    assert.are.equal(bytes(x), bytes(lumen.rand(8)))
    -- a negative seed wraps like an int64
    lumen.manual_seed(-1)
    assert.is_true(lumen.get_rng_state().seed == 0xffffffffffffffffULL)
  end)

  it('advances the offset by the number of elements', function()
    lumen.manual_seed(5)
    lumen.rand(10)
    lumen.zeros(0, 3):uniform_()
    lumen.zeros(3, 4, 'i32'):random_(0, 9)
    lumen.randperm(6)
    assert.are.equal(10 + 12 + 6, lumen.get_rng_state().offset)
    -- element i of a draw is counter offset + i: a tail draw matches
    lumen.manual_seed(5)
    local whole = lumen.rand(10, 'f64'):totable()
    lumen.set_rng_state({ seed = 5, offset = 4 })
    local tail = lumen.rand(6, 'f64'):totable()
    for i = 1, 6 do assert.are.equal(whole[i + 4], tail[i]) end
  end)

  it('uniform has the right moments and range', function()
    lumen.manual_seed(2024)
    local u = lumen.rand(N)
    local m, v = moments(u)
    assert.is_true(math.abs(m - 0.5) < 2e-3, 'mean ' .. m)
    assert.is_true(math.abs(v - 1 / 12) < 5e-4, 'var ' .. v)
    local lo, hi = minmax(u)
    assert.is_true(lo >= 0 and hi < 1 and lo < 1e-4 and hi > 1 - 1e-4)
    local w = lumen.empty(N, 'f64'):uniform_(-2, 3)
    m, v = moments(w)
    assert.is_true(math.abs(m - 0.5) < 1e-2, 'mean ' .. m)
    assert.is_true(math.abs(v - 25 / 12) < 1e-2, 'var ' .. v)
    lo, hi = minmax(w)
    assert.is_true(lo >= -2 and hi < 3)
    -- a tiny f32 range stays inside [lo, hi)
    local tiny = lumen.empty(10000):uniform_(1, 1 + 2 ^ -22)
    lo, hi = minmax(tiny)
    assert.is_true(lo >= 1 and hi < 1 + 2 ^ -22)
  end)

  it('normal has the right moments', function()
    lumen.manual_seed(2025)
    local m, v = moments(lumen.randn(N, 'f64'))
    assert.is_true(math.abs(m) < 5e-3, 'mean ' .. m)
    assert.is_true(math.abs(math.sqrt(v) - 1) < 4e-3, 'std ' .. math.sqrt(v))
    m, v = moments(lumen.empty(N):normal_(3, 2))
    assert.is_true(math.abs(m - 3) < 1e-2, 'mean ' .. m)
    assert.is_true(math.abs(math.sqrt(v) - 2) < 8e-3, 'std ' .. math.sqrt(v))
    -- the tails are there: about 2700 of 10^6 beyond 3 sigma
    local p, far = ffi.cast('float*', lumen.randn(N):data_ptr()), 0
    for i = 0, N - 1 do if math.abs(p[i]) > 3 then far = far + 1 end end
    assert.is_true(far > 2400 and far < 3000, 'beyond 3 sigma: ' .. far)
    -- std = 0 gives the mean
    assert.are.same({ 4, 4 }, lumen.empty(2):normal_(4, 0):totable())
  end)

  it('bernoulli has the right frequency', function()
    lumen.manual_seed(11)
    local m = moments(lumen.zeros(N, 'f64'):bernoulli_(0.3))
    assert.is_true(math.abs(m - 0.3) < 3e-3, 'frequency ' .. m)
    -- per-element probabilities: half the entries 0.1, half 0.8
    local probs = lumen.empty(N, 'f64')
    local pp = ffi.cast('double*', probs:data_ptr())
    for i = 0, N - 1 do pp[i] = i % 2 == 0 and 0.1 or 0.8 end
    local b = lumen.bernoulli(probs)
    assert.are.equal('f64', b:dtype())
    local bp, c0, c1 = ffi.cast('double*', b:data_ptr()), 0, 0
    for i = 0, N - 1, 2 do c0 = c0 + bp[i]; c1 = c1 + bp[i + 1] end
    assert.is_true(math.abs(c0 / (N / 2) - 0.1) < 3e-3, 'p=0.1 gives ' .. c0 / (N / 2))
    assert.is_true(math.abs(c1 / (N / 2) - 0.8) < 3e-3, 'p=0.8 gives ' .. c1 / (N / 2))
    -- p = 0 and p = 1 are exact
    assert.are.same({ 0, 0, 0 }, lumen.ones(3):bernoulli_(0):totable())
    assert.are.same({ 1, 1, 1 }, lumen.zeros(3, 'i64'):bernoulli_(1):totable())
    assert.are.same({ { 0, 1 } }, lumen.bernoulli(lumen.tensor({ { 0, 1 } }, 'f32')):totable())
    -- expanded and transposed probabilities are read through their layout
    local ex = lumen.bernoulli(lumen.tensor({ { 0 }, { 1 } }, 'f64'):expand(2, 3):t())
    assert.are.same({ { 0, 1 }, { 0, 1 }, { 0, 1 } }, ex:totable())
  end)

  it('randint covers the range uniformly (chi-square)', function()
    lumen.manual_seed(31)
    local k = 10
    local t = lumen.randint(-3, -3 + k, { N })
    assert.are.equal('i64', t:dtype())
    local p, counts = ffi.cast('int64_t*', t:data_ptr()), {}
    for i = 0, k - 1 do counts[i] = 0 end
    for i = 0, N - 1 do
      local v = tonumber(p[i]) + 3
      assert(v >= 0 and v < k, 'value out of range')
      counts[v] = counts[v] + 1
    end
    local e, chi2 = N / k, 0
    for i = 0, k - 1 do chi2 = chi2 + (counts[i] - e) ^ 2 / e end
    -- 9 degrees of freedom: P(chi2 > 33) < 2e-4
    assert.is_true(chi2 < 33, 'chi2 ' .. chi2)
    -- a large range reaches both ends
    local lo, hi = minmax(lumen.randint(0, 2 ^ 40, { 10000 }))
    assert.is_true(lo >= 0 and lo < 2 ^ 34 and hi < 2 ^ 40 and hi > 2 ^ 40 - 2 ^ 34)
  end)

  it('randperm is a permutation', function()
    lumen.manual_seed(3)
    for _, c in ipairs { { 1000, 'i64' }, { 257, 'i32' }, { 256, 'u8' }, { 100, 'f32' }, { 33, 'f64' }, { 1 }, { 0 } } do
      local n, dtype = c[1], c[2]
      local p = lumen.randperm(n, dtype)
      assert.are.equal(dtype or 'i64', p:dtype())
      assert.are.same({ n }, p:size())
      local seen, moved = {}, 0
      for i, v in ipairs(p:totable()) do
        assert(v >= 0 and v < n and v == math.floor(v) and not seen[v], 'not a permutation')
        seen[v] = true
        if v ~= i - 1 then moved = moved + 1 end
      end
      if n >= 33 then assert.is_true(moved > n / 2, 'barely shuffled') end
    end
  end)

  it('fills non-contiguous targets in row-major order of the view', function()
    local x = lumen.zeros(6, 8, 'f64')
    lumen.set_rng_state({ seed = 1, offset = 0 })
    local v = x:slice(1, 0, 8, 2):uniform_(1, 2)
    lumen.set_rng_state({ seed = 1, offset = 0 })
    local ref = lumen.empty(6, 4, 'f64'):uniform_(1, 2)
    assert.are.same(ref:totable(), v:totable())
    for r, row in ipairs(x:totable()) do
      for c, val in ipairs(row) do
        if (c - 1) % 2 == 1 then assert.are.equal(0, val) else assert.is_true(val >= 1 and val < 2) end
      end
    end
    -- transposed
    local y = lumen.zeros(3, 5)
    lumen.set_rng_state({ seed = 2, offset = 10 })
    y:t():normal_()
    lumen.set_rng_state({ seed = 2, offset = 10 })
    assert.are.same(lumen.randn(5, 3):t():totable(), y:totable())
    -- integer and bool targets, strided
    local z = lumen.zeros(4, 6, 'i32')
    z:slice(0, 1, 4, 2):random_(10, 13)
    for r, row in ipairs(z:totable()) do
      for _, val in ipairs(row) do
        if r % 2 == 1 then assert.are.equal(0, val) else assert.is_true(val >= 10 and val < 13) end
      end
    end
    local bt = lumen.zeros(5, 'bool')
    bt:slice(0, 0, 5, 2):bernoulli_(1)
    assert.are.same({ true, false, true, false, true }, bt:totable())
  end)

  it('draws into every dtype that takes each op', function()
    lumen.manual_seed(8)
    for _, d in ipairs { 'f32', 'f64', 'i32', 'i64', 'u8', 'bool' } do
      local b = lumen.zeros(1000, d):bernoulli_(0.5)
      local s = 0
      for _, v in ipairs(require('helpers.check').values(b)) do
        assert(v == 0 or v == 1)
        s = s + v
      end
      assert.is_true(s > 400 and s < 600, d .. ': ' .. s)
      local r = lumen.zeros(1000, d):random_(0, 2)
      local lo, hi = minmax(r)
      assert.is_true(lo == 0 and hi == 1, d)
      local full = lumen.zeros(1000, d):random_()
      lo, hi = minmax(full)
      assert.is_true(lo >= 0 and hi > 0, d)
    end
    local lo, hi = minmax(lumen.zeros(1000, 'u8'):random_())
    assert.is_true(lo < 10 and hi > 245)
    assert.are.equal('f64', lumen.rand(2, 'f64'):dtype())
    assert.are.equal('f64', lumen.randn({ 2 }, { dtype = 'f64' }):dtype())
    assert.are.equal('i32', lumen.randint(5, { 3 }, 'i32'):dtype())
    assert.are.same({}, lumen.rand():size())
    assert.are.same({ 2, 0 }, lumen.randn(2, 0):size())
  end)

  it('reports bad arguments clearly', function()
    assert.has_error(function() lumen.rand(2, 'i64') end, 'lumen.rand: dtype must be f32 or f64, got i64')
    assert.has_error(function() lumen.zeros(3, 'i32'):uniform_(0, 1) end,
      'lumen.uniform_: expected a floating tensor (f32 or f64), got i32')
    assert.has_error(function() lumen.zeros(3, 'u8'):normal_() end,
      'lumen.normal_: expected a floating tensor (f32 or f64), got u8')
    assert.has_error(function() lumen.zeros(3):uniform_(1, 1) end,
      'lumen.uniform_: expected finite lo < hi, got lo=1, hi=1')
    assert.has_error(function() lumen.zeros(3):uniform_(0, math.huge) end,
      'lumen.uniform_: expected finite lo < hi, got lo=0, hi=inf')
    assert.has_error(function() lumen.zeros(3):normal_(0, -1) end,
      'lumen.normal_: expected a finite mean and std >= 0, got mean=0, std=-1')
    assert.has_error(function() lumen.zeros(3):bernoulli_(1.5) end, 'lumen.bernoulli_: p must be in [0, 1], got 1.5')
    assert.has_error(function() lumen.bernoulli(lumen.tensor({ 0.5, -0.1 })) end,
      'lumen.bernoulli: probabilities must be in [0, 1], found -0.1 at flat position 1')
    assert.has_error(function() lumen.bernoulli(lumen.tensor({ 0, 0 / 0 }, 'f64')) end)
    assert.has_error(function() lumen.bernoulli(lumen.zeros(2, 'i64')) end,
      'lumen.bernoulli: expected a floating tensor (f32 or f64), got i64')
    assert.has_error(function() lumen.randint(3, 3, { 2 }) end, 'lumen.randint: expected lo < hi, got lo=3, hi=3')
    assert.has_error(function() lumen.randint(0, 300, { 2 }, 'u8') end,
      'lumen.randint: range [0, 300) does not fit dtype u8')
    assert.has_error(function() lumen.zeros(2, 'bool'):random_(0, 3) end,
      'lumen.random_: range [0, 3) does not fit dtype bool')
    assert.has_error(function() lumen.randint(0, 2.5, { 2 }) end, 'lumen.randint: hi must be an integer, got 2.5')
    assert.has_error(function() lumen.randperm(-1) end, 'lumen.randperm: n must be >= 0, got -1')
    assert.has_error(function() lumen.randperm(300, 'u8') end, 'lumen.randperm: n=300 does not fit dtype u8')
    assert.has_error(function() lumen.randperm(3, 'bool') end,
      'lumen.randperm: dtype bool is not supported (expected a numeric dtype)')
    assert.has_error(function() lumen.manual_seed(1.5) end, 'lumen.manual_seed: seed must be an integer, got 1.5')
    assert.has_error(function() lumen.set_rng_state({ seed = 1 }) end,
      'lumen.set_rng_state: expected a table {seed = ..., offset = ...} from get_rng_state')
    assert.has_error(function() lumen.zeros(3, 1):expand(3, 4):normal_() end,
      'lumen.normal_: the destination of shape 3x4 is an expanded view (stride 0 in dimension 1), expected memory of its own (clone it first)')
    assert.has_error(function() lumen.uniform_(42) end, 'lumen.uniform_: tensor must be a tensor, got number')
    -- a failed draw leaves the state alone
    lumen.manual_seed(1)
    pcall(function() lumen.zeros(3):uniform_(2, 1) end)
    pcall(function() lumen.bernoulli(lumen.tensor({ 2 })) end)
    assert.are.same({ seed = 1, offset = 0 }, lumen.get_rng_state())
  end)
end)
