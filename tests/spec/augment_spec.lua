-- Augmentation: the C loops against scipy.ndimage and torch, the spatial
-- transforms against closed forms (linear interpolation reproduces a
-- linear ramp exactly), the intensity transforms against numpy formulas.
local lumen = require 'lumen'
local augment = require 'lumen.augment'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'

local PRELUDE = [[
import numpy as np
import scipy.ndimage as nd
]]
local function py(code)
  local src = (PRELUDE .. code):gsub('\\', '\\\\'):gsub("'", "\\'"):gsub('\n', '\\n')
  return "run('" .. src .. "')"
end

-- output-to-input maps with points inside, on the border and outside
local M3 = { { 0.9, 0.2, -0.1, 1.3 }, { -0.15, 1.05, 0.2, -0.7 }, { 0.1, -0.2, 0.95, 0.4 } }
local M2 = { { 0.8, 0.35, -1.2 }, { -0.3, 1.1, 0.6 } }

local function flat(m)
  local out = {}
  for _, row in ipairs(m) do for _, v in ipairs(row) do out[#out + 1] = v end end
  return out
end

describe('augment loops', function()
  local x3 = lumen.randn(2, 7, 9, 11)
  local x2 = lumen.randn(3, 12, 10):to('f64')
  local disp3 = (lumen.randn(3, 6, 8, 10) * 0.7):to('f32')
  local lab3 = lumen.randint(0, 5, { 1, 7, 9, 11 }):to('i32')
  local cases, results = {}, nil
  local function add(c) cases[#cases + 1] = c return #cases end
  local G3 = add({ py([[result = np.stack([nd.gaussian_filter(x.numpy().astype(np.float64)[c], (1.3, 0, 0.6)) for c in range(2)])]]), x = x3 })
  local G2 = add({ py([[result = np.stack([nd.gaussian_filter(x.numpy()[c], 2.5) for c in range(3)])]]), x = x2 })
  -- warp: input voxel = M (p + d(p)); taps outside read cval ('grid-constant')
  local W3 = add({ py(string.format([[
M = np.array(%s).reshape(3, 4)
p = np.indices((6, 8, 10)).astype(np.float64) + d.numpy()
q = np.einsum('ab,b...->a...', M[:, :3], p) + M[:, 3].reshape(3, 1, 1, 1)
result = np.stack([nd.map_coordinates(x.numpy().astype(np.float64)[c], q, order=1, mode='grid-constant', cval=-2.0) for c in range(2)])
]], '[' .. table.concat(flat(M3), ',') .. ']')), x = x3, d = disp3 })
  local W2 = add({ py(string.format([[
M = np.array(%s).reshape(2, 3)
p = np.indices((9, 13)).astype(np.float64)
q = np.einsum('ab,b...->a...', M[:, :2], p) + M[:, 2].reshape(2, 1, 1)
result = np.stack([nd.map_coordinates(x.numpy()[c], q, order=1, mode='grid-constant', cval=0.0) for c in range(3)])
]], '[' .. table.concat(flat(M2), ',') .. ']')), x = x2 })
  local N3 = add({ py(string.format([[
M = np.array(%s).reshape(3, 4)
p = np.indices((6, 8, 10)).astype(np.float64) + d.numpy()
q = np.einsum('ab,b...->a...', M[:, :3], p) + M[:, 3].reshape(3, 1, 1, 1)
result = nd.map_coordinates(x.numpy()[0], q, order=0, mode='grid-constant', cval=7).astype(np.int32)[None]
]], '[' .. table.concat(flat(M3), ',') .. ']')), x = lab3, d = disp3 })

  setup(function() results = oracle.run(cases) end)

  it('gaussian_filter matches scipy.ndimage.gaussian_filter', function()
    check.close(augment.gaussian_filter(x3, { 1.3, 0, 0.6 }), results[G3][1]:to('f32'), { rtol = 1e-5, atol = 1e-6 })
    check.close(augment.gaussian_filter(x2, { 2.5, 2.5 }), results[G2][1], { rtol = 1e-12, atol = 1e-12 })
    -- a number means every spatial dim of a plain volume
    check.close(augment.gaussian_filter(x2:select(0, 1), 2.5), results[G2][1]:select(0, 1), { rtol = 1e-12, atol = 1e-12 })
  end)

  it('warp samples linearly like map_coordinates in grid-constant mode', function()
    local w = augment.warp(x3, { size = { 6, 8, 10 }, matrix = M3, displacement = disp3, cval = -2 })
    check.close(w, results[W3][1]:to('f32'), { rtol = 1e-5, atol = 1e-5 })
    check.close(augment.warp(x2, { size = { 9, 13 }, matrix = M2 }), results[W2][1], { rtol = 1e-12, atol = 1e-12 })
  end)

  it('warp with order 0 keeps label values and dtype', function()
    local w = augment.warp(lab3, { size = { 6, 8, 10 }, matrix = M3, displacement = disp3, order = 0, cval = 7 })
    assert.equal('i32', w:dtype())
    -- rounding ties could differ; random coordinates have none
    check.close(w, results[N3][1], { atol = 0 })
  end)

  it('bspline_upsample reproduces constant and linear control values exactly', function()
    local g = lumen.full({ 2, 5, 6, 7 }, 3.25):to('f64')
    check.close(augment.bspline_upsample(g, { 20, 11, 9 }), lumen.full({ 2, 20, 11, 9 }, 3.25):to('f64'), { atol = 1e-12 })
    -- control point j of an axis with g points sits at (j - 1) * (n - 1) / (g - 3)
    local gs, n = { 6, 5 }, { 17, 9 }
    local grid = lumen.zeros(1, gs[1], gs[2]):to('f64')
    local want = lumen.zeros(1, n[1], n[2]):to('f64')
    local h1, h2 = (n[1] - 1) / (gs[1] - 3), (n[2] - 1) / (gs[2] - 3)
    for i = 0, gs[1] - 1 do
      for j = 0, gs[2] - 1 do grid[{ 0, i, j }] = 0.5 * (i - 1) * h1 - 2 * (j - 1) * h2 + 1 end
    end
    for i = 0, n[1] - 1 do
      for j = 0, n[2] - 1 do want[{ 0, i, j }] = 0.5 * i - 2 * j + 1 end
    end
    check.close(augment.bspline_upsample(grid, n), want, { atol = 1e-10 })
  end)

  it('class_locations returns voxels of each class, at most limit, spread out', function()
    local lab = lumen.randint(0, 3, { 20, 30 }):to('u8')
    local flat_lab = lab:reshape(-1):totable()
    local all = augment.class_locations(lab, 1e9, 0)
    local few = augment.class_locations(lab, 25, 4)
    assert.equal(3, #all)
    for c = 1, 3 do
      local count = 0
      for _, v in ipairs(flat_lab) do if v == c - 1 then count = count + 1 end end
      assert.equal(count, all[c]:size(0))
      local picked = few[c]:totable()
      assert.is_true(#picked <= 25 and #picked >= math.floor(count / math.ceil(count / 25)))
      for k, i in ipairs(picked) do
        assert.equal(c - 1, flat_lab[i + 1])
        if k > 1 then assert.is_true(i > picked[k - 1]) end
      end
      -- spread: the picks reach both halves of the class's voxels
      assert.is_true(picked[1] < 300 and picked[#picked] >= 300)
    end
  end)

  it('refuses bad input with clear errors', function()
    assert.has_error(function() augment.warp(x3, { size = { 6, 8 }, matrix = M2, order = 1 }) end)
    local ok, e = pcall(augment.warp, lab3, { size = { 6, 8, 10 }, matrix = M3, order = 1 })
    assert.is_false(ok)
    assert.matches('warp: input is i32, expected f32 or f64', e)
    ok, e = pcall(augment.warp, x3, { size = { 6, 8, 10 }, matrix = M3, displacement = lumen.zeros(3, 6, 8, 9) })
    assert.matches('warp: displacement is f32 3x6x8x9', e)
    ok, e = pcall(augment.warp, x3, { size = { 6, 8, 10 }, matrix = M3, order = 2 })
    assert.matches('order 2, expected 0', e)
    ok, e = pcall(augment.gaussian_filter, x3, { -1, 1, 1 })
    assert.matches('sigma %-1 along spatial axis 0', e)
    ok, e = pcall(augment.bspline_upsample, lumen.zeros(1, 3, 5), { 10, 10 })
    assert.matches('3 control points along spatial axis 0, expected at least 4', e)
    ok, e = pcall(augment.class_locations, lumen.zeros(4, 4), 10)
    assert.matches('label is f32, expected an integer type', e)
    ok, e = pcall(augment.class_locations, lumen.full({ 2, 2 }, 70000):to('i32'), 10)
    assert.matches('label value 70000', e)
  end)
end)

-- A linear ramp f(v) = g . v (v in voxel indices): linear interpolation
-- reproduces it exactly, so a patch sampled at centre + A (p - cp) is the
-- ramp of A^T g in p, and A can be read back from three ramps.
local function ramp(shape, g)
  local n = #shape
  local t = lumen.zeros(shape):to('f64')
  for a = 1, n do
    local r = lumen.arange(shape[a]):to('f64') * g[a]
    local view = {}
    for b = 1, n do view[b] = a == b and shape[a] or 1 end
    t = t + r:reshape(view)
  end
  return t
end

-- the gradient of a (locally linear) patch at its centre, per axis
local function centre_gradient(p)
  local n, g = p:dim(), {}
  for a = 0, n - 1 do
    local c, lo, hi = {}, {}, {}
    for b = 0, n - 1 do c[b + 1] = math.floor(p:size(b) / 2) end
    for b = 1, n do lo[b], hi[b] = c[b], c[b] end
    lo[a + 1], hi[a + 1] = c[a + 1] - 1, c[a + 1] + 1
    g[a + 1] = (p[hi] - p[lo]) / 2
  end
  return g
end

-- the linear map A (rows) of one augment.apply, read from unit ramps
local function read_map(transforms, shape, seed, spacing)
  local n = #shape
  local A = {}
  for a = 1, n do A[a] = {} end
  for b = 1, n do
    local g = {}
    for a = 1, n do g[a] = a == b and 1 or 0 end
    local out = augment.apply(transforms, ramp(shape, g), nil, { seed = seed, spacing = spacing })
    local grad = centre_gradient(out)
    for a = 1, n do A[b][a] = grad[a] end -- d out / d p_a = A[b][a]
  end
  return A
end

local function det3(A)
  return A[1][1] * (A[2][2] * A[3][3] - A[2][3] * A[3][2]) - A[1][2] * (A[2][1] * A[3][3] - A[2][3] * A[3][1])
      + A[1][3] * (A[2][1] * A[3][2] - A[2][2] * A[3][1])
end

describe('augment spatial transforms', function()
  local shape = { 21, 21, 21 }

  it('flip mirrors exactly', function()
    local x = lumen.randn(2, 6, 7, 8)
    local lab = lumen.randint(0, 4, { 6, 7, 8 })
    local y, l = augment.apply({ augment.flip{ axes = { 1 }, p = 1 } }, x, lab, { seed = 3 })
    check.close(y, x:flip(2), { atol = 0 })
    check.close(l, lab:flip(1), { atol = 0 })
  end)

  it('rot90 rotates by a multiple of 90 degrees in its plane, exactly', function()
    local x = lumen.randn(1, 9, 9, 4)
    local seen = {}
    for seed = 1, 12 do
      local y = augment.apply({ augment.rot90{ planes = { { 0, 1 } }, p = 1 } }, x, nil, { seed = seed })
      local k
      for q = 1, 3 do
        local r = x
        for _ = 1, q do r = r:transpose(1, 2):flip(1) end
        if (r - y):abs():max():item() == 0 then k = q end
      end
      assert.is_not_nil(k, 'not a 90-degree rotation (seed ' .. seed .. ')')
      seen[k] = true
    end
    assert.is_true(seen[1] and seen[2] and seen[3])
  end)

  it('affine rotations are rotations within the limit, scaling within its range', function()
    for seed = 1, 4 do
      local A = read_map({ augment.affine{ rotate = 20, p = 1 } }, shape, seed)
      -- orthonormal rows, determinant 1; three rotations of at most 20
      -- degrees compose to one of at most 60
      for i = 1, 3 do
        for j = 1, 3 do
          local dot = A[i][1] * A[j][1] + A[i][2] * A[j][2] + A[i][3] * A[j][3]
          assert.is_true(math.abs(dot - (i == j and 1 or 0)) < 2e-5)
        end
      end
      assert.is_true(math.abs(det3(A) - 1) < 2e-5)
      local trace = A[1][1] + A[2][2] + A[3][3]
      assert.is_true(trace > 1 + 2 * math.cos(math.rad(60)) - 2e-5)
      assert.is_true(trace < 3 - 1e-6) -- it did rotate
      local S = read_map({ augment.affine{ scale = { 1.5, 2 }, p = 1 } }, shape, seed)
      -- content zoom s: input step 1/s per output voxel
      local s = 1 / S[1][1]
      assert.is_true(s >= 1.5 and s <= 2 and math.abs(S[2][2] - S[1][1]) < 2e-5 and math.abs(S[1][2]) < 2e-5)
    end
  end)

  it('rotates 2-D patches within the limit', function()
    for seed = 1, 4 do
      local A = read_map({ augment.affine{ rotate = 25, p = 1 }, augment.flip{ axes = { 0 }, p = 1 } }, { 15, 17 }, seed)
      -- a flipped rotation: orthonormal, determinant -1, angle <= 25 degrees
      assert.is_true(math.abs(A[1][1] ^ 2 + A[1][2] ^ 2 - 1) < 2e-5 and math.abs(A[1][1] * A[2][1] + A[1][2] * A[2][2]) < 2e-5)
      assert.is_true(math.abs(A[1][1] * A[2][2] - A[1][2] * A[2][1] + 1) < 2e-5)
      assert.is_true(math.abs(A[2][2]) >= math.cos(math.rad(25)) - 2e-5)
    end
  end)

  it('rotates in millimetres when voxels are anisotropic', function()
    local spacing = { 1, 1, 3 }
    -- a ramp of physical slope 1 mm^-1 along each axis in turn keeps its
    -- physical gradient length 1 under any rotation
    for seed = 1, 3 do
      for b = 1, 3 do
        local g = { 0, 0, 0 }
        g[b] = spacing[b]
        local out = augment.apply({ augment.affine{ rotate = 30, p = 1 } }, ramp(shape, g), nil, { seed = seed, spacing = spacing })
        local grad, len = centre_gradient(out), 0
        for a = 1, 3 do len = len + (grad[a] / spacing[a]) ^ 2 end
        assert.is_true(math.abs(math.sqrt(len) - 1) < 2e-5, 'gradient length ' .. math.sqrt(len))
      end
    end
  end)

  it('elastic keeps label values, moves voxels smoothly, and magnitude 0 is the identity', function()
    local x = lumen.randn(1, 16, 16, 16)
    local lab = lumen.randint(0, 3, { 16, 16, 16 }):to('u8')
    local y0 = augment.apply({ augment.elastic{ magnitude = 0, p = 1 } }, x, nil, { seed = 1 })
    check.close(y0, x, { atol = 0 })
    local y, l = augment.apply({ augment.elastic{ magnitude = 2, spacing = 6, p = 1 } }, x, lab, { seed = 1 })
    assert.is_true((y - x):abs():max():item() > 0.1)
    for _, v in ipairs(l:reshape(-1):totable()) do assert.is_true(v == 0 or v == 1 or v == 2) end
    -- on a ramp along axis 0 the output minus the identity is the field's
    -- first component: smooth (small second differences) and of the
    -- expected size
    local r = ramp({ 24, 24, 24 }, { 1, 0, 0 })
    local d = augment.apply({ augment.elastic{ magnitude = 2, spacing = 8, p = 1 } }, r, nil, { seed = 2 }) - r
    local inner = d:narrow(0, 4, 16):narrow(1, 4, 16):narrow(2, 4, 16)
    local std = inner:std():item()
    assert.is_true(std > 0.2 and std < 3, 'displacement std ' .. std)
    local second = (inner:narrow(2, 2, 14) - inner:narrow(2, 1, 14) * 2 + inner:narrow(2, 0, 14)):abs():max():item()
    assert.is_true(second < 0.25 * std, 'second difference ' .. second)
  end)

  it('is deterministic per seed and leaves lumen\'s random state alone', function()
    local x = lumen.randn(1, 12, 12, 12)
    local t = { augment.affine{ rotate = 15, p = 1 }, augment.elastic{ p = 1 }, augment.noise{ p = 1 } }
    lumen.manual_seed(9)
    local before = lumen.rand(3)
    lumen.manual_seed(9)
    local a = augment.apply(t, x, nil, { seed = 5 })
    local after = lumen.rand(3)
    check.close(after, before, { atol = 0 })
    check.close(augment.apply(t, x, nil, { seed = 5 }), a, { atol = 0 })
    assert.is_true((augment.apply(t, x, nil, { seed = 6 }) - a):abs():max():item() > 0)
  end)
end)

describe('augment intensity transforms', function()
  local x = lumen.randn(2, 10, 11, 12):to('f32')
  local cases, results = {}, nil
  local function add(c) cases[#cases + 1] = c return #cases end
  local GAMMA = add({ py([[
x = x.numpy().astype(np.float64)
out = []
for c in x:
    lo, hi = c.min(), c.max()
    out.append(((c - lo) / (hi - lo)) ** 2 * (hi - lo) + lo)
result = np.stack(out)
]]), x = x })
  local CONTRAST = add({ py([[
x = x.numpy().astype(np.float64)
result = np.stack([np.clip((c - c.mean()) * 0.5 + c.mean(), c.min(), c.max()) for c in x])
]]), x = x })
  local BLUR = add({ py([[result = np.stack([nd.gaussian_filter(c, 1.0) for c in x.numpy().astype(np.float64)])]]), x = x })
  local LOWRES = add({ "F.interpolate(F.interpolate(x[None], size=(5, 6, 6), mode='nearest'), size=(10, 11, 12), mode='trilinear', align_corners=False)[0]", x = x })
  setup(function() results = oracle.run(cases) end)

  local function one(t) return augment.apply({ t }, x, nil, { seed = 2 }) end

  it('gamma, contrast, brightness, blur and low resolution match their formulas', function()
    check.close(one(augment.gamma{ range = { 2, 2 }, p = 1 }), results[GAMMA][1]:to('f32'), { rtol = 1e-5, atol = 1e-5 })
    check.close(one(augment.contrast{ range = { 0.5, 0.5 }, p = 1 }), results[CONTRAST][1]:to('f32'), { rtol = 1e-5, atol = 1e-5 })
    check.close(one(augment.brightness{ range = { 1.5, 1.5 }, p = 1 }), x * 1.5, { rtol = 1e-6, atol = 0 })
    check.close(one(augment.blur{ sigma = { 1, 1 }, p = 1 }), results[BLUR][1]:to('f32'), { rtol = 1e-5, atol = 1e-6 })
    check.close(one(augment.lowres{ zoom = { 0.5, 0.5 }, p = 1 }), results[LOWRES][1], { rtol = 1e-5, atol = 1e-6 })
  end)

  it('noise adds zero-mean noise of the drawn standard deviation', function()
    local big = lumen.zeros(1, 64, 64, 64)
    local y = augment.apply({ augment.noise{ std = { 0.2, 0.2 }, p = 1 } }, big, nil, { seed = 1 })
    assert.is_true(math.abs(y:std():item() - 0.2) < 0.004)
    assert.is_true(math.abs(y:mean():item()) < 0.004)
  end)

  it('p = 0 leaves the image as it is', function()
    local t = { augment.gamma{ p = 0 }, augment.noise{ p = 0 }, augment.affine{ rotate = 30, p = 0 }, augment.flip{ p = 0 } }
    check.close(augment.apply(t, x, nil, { seed = 1 }), x, { atol = 0 })
  end)

  it('refuses unknown options and bad ranges by name', function()
    local ok, e = pcall(augment.gamma, { rnage = { 1, 2 } })
    assert.is_false(ok)
    assert.matches('rnage', e)
    ok, e = pcall(augment.noise, { std = { 0.2, 0.1 } })
    assert.matches('std must be a number or a range', e)
    ok, e = pcall(augment.flip, { p = 2 })
    assert.matches('p must be in %[0, 1%]', e)
    ok, e = pcall(augment.rot90, { planes = { { 0, 0 } } })
    assert.matches('two different axes', e)
    ok, e = pcall(augment.lowres, { zoom = { 0.5, 2 } })
    assert.matches('zoom must lie in', e)
  end)
end)
