-- Binary morphology: lumen.morph against scipy.ndimage on random blobs
-- (Gaussian-smoothed noise, thresholded) in 1-D, 2-D and 3-D, Otsu against
-- a numpy transcription of skimage's rule, and bad input.
local lumen = require 'lumen'
local morph = require 'lumen.morph'
local augment = require 'lumen.augment'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'

local PRELUDE = [[
import numpy as np
import scipy.ndimage as nd
def ball(nd_, r):
    o = np.indices((2 * r + 1,) * nd_) - r
    return (o ** 2).sum(0) <= r * r
]]
local function py(code)
  local src = (PRELUDE .. code):gsub('\\', '\\\\'):gsub("'", "\\'"):gsub('\n', '\\n')
  return "run('" .. src .. "')"
end

-- smoothed noise above level, as dtype (a blob field of the given shape)
local function blobs(shape, sigma, level, dtype, seed)
  lumen.manual_seed(seed)
  local x = lumen.randn({ 1, unpack(shape) }):to('f64')
  if #shape == 1 then x = x:reshape({ 1, 1, shape[1] }) end
  local s = augment.gaussian_filter(x, sigma)
  return s:reshape(shape):gt(level):to(dtype or 'u8')
end

local function same(a, e, what) check.assert_close(a, e, { atol = 0, rtol = 0, dtype = false }, what) end

