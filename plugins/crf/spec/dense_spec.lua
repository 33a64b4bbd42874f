-- The dense CRF of the crf plugin: the permutohedral lattice against
-- brute-force Gaussian sums, mean field against a brute-force mean field
-- (dense N x N kernel matrices made with lumen's own ops), finite
-- differences of the mean-field layer, and bad input.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local crf = require 'lumen.crf'
local gradcheck = require 'helpers.gradcheck'

local function prod(t)
  local n = 1
  for _, v in ipairs(t) do n = n * v end
  return n
end

-- Positions (mm) of the voxels of a grid, N x ndim f64, C order.
local function positions(size, spacing)
  local n, nd, flat = prod(size), #size, {}
  for i = 0, n - 1 do
    local r = i
    for a = nd, 1, -1 do
      flat[i * nd + a] = (r % size[a]) * (spacing and spacing[a] or 1)
      r = math.floor(r / size[a])
    end
  end
  return lumen.tensor(flat, 'f64'):reshape(n, nd)
end

-- exp(-|fi - fj|^2 / 2) for the rows of F (N x d)
local function gauss_matrix(F)
  local n2 = (F * F):sum(1, true)
  local d2 = lumen.clamp(n2 + n2:t() - lumen.matmul(F, F:t()) * 2, 0, math.huge)
  return (d2 * -0.5):exp()
end

local function median(list)
  table.sort(list)
  return list[math.floor(#list / 2) + 1]
end

-- median over points and values of |lattice - exact| / |exact|
local function lattice_error(F, V)
  local got = crf.lattice_filter(F, V)
  local want = lumen.matmul(gauss_matrix(F), V)
  local rel = ((got - want):abs() / want:abs()):reshape(-1):totable()
  return median(rel), got, want
end

-- A smooth image with edges plus noise: what the bilateral kernel is for.
local function test_image(size, seed)
  lumen.manual_seed(seed)
  local P = positions(size)
  local x = P:select(1, 0)
  local y = P:select(1, #size - 1)
  local img = ((x * 0.35):sin() + (y * 0.21 + 1):cos() * 0.7)
  img = img + lumen.where((x + y * 0.5):gt(size[1] * 0.6), 1.5, 0.0)
  return (img + lumen.randn(prod(size), 'f64') * 0.05):reshape(size)
end

-- The brute-force mean field: logits A (K x N), kernels as dense matrices.
local function brute_meanfield(A, kernels, mu, T, normalize)
  local AT = A:t()
  local Z = AT
  for _ = 1, T do
    local Q = nn.F.softmax(Z, 1)
    local M = lumen.zeros(AT:size(), 'f64')
    for _, k in ipairs(kernels) do
      local F = lumen.matmul(k.matrix, Q)
      if normalize then F = F / k.matrix:sum(1, true) else F = F - Q end
      M = M + F * k.weight
    end
    Z = AT - lumen.matmul(M, mu:t())
  end
  return nn.F.softmax(Z, 1):t()
end

describe('crf lattice filter', function()
  it('matches brute-force Gaussian sums on a random 32x32 image', function()
    lumen.manual_seed(11)
    local size = { 32, 32 }
    local img = lumen.rand(32 * 32, 1, 'f64')
    local F = lumen.cat({ positions(size) / 3, img / 0.2 }, 1)
    local V = lumen.rand(32 * 32, 2, 'f64')
    local err = lattice_error(F, V)
    assert.is_true(err <= 0.05, 'median relative error ' .. err)
  end)

  it('matches brute-force Gaussian sums on a random 12x12x12 volume with two channels', function()
    lumen.manual_seed(12)
    local size = { 12, 12, 12 }
    local img = lumen.rand(12 ^ 3, 2, 'f64')
    local F = lumen.cat({ positions(size) / 3, img / 0.3 }, 1)
    local V = lumen.rand(12 ^ 3, 1, 'f64')
    local err = lattice_error(F, V)
    assert.is_true(err <= 0.05, 'median relative error ' .. err)
  end)

  it('matches on a smooth image (points near a surface of feature space)', function()
    local size = { 32, 32 }
    local img = test_image(size, 13):reshape(-1, 1)
    local F = lumen.cat({ positions(size) / 2.5, img / 0.25 }, 1)
    local err = lattice_error(F, lumen.rand(32 * 32, 1, 'f64'))
    assert.is_true(err <= 0.05, 'median relative error ' .. err)
  end)

  it('matches on scattered points in 3-D feature space', function()
    lumen.manual_seed(14)
    local F = lumen.rand(600, 3, 'f64') * 4
    local err = lattice_error(F, lumen.rand(600, 1, 'f64') + 0.5)
    assert.is_true(err <= 0.05, 'median relative error ' .. err)
  end)

  it('is linear, and its gradient is its transpose', function()
    lumen.manual_seed(15)
    local F = lumen.rand(40, 3, 'f64') * 3
    local a, b = lumen.randn(40, 2, 'f64'), lumen.randn(40, 2, 'f64')
    local la, lb, lab = crf.lattice_filter(F, a), crf.lattice_filter(F, b), crf.lattice_filter(F, a * 2 + b)
    assert.is_true(((la * 2 + lb) - lab):abs():max():item() < 1e-12)
    assert(gradcheck(function(v) return crf.lattice_filter(F, v) end, { lumen.randn(40, 2, 'f64') }))
    -- f32 gives f32
    assert.are.equal('f32', crf.lattice_filter(F:to('f32'), a:to('f32')):dtype())
  end)
end)

describe('crf.dense and crf.meanfield', function()
  it('equals a brute-force mean field with the exact spatial kernel (anisotropic spacing)', function()
    lumen.manual_seed(21)
    local size, spacing = { 9, 7, 6 }, { 1.0, 1.5, 2.5 }
    local n, K = prod(size), 3
    local A = lumen.randn(K, n, 'f64') * 2
    local mu = lumen.tensor({ { 0, 1, 2 }, { 1, 0, 1.5 }, { 2, 1.5, 0 } }, 'f64')
    local Ks = gauss_matrix(positions(size, spacing) / 2.0)
    for _, normalize in ipairs { true, false } do
      local w = normalize and 2.5 or 0.4
      local want = brute_meanfield(A, { { matrix = Ks, weight = w } }, mu, 4, normalize)
      local Z = crf.meanfield(A:reshape(1, K, unpack(size)), nil, {
        spacing = spacing, smooth = { sigma_mm = 2.0, weight = w }, iterations = 4, compat = mu, normalize = normalize })
      local got = nn.F.softmax(Z, 1):reshape(K, n)
      local diff = (got - want):abs():max():item()
      assert.is_true(diff < 1e-6, string.format('normalize=%s: max difference %g', tostring(normalize), diff))
    end
  end)

  local function bilateral_case(size, K, seed, normalize, w_sums)
    lumen.manual_seed(seed)
    local n = prod(size)
    local img = test_image(size, seed + 1)
    local A = lumen.randn(K, n, 'f64') * 1.5
    local sb, si, ss = 3.0, 0.4, 1.0
    local Kb = gauss_matrix(lumen.cat({ positions(size) / sb, img:reshape(n, 1) / si }, 1))
    local Ks = gauss_matrix(positions(size) / ss)
    -- moderate weights: the lattice's sums are within a few percent, so
    -- with a weight of 3 logits the probabilities differ by up to 0.06.
    -- Unnormalised messages are sums over the kernel (tens in 2-D,
    -- hundreds in 3-D here), so their weights are smaller still.
    local ws, wb = normalize and 0.5 or w_sums, normalize and 1.0 or w_sums
    local mu = crf.potts(K):to('f64')
    local want = brute_meanfield(A, { { matrix = Ks, weight = ws }, { matrix = Kb, weight = wb } }, mu, 5, normalize)
    -- through crf.dense, from probabilities
    local P = nn.F.softmax(A, 0):reshape(K, unpack(size))
    local got = crf.dense{ probs = P, image = img, smooth = { sigma_mm = ss, weight = ws },
      bilateral = { sigma_mm = sb, sigma_int = si, weight = wb }, iterations = 5, normalize = normalize, eps = 1e-12 }
    -- the CRF must change the labels noticeably, or the test would not say much
    local moved = (want - nn.F.softmax(A, 0)):abs():max():item()
    assert.is_true(moved > 0.05, 'the pairwise terms barely matter: ' .. moved)
    return (got:reshape(K, n) - want):abs():max():item()
  end

  it('matches a brute-force mean field to 1e-2 on a 32x32 image', function()
    for _, normalize in ipairs { true, false } do
      local d = bilateral_case({ 32, 32 }, 3, 31, normalize, 0.05)
      assert.is_true(d < 1e-2, string.format('normalize=%s: max difference %g', tostring(normalize), d))
    end
  end)

  -- (Unnormalised sums run to hundreds in 3-D, where the lattice's few
  -- percent are too many logits for 1e-2: the exact-kernel case above
  -- checks that mode's bookkeeping in 3-D.)
  it('matches a brute-force mean field to 1e-2 on a 12x12x12 volume', function()
    local d = bilateral_case({ 12, 12, 12 }, 2, 41, true)
    assert.is_true(d < 1e-2, string.format('max difference %g', d))
  end)

  it('gives probabilities; zero iterations give the input back', function()
    lumen.manual_seed(51)
    local P = nn.F.softmax(lumen.randn(2, 10, 10), 0)
    local img = lumen.rand(10, 10)
    local R = crf.dense{ probs = P, image = img }
    assert.are.equal('f32', R:dtype())
    assert.are.same(P:size(), R:size())
    assert.is_true((R:sum(0) - 1):abs():max():item() < 1e-5)
    local R0 = crf.dense{ probs = P, image = img, iterations = 0 }
    assert.is_true((R0 - P):abs():max():item() < 1e-5)
    -- several channels, as a list or as lumen.image objects
    local image = require 'lumen.image'
    local R2 = crf.dense{ probs = P, image = { img, img * 2 }, bilateral = { sigma_mm = 3, sigma_int = { 0.5, 1.0 }, weight = 2 } }
    local R1 = crf.dense{ probs = P, image = img, bilateral = { sigma_mm = 3, sigma_int = 0.5 / math.sqrt(2), weight = 2 } }
    -- the same kernel written two ways (on lattices of 4 and 3 dims)
    assert.is_true((R2 - R1):abs():max():item() < 0.02, (R2 - R1):abs():max():item())
    local Rx = crf.dense{ probs = P, image = { img, img * 2 }, bilateral = { sigma_mm = 3, sigma_int = { 1.0, 0.5 }, weight = 2 } }
    assert.is_true((Rx - R1):abs():max():item() > 2 * (R2 - R1):abs():max():item()) -- the sigmas are not swapped
    local R3 = crf.dense{ probs = P, image = image.new(img, { affine = { { 2, 0, 0, 0 }, { 0, 2, 0, 0 }, { 0, 0, 2, 0 }, { 0, 0, 0, 1 } } }) }
    local R4 = crf.dense{ probs = P, image = img, spacing = { 2, 2 } }
    assert.is_true((R3 - R4):abs():max():item() < 1e-6)
  end)

  it('gives the same bits on one thread as on two', function()
    lumen.manual_seed(53)
    local P = nn.F.softmax(lumen.randn(3, 40, 50, 60), 0) -- big enough to be split
    local img = lumen.rand(40, 50, 60)
    local threads = lumen.get_num_threads()
    lumen.set_num_threads(1)
    local one = crf.dense{ probs = P, image = img }
    lumen.set_num_threads(2)
    local two = crf.dense{ probs = P, image = img }
    lumen.set_num_threads(threads)
    assert.are.equal(0, (one - two):abs():max():item())
  end)

  it('batches the layer: each volume with its own image', function()
    lumen.manual_seed(52)
    local A = lumen.randn(2, 3, 8, 9, 'f64')
    local I = lumen.rand(2, 1, 8, 9, 'f64')
    local opts = { bilateral = { sigma_mm = 3, sigma_int = 0.3, weight = 2 } }
    local Z = crf.meanfield(A, I, opts)
    for b = 0, 1 do
      local Zb = crf.meanfield(A:narrow(0, b, 1), I:narrow(0, b, 1), opts)
      assert.is_true((Z:narrow(0, b, 1) - Zb):abs():max():item() < 1e-12)
    end
  end)
end)

describe('crf.MeanField gradients', function()
  local function mf(normalize, size, T)
    return function(A, mu, w, img)
      return crf.meanfield(A, img, { smooth = { sigma_mm = 1.2 }, bilateral = { sigma_mm = 2, sigma_int = 0.5 },
        iterations = T, compat = mu, weights = w, normalize = normalize, spacing = size == 3 and { 1, 1.5, 1 } or nil })
    end
  end

  for _, normalize in ipairs { true, false } do
    it('pass finite differences in 2-D (normalize=' .. tostring(normalize) .. ')', function()
      lumen.manual_seed(61)
      local A = lumen.randn(2, 3, 5, 4, 'f64')
      local mu = crf.potts(3):to('f64') + lumen.rand(3, 3, 'f64') * 0.3
      local w = lumen.tensor({ 0.7, 1.3 }, 'f64')
      local img = lumen.rand(2, 1, 5, 4, 'f64')
      assert(gradcheck(mf(normalize, 2, 3), { A, mu, w, img }, { only = { 1, 2, 3 } }))
    end)
  end

  it('pass finite differences in 3-D', function()
    lumen.manual_seed(62)
    local A = lumen.randn(1, 2, 4, 3, 3, 'f64')
    local mu = crf.potts(2):to('f64')
    local w = lumen.tensor({ 1.1, 0.6 }, 'f64')
    local img = lumen.rand(1, 2, 4, 3, 3, 'f64')
    local f = function(a, m, ww, i)
      return crf.meanfield(a, i, { smooth = { sigma_mm = 1 }, bilateral = { sigma_mm = 2, sigma_int = { 0.5, 0.7 } },
        iterations = 2, compat = m, weights = ww, spacing = { 1, 1.5, 1 } })
    end
    assert(gradcheck(f, { A, mu, w, img }, { only = { 1, 2, 3 } }))
  end)

  it('pass finite differences from probabilities to probabilities (the op as crf.dense calls it)', function()
    lumen.manual_seed(64)
    local p = lumen.load_plugin('crf')
    local P = nn.F.softmax(lumen.randn(1, 3, 4, 5, 'f64'), 1)
    local img = lumen.rand(1, 1, 4, 5, 'f64')
    -- ndim, iterations, spatial, bilateral, normalize, probs_eps, out_probs,
    -- sigma_spatial, sigma_bilateral, spacing x2, sigma_int
    local f = function(probs, mu, w)
      return p.crf_meanfield(probs, img, mu, w, 2, 3, 1, 1, 1, 1e-9, 1, 1.2, 2, 1, 1, 0.5)
    end
    assert(gradcheck(f, { P, crf.potts(3):to('f64'), lumen.tensor({ 0.8, 1.5 }, 'f64') }))
  end)

  it('learns: the module trains its compat and weights through loss:backward()', function()
    lumen.manual_seed(63)
    local m = crf.MeanField{ labels = 2, ndim = 2, bilateral = { sigma_mm = 2, sigma_int = 0.3, weight = 1 }, iterations = 3 }
    assert.are.equal(2, #m:parameters())
    local x = lumen.randn(1, 2, 8, 8)
    local img = lumen.rand(1, 1, 8, 8)
    local target = lumen.randint(0, 2, { 1, 8, 8 }):to('i64')
    local loss = nn.F.cross_entropy(m(x, img), target)
    loss:backward()
    assert.is_truthy(m.compat.grad)
    assert.is_truthy(m.weights.grad)
    assert.is_true(m.weights.grad:abs():sum():item() > 0)
    local frozen = crf.MeanField{ labels = 2, ndim = 2, learn_compat = false, learn_weights = false }
    assert.are.equal(0, #frozen:parameters())
  end)
end)

describe('crf bad input', function()
  local P = nn.F.softmax(lumen.randn(2, 6, 6), 0)
  local img = lumen.rand(6, 6)
  local function err_of(fn, ...)
    local ok, e = pcall(fn, ...)
    assert.is_false(ok)
    return tostring(e)
  end
  local cases = {
    { 'not probabilities', { probs = lumen.randn(2, 6, 6) }, 'lumen.crf.dense: probs are not probabilities: ' },
    { 'sums', { probs = P * 0.5 }, 'lumen.crf.dense: probs are not probabilities: they sum to 0.5 over the 2 labels at voxel 0' },
    { 'NaN', { probs = P / 0 * 0 }, 'lumen.crf.dense: probs are not probabilities: NaN at flat index 0' },
    { 'one label', { probs = lumen.ones(1, 6, 6) }, 'lumen.crf.dense: probs have 1 label(s)' },
    { 'ints', { probs = lumen.ones(2, 6, 6):to('i32') }, 'lumen.crf.dense: probs must be f32 or f64, got i32' },
    { 'image shape', { probs = P, image = lumen.rand(6, 5) }, 'lumen.crf.dense: image channel 1 is 6x5, expected 6x6' },
    { 'spacing length', { probs = P, spacing = { 1, 1, 1 } }, 'lumen.crf.dense: spacing has 3 values but the volume has 2 spatial dims' },
    { 'spacing zero', { probs = P, spacing = { 1, 0 } }, 'lumen.crf.dense: spacing[2] is 0, expected a positive number' },
    { 'smooth sigma zero', { probs = P, smooth = { sigma_mm = 0 } }, 'lumen.crf.dense: smooth.sigma_mm is 0, expected a positive number' },
    { 'bilateral sigma zero', { probs = P, image = img, bilateral = { sigma_mm = 0 } }, 'lumen.crf.dense: bilateral.sigma_mm is 0' },
    { 'intensity sigma zero', { probs = P, image = img, bilateral = { sigma_int = 0 } }, 'lumen.crf.dense: bilateral.sigma_int is 0' },
    { 'sigma_int count', { probs = P, image = { img, img }, bilateral = { sigma_int = { 1, 2, 3 } } },
      'lumen.crf.dense: bilateral.sigma_int must be a number or a list of 2' },
    { 'bilateral without image', { probs = P, bilateral = { sigma_mm = 3 } }, 'lumen.crf.dense: the bilateral kernel needs an image' },
    { 'compat shape', { probs = P, compat = lumen.ones(3, 3) }, 'lumen.crf.dense: compat is 3x3, expected 2x2' },
    { 'unknown option', { probs = P, sigma = 3 }, "lumen.crf.dense: unknown option 'sigma'" },
    { 'iterations', { probs = P, iterations = -1 }, 'lumen.crf.dense: iterations must be an integer from 0 to 1000' },
    { 'no probs', { image = img }, 'lumen.crf.dense: probs is required' },
  }
  for _, c in ipairs(cases) do
    it('crf.dense: ' .. c[1], function()
      local e = err_of(crf.dense, c[2])
      assert.is_truthy(e:find(c[3], 1, true), e)
    end)
  end

  it('crf.meanfield and the plugin op check shapes and params in C too', function()
    local p = lumen.load_plugin('crf')
    local A = lumen.randn(1, 2, 5, 5)
    local I = lumen.rand(1, 1, 5, 5)
    local e = err_of(crf.meanfield, A, lumen.rand(1, 1, 5, 4))
    assert.is_truthy(e:find('lumen.crf.meanfield: image is 1x1x5x4 but logits are 1x2x5x5', 1, true), e)
    -- params: ndim, iterations, use_spatial, use_bilateral, normalize,
    -- probs_eps, out_probs, sigma_spatial, sigma_bilateral, spacing x2, sigma_int
    e = err_of(p.crf_meanfield, A, I, lumen.ones(2, 2), lumen.ones(2), 2, 5, 1, 1, 1, 0, 0, 0, 3, 1, 1, 0.5)
    assert.is_truthy(e:find("crf_meanfield: the spatial kernel's sigma is 0 mm", 1, true), e)
    e = err_of(p.crf_meanfield, A, I, lumen.ones(3, 3), lumen.ones(2), 2, 5, 1, 1, 1, 0, 0, 1, 3, 1, 1, 0.5)
    assert.is_truthy(e:find('crf_meanfield: compat is 3x3, expected 2x2', 1, true), e)
    e = err_of(p.crf_meanfield, A, I, lumen.ones(2, 2), lumen.ones(2), 2, 5, 1, 1, 1, 0, 0, 1, 3, 1, 1)
    assert.is_truthy(e:find('crf_meanfield: expected 12 params', 1, true), e)
    e = err_of(p.crf_meanfield, A, I, lumen.ones(2, 2), lumen.ones(2), 2, 5, 1, 1, 1, 0, 0, 1, 3, 1, -1, 0.5)
    assert.is_truthy(e:find('crf_meanfield: spacing along dim 1 is -1', 1, true), e)
    e = err_of(p.crf_meanfield, A:to('i64'), I, lumen.ones(2, 2), lumen.ones(2), 2, 5, 1, 1, 1, 0, 0, 1, 3, 1, 1, 0.5)
    assert.is_truthy(e:find('crf_meanfield: logits must be f32 or f64, got i64', 1, true), e)
    e = err_of(p.crf_meanfield, A / 0, I, lumen.ones(2, 2), lumen.ones(2), 2, 5, 1, 1, 1, 0, 0, 1, 3, 1, 1, 0.5)
    assert.is_truthy(e:find('crf_meanfield: logits hold', 1, true), e)
    e = err_of(p.crf_meanfield, A, I, lumen.ones(2, 2), lumen.ones(2), 2, 5, 1, 1, 1, 1.5, 0, 1, 3, 1, 1, 0.5)
    assert.is_truthy(e:find('crf_meanfield: probs_eps is 1.5', 1, true), e)
    e = err_of(p.crf_lattice_filter, lumen.rand(5, 3), lumen.rand(4, 1))
    assert.is_truthy(e:find('crf_lattice_filter: values are 4x1 and features 5x3', 1, true), e)
    e = err_of(crf.lattice_filter, lumen.rand(5, 3) * 1e12, lumen.rand(5, 1))
    assert.is_truthy(e:find('lumen.crf.lattice_filter: feature', 1, true), e)
  end)
end)