describe('morph', function()
  local m3 = blobs({ 18, 21, 16 }, 1.5, 0.05, 'u8', 1)
  local m2 = blobs({ 40, 33 }, 2.0, 0.05, 'i32', 2)
  local m1 = blobs({ 120 }, 1.0, 0.05, 'i64', 3)
  local holes3 = blobs({ 16, 17, 15 }, 1.2, -0.12, 'bool', 4) -- mostly in, with holes
  local holes2 = blobs({ 30, 28 }, 1.5, -0.1, 'u8', 5)
  local sp3, sp2 = { 1.2, 0.7, 2.5 }, { 0.8, 1.9 }
  local img = lumen.randn(30, 40):to('f64') * 2 + lumen.rand(30, 40):gt(0.6):to('f64') * 5
  local roi = blobs({ 30, 40 }, 2, 0, 'u8', 6)

  local cases, R = {}, nil
  local function add(c) cases[#cases + 1] = c return #cases end
  local E3 = add({ py('result = nd.distance_transform_edt(m.numpy(), sampling=(1.2, 0.7, 2.5))'), m = m3 })
  local E2 = add({ py('result = nd.distance_transform_edt(m.numpy(), sampling=(0.8, 1.9))'), m = m2 })
  local E1 = add({ py('result = nd.distance_transform_edt(m.numpy(), sampling=0.5)'), m = m1 })
  local EU = add({ py('result = nd.distance_transform_edt(m.numpy())'), m = m3 })
  local L = {}
  for _, c in ipairs({ { 3, 1, 6 }, { 3, 2, 18 }, { 3, 3, 26 }, { 2, 1, 4 }, { 2, 2, 8 }, { 1, 1, 2 } }) do
    local m = ({ m1, m2, m3 })[c[1]]
    L[c[3]] = add({ py(string.format([[
lab, n = nd.label(m.numpy(), structure=nd.generate_binary_structure(%d, %d))
result = (lab.astype(np.int32), np.bincount(lab.ravel()).astype(np.int64))
]], c[1], c[2])), m = m })
  end
  local B = {}
  for _, c in ipairs({ { 3, 1 }, { 3, 2 }, { 2, 1 }, { 2, 3 }, { 1, 2 } }) do
    local m = ({ m1, m2, m3 })[c[1]]
    B[c[1] * 10 + c[2]] = add({ py(string.format([[
x, s = m.numpy() != 0, ball(%d, %d)
result = [a.astype(np.uint8) for a in (nd.binary_erosion(x, s), nd.binary_dilation(x, s),
          nd.binary_opening(x, s), nd.binary_erosion(nd.binary_dilation(x, s), s, border_value=1))]
]], c[1], c[2])), m = m })
  end
  local F3 = add({ py('result = nd.binary_fill_holes(m.numpy()).astype(np.uint8)'), m = holes3 })
  local F2 = add({ py('result = nd.binary_fill_holes(m.numpy()).astype(np.uint8)'), m = holes2 })
  -- largest component and components of at least 30 voxels (full connectivity)
  local K3 = add({ py([[
lab, n = nd.label(m.numpy(), structure=np.ones((3, 3, 3)))
sizes = np.bincount(lab.ravel())
sizes[0] = 0
result = ((lab == sizes.argmax()).astype(np.uint8), np.isin(lab, np.nonzero(sizes >= 30)[0]).astype(np.uint8),
          np.isin(lab, np.nonzero(sizes * 1.2 * 0.7 * 2.5 >= 30)[0]).astype(np.uint8))
]]), m = m3 })
  -- skimage.filters.threshold_otsu (float images), written out
  local OTSU = [[
def otsu(v, bins):
    hist, edges = np.histogram(v, bins=bins, range=(v.min(), v.max()))
    c = (edges[:-1] + edges[1:]) / 2.0
    w1 = np.cumsum(hist)
    w2 = np.cumsum(hist[::-1])[::-1]
    m1 = np.cumsum(hist * c) / w1
    m2 = (np.cumsum((hist * c)[::-1]) / w2[::-1])[::-1]
    return c[np.argmax(w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2)]
]]
  local O = add({ py(OTSU .. [[
x = x.numpy()
result = [otsu(x.ravel(), 256), otsu(x.ravel(), 16), otsu(x[m.numpy() != 0], 256)]
]]), x = img, m = roi })

  setup(function() R = oracle.run(cases) end)

  it('distance matches scipy distance_transform_edt with anisotropic sampling (1-D to 3-D)', function()
    for _, c in ipairs({ { m3, sp3, E3 }, { m2, sp2, E2 }, { m1, 0.5, E1 }, { m3, nil, EU } }) do
      assert.is_nil(R[c[3]].error)
      local d = morph.distance(c[1], c[2])
      assert.equal('f64', d:dtype())
      check.assert_close(d, R[c[3]][1], { rtol = 1e-12, atol = 1e-12 })
    end
    -- strided views and bool masks give the same
    local t = m3:transpose(0, 2):contiguous():to('bool'):transpose(0, 2)
    check.assert_close(morph.distance(t, sp3), R[E3][1], { rtol = 1e-12, atol = 1e-12 })
    -- nothing outside: infinitely far
    local d = morph.distance(lumen.ones({ 3, 4 }, 'u8'))
    assert.equal(math.huge, d:max():item())
  end)

  it('components match scipy label for every connectivity, numbered in scan order', function()
    for conn, k in pairs(L) do
      local m = conn == 2 and m1 or ((conn == 4 or conn == 8) and m2 or m3)
      local labels, n, sizes = morph.components(m, { connectivity = conn })
      assert.equal('i32', labels:dtype())
      same(labels, R[k][1], 'connectivity ' .. conn)
      local want = check.values(R[k][2])
      assert.equal(#want - 1, n)
      assert.is_true(n > 2, 'the blobs should make several components (connectivity ' .. conn .. ': ' .. n .. ')')
      for j = 1, n do assert.equal(want[j + 1], sizes[j]) end
    end
    -- default: full connectivity
    local _, n26 = morph.components(m3)
    local _, n6 = morph.components(m3, { connectivity = 6 })
    assert.equal(#check.values(R[L[26]][2]) - 1, n26)
    assert.is_true(n6 > n26)
    local _, n0 = morph.components(lumen.zeros({ 4, 4 }, 'u8'))
    assert.equal(0, n0)
  end)

  it('erode, dilate, open and close with a ball match scipy', function()
    for key, k in pairs(B) do
      local nd, r = math.floor(key / 10), key % 10
      local m = ({ m1, m2, m3 })[nd]
      local want = R[k]
      assert.is_nil(want.error)
      same(morph.erode(m, r), want[1], 'erode ' .. key)
      same(morph.dilate(m, r), want[2], 'dilate ' .. key)
      same(morph.open(m, r), want[3], 'open ' .. key)
      same(morph.close(m, r), want[4], 'close ' .. key)
      assert.equal('u8', morph.erode(m, r):dtype())
    end
    -- radius 0 changes nothing; erosion eats a full volume from its border
    same(morph.erode(m3, 0), m3)
    same(morph.dilate(m2, 0), (m2:ne(0)):to('u8'))
    local full = lumen.ones({ 5, 5 }, 'u8')
    same(morph.erode(full, 1), lumen.tensor({ { 0, 0, 0, 0, 0 }, { 0, 1, 1, 1, 0 }, { 0, 1, 1, 1, 0 },
      { 0, 1, 1, 1, 0 }, { 0, 0, 0, 0, 0 } }):to('u8'))
    -- closing never removes a voxel
    same(morph.close(full, 2), full)
  end)

  it('fill_holes matches scipy binary_fill_holes', function()
    local f3, f2 = morph.fill_holes(holes3), morph.fill_holes(holes2)
    same(f3, R[F3][1])
    same(f2, R[F2][1])
    -- the cases have holes to fill
    assert.is_true(f3:to("i64"):sum():item() > holes3:to("i64"):sum():item())
    assert.is_true(f2:to("i64"):sum():item() > holes2:to('i64'):sum():item())
  end)

  it('keep_largest and remove_small (voxels and mm^3)', function()
    same(morph.keep_largest(m3), R[K3][1])
    same(morph.remove_small(m3, 30), R[K3][2])
    same(morph.remove_small(m3, 30, { spacing = sp3 }), R[K3][3])
    same(morph.keep_largest(lumen.zeros({ 3, 3 }, 'i32')), lumen.zeros({ 3, 3 }, 'u8'))
    -- ties keep the first component in scan order
    local two = lumen.tensor({ { 1, 0, 1 } }):to('u8')
    same(morph.keep_largest(two), lumen.tensor({ { 1, 0, 0 } }):to('u8'))
  end)

  it('otsu matches skimage threshold_otsu (numpy transcription), with a mask and fewer bins', function()
    local want = { R[O][1]:item(), R[O][2]:item(), R[O][3]:item() }
    assert.near(want[1], morph.otsu(img), 1e-12)
    assert.near(want[2], morph.otsu(img, { bins = 16 }), 1e-12)
    assert.near(want[3], morph.otsu(img, { mask = roi }), 1e-12)
    -- integer images use the same bins; a constant image gives its value
    assert.equal(4, morph.otsu(lumen.full({ 3, 3 }, 4):to('i32')))
    local two = lumen.tensor({ 0, 0, 0, 10, 10 })
    local t = morph.otsu(two)
    assert.is_true(t > 0 and t < 10)
  end)

  it('refuses bad input with clear errors', function()
    local function err(pattern, f, ...)
      local ok, e = pcall(f, ...)
      assert.is_false(ok)
      assert.matches(pattern, e, 1, true)
    end
    err("lumen.morph.distance: mask is f32, expected an integer or bool mask", morph.distance, lumen.zeros(3, 3))
    err("lumen.morph.erode: mask is 4-D (2x2x2x2), expected 1 to 3 spatial dims", morph.erode, lumen.zeros({ 2, 2, 2, 2 }, 'u8'), 1)
    err("lumen.morph.components: connectivity 6 for a 2-D mask, expected 4, 8", morph.components, m2, { connectivity = 6 })
    err("lumen.morph.components: unknown option 'conectivity'", morph.components, m2, { conectivity = 4 })
    err("lumen.morph.distance: spacing must be a number or a list of 3 numbers", morph.distance, m3, { 1, 2 })
    err("lumen.morph.distance: spacing 0 along dim 1", morph.distance, m3, { 1, 0, 1 })
    err("lumen.morph.dilate: radius must be an integer >= 0, got -1", morph.dilate, m3, -1)
    err("lumen.morph.fill_holes: mask must be a tensor, got a table", morph.fill_holes, {})
    err("lumen.morph.remove_small: min_size must be a number >= 0", morph.remove_small, m3, 'big')
    err("lumen.morph.otsu: mask of shape 30x41 and image of shape 30x40, expected equal shapes", morph.otsu, img,
      { mask = lumen.ones({ 30, 41 }, 'u8') })
    err("lumen.morph.otsu: no voxels to threshold (the mask is empty)", morph.otsu, img, { mask = lumen.zeros({ 30, 40 }, 'u8') })
    err("lumen.morph.otsu: bins must be an integer >= 2, got 1", morph.otsu, img, { bins = 1 })
    local freed = lumen.zeros({ 2, 2 }, 'u8')
    freed:free()
    err("lumen.morph.keep_largest: mask was freed", morph.keep_largest, freed)
    -- the error blames the caller's line
    local ok, e = pcall(function() morph.distance(lumen.zeros(3, 3)) end)
    assert.matches('morph_spec.lua:%d+: lumen.morph.distance', e)
  end)
end)
