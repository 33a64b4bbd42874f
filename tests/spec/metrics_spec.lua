-- Segmentation metrics: lumen.metrics against a numpy/scipy reference
-- written here from the definitions (medpy's surface distances on
-- scipy's distance transform), on random blobs (Gaussian-smoothed noise,
-- thresholded) in 2-D and 3-D with anisotropic spacing; closed forms
-- (concentric discs and spheres); lesion counts on constructed maps.
local lumen = require 'lumen'
local metrics = require 'lumen.metrics'
local augment = require 'lumen.augment'
local oracle = require 'helpers.oracle'

local PRELUDE = [[
import numpy as np
import scipy.ndimage as nd
def surface(m):
    m = m != 0
    return m & ~nd.binary_erosion(m, structure=nd.generate_binary_structure(m.ndim, 1))
def directed(a, b, sp):
    return nd.distance_transform_edt(~surface(b), sampling=sp)[surface(a)]
def reference(p, t, sp):
    p, t = p.numpy(), t.numpy()
    d1, d2 = directed(p, t, sp), directed(t, p, sp)
    p, t = p != 0, t != 0
    return [np.percentile(np.hstack((d1, d2)), 95), (d1.mean() + d2.mean()) / 2,
            max(np.percentile(d1, 95), np.percentile(d2, 95)), np.hstack((d1, d2)).max(),
            (p & t).sum(), (p & ~t).sum(), (~p & t).sum(), (~p & ~t).sum()]
]]
local function py(code)
  local src = (PRELUDE .. code):gsub('\\', '\\\\'):gsub("'", "\\'"):gsub('\n', '\\n')
  return "run('" .. src .. "')"
end

local function smooth(shape, sigma, seed)
  lumen.manual_seed(seed)
  local x = lumen.randn({ 1, unpack(shape) }):to('f64')
  return augment.gaussian_filter(x, sigma):reshape(shape)
end

-- a ball of radius r (voxels) about the centre of a grid of size n per dim
local function ball(nd, n, r)
  local c = (n - 1) / 2
  local shape = {}
  for i = 1, nd do shape[i] = n end
  local t = lumen.zeros(shape, 'u8')
  local function fill(prefix, d2)
    if #prefix == nd then
      if d2 <= r * r then t[prefix] = 1 end
      return
    end
    for i = 0, n - 1 do
      local p = { unpack(prefix) }
      p[#p + 1] = i
      fill(p, d2 + (i - c) ^ 2)
    end
  end
  fill({}, 0)
  return t
end

describe('metrics', function()
  local s3, s3b = smooth({ 20, 18, 16 }, 1.5, 1), smooth({ 20, 18, 16 }, 1.5, 2)
  local truth3, pred3 = s3:gt(0.05):to('u8'), (s3 + s3b * 0.4):gt(0.0):to('i32')
  local s2, s2b = smooth({ 48, 40 }, 2.5, 3), smooth({ 48, 40 }, 2.5, 4)
  local truth2, pred2 = s2:gt(0.0):to('i64'), (s2 + s2b * 0.5):gt(0.05):to('bool')
  local sp3, sp2 = { 1.2, 0.7, 2.5 }, { 0.8, 1.9 }

  local cases, R = {}, nil
  local function add(c) cases[#cases + 1] = c return #cases end
  local C3 = add({ py('result = reference(p, t, (1.2, 0.7, 2.5))'), p = pred3, t = truth3 })
  local C2 = add({ py('result = reference(p, t, (0.8, 1.9))'), p = pred2, t = truth2 })
  local C1 = add({ py('result = reference(p, t, 1.0)'), p = pred3, t = truth3 })
  local function want(k)
    local r = {}
    for i = 1, 8 do r[i] = R[k][i]:item() end
    return r
  end

  setup(function() R = oracle.run(cases) end)

  it('counts-based scores match numpy', function()
    for _, c in ipairs({ { pred3, truth3, C3 }, { pred2, truth2, C2 } }) do
      local w = want(c[3])
      local tp, fp, fn, tn = w[5], w[6], w[7], w[8]
      assert.is_true(tp > 0 and fp > 0 and fn > 0 and tn > 0)
      assert.near(2 * tp / (2 * tp + fp + fn), metrics.dice(c[1], c[2]), 1e-14)
      assert.near(tp / (tp + fp + fn), metrics.jaccard(c[1], c[2]), 1e-14)
      assert.near(tp / (tp + fn), metrics.sensitivity(c[1], c[2]), 1e-14)
      assert.near(tn / (tn + fp), metrics.specificity(c[1], c[2]), 1e-14)
    end
  end)

  it('hd95 and assd match the medpy definitions on scipy distances (2-D and 3-D, anisotropic)', function()
    for _, c in ipairs({ { pred3, truth3, sp3, C3 }, { pred2, truth2, sp2, C2 }, { pred3, truth3, nil, C1 } }) do
      assert.is_nil(R[c[4]].error)
      local w = want(c[4])
      assert.is_true(w[1] > 1, 'the case should have distances to measure')
      assert.near(w[1], metrics.hd95(c[1], c[2], c[3]), 1e-10)
      assert.near(w[2], metrics.assd(c[1], c[2], c[3]), 1e-10)
      local all = metrics.surface_distances(c[1], c[2], c[3])
      assert.near(w[1], all.hd, 1e-10)
      assert.near(w[3], all.hd_monai, 1e-10)
      assert.is_true(all.hd_monai >= all.hd)
      assert.near(w[2], (all.mean_pred_to_truth + all.mean_truth_to_pred) / 2, 1e-10)
      assert.near(w[4], metrics.surface_distances(c[1], c[2], c[3], { percentile = 100 }).hd, 1e-10)
    end
    -- symmetric in its arguments, and strided views give the same
    assert.near(metrics.hd95(pred3, truth3, sp3), metrics.hd95(truth3, pred3, sp3), 1e-12)
    local tp = pred3:transpose(0, 2):contiguous():transpose(0, 2)
    assert.near(want(C3)[1], metrics.hd95(tp, truth3, sp3), 1e-10)
    -- a number spacing means every dim
    assert.near(metrics.hd95(pred3, truth3, 1), metrics.hd95(pred3, truth3, { 1, 1, 1 }), 0)
  end)

  it('concentric discs and spheres: HD95 and ASSD are the radius difference within a voxel', function()
    local outer2, inner2 = ball(2, 41, 14), ball(2, 41, 9)
    assert.near(5, metrics.hd95(inner2, outer2), 1)
    assert.near(5, metrics.assd(inner2, outer2), 1)
    local outer3, inner3 = ball(3, 25, 10), ball(3, 25, 6)
    assert.near(4, metrics.hd95(inner3, outer3), 1)
    assert.near(4, metrics.assd(outer3, inner3), 1)
    -- spacing scales distances
    assert.near(2 * metrics.hd95(inner2, outer2), metrics.hd95(inner2, outer2, 2), 1e-12)
    assert.equal(0, metrics.hd95(outer3, outer3))
  end)

  it('empty masks', function()
    local z, one = lumen.zeros({ 6, 7 }, 'u8'), lumen.zeros({ 6, 7 }, 'u8')
    one[{ 2, 3 }] = 1
    assert.equal(1, metrics.dice(z, z))
    assert.equal(1, metrics.jaccard(z, z))
    assert.equal(0, metrics.hd95(z, z))
    assert.equal(0, metrics.assd(z, z))
    assert.equal(math.huge, metrics.hd95(one, z))
    assert.equal(math.huge, metrics.assd(z, one))
    assert.equal(0, metrics.dice(one, z))
    local s = metrics.sensitivity(one, z)
    assert.is_true(s ~= s) -- nan: no positives to find
    assert.equal(1, metrics.sensitivity(one, one))
    assert.equal(41 / 42, metrics.specificity(one, z))
    -- a single voxel is its own surface
    assert.equal(0, metrics.hd95(one, one))
  end)

  it('volume_difference in ml', function()
    local p, t = lumen.zeros({ 4, 5, 6 }, 'u8'), lumen.zeros({ 4, 5, 6 }, 'u8')
    for i = 0, 9 do p[{ 0, math.floor(i / 5), i % 5 }] = 1 end
    for i = 0, 3 do t[{ 3, 4, i }] = 1 end
    local d, rel = metrics.volume_difference(p, t, { 2, 1, 0.5 })
    assert.near(6 / 1000, d, 1e-15)
    assert.near(1.5, rel, 1e-15)
    d, rel = metrics.volume_difference(t, p, { 10, 10, 10 })
    assert.near(-6, d, 1e-12)
    assert.near(-0.6, rel, 1e-15)
  end)

  it('lesion_f1 on constructed maps', function()
    local truth, pred = lumen.zeros({ 20, 20 }, 'u8'), lumen.zeros({ 20, 20 }, 'u8')
    for _, p in ipairs({ { 1, 1 }, { 1, 2 }, { 2, 1 }, { 2, 2 }, -- A: 4 voxels
      { 10, 10 },                                           -- B: 1 voxel
      { 15, 3 }, { 15, 4 }, { 15, 5 }, { 16, 3 }, { 16, 4 } }) do -- C: 5 voxels
      truth[p] = 1
    end
    for _, p in ipairs({ { 1, 1 },  -- 1 voxel of A
      { 10, 10 }, { 10, 11 },       -- B and beyond
      { 15, 4 }, { 15, 5 }, { 14, 5 }, -- 2 voxels of C
      { 5, 15 }, { 5, 16 },         -- a false positive
      { 18, 17 }, { 19, 18 } }) do  -- diagonal neighbours: one lesion with 8-connectivity, two with 4
      pred[p] = 1
    end
    local r = metrics.lesion_f1(pred, truth)
    assert.same({ 3, 0, 5, 2, 3 }, { r.tp, r.fn, r.n_pred, r.fp, r.n_truth })
    assert.near(1, r.recall, 1e-15)
    assert.near(3 / 5, r.precision, 1e-15)
    assert.near(2 * 0.6 / 1.6, r.f1, 1e-15)
    r = metrics.lesion_f1(pred, truth, { connectivity = 4 })
    assert.same({ 6, 3 }, { r.n_pred, r.fp })
    r = metrics.lesion_f1(pred, truth, { min_overlap = 2 })
    assert.same({ 1, 2, 2 }, { r.tp, r.fn, r.fp })
    assert.near(1 / 3, r.recall, 1e-15)
    assert.near(2 * (0.6 / 3) / (0.6 + 1 / 3), r.f1, 1e-15)
    local z = lumen.zeros({ 20, 20 }, 'u8')
    assert.equal(1, metrics.lesion_f1(z, z).f1)
    assert.equal(0, metrics.lesion_f1(pred, z).f1)
    assert.equal(0, metrics.lesion_f1(z, truth).f1)
    assert.equal(3, metrics.lesion_f1(z, truth).fn)
  end)

  it('evaluate scores each label of two label maps, and their mean', function()
    local lt = s3:gt(-0.1):to('i32') + s3:gt(0.05):to('i32') + s3:gt(0.2):to('i32') -- 0..3
    local lp = (s3 + s3b * 0.3):gt(-0.05):to('i32') + (s3 + s3b * 0.3):gt(0.1):to('i32') -- 0..2
    local r = metrics.evaluate(lp, lt, { spacing = sp3 })
    assert.is_nil(r[0])
    for k = 1, 3 do
      local p, t = lp:eq(k), lt:eq(k)
      local m = r[k]
      assert.equal(metrics.dice(p, t), m.dice)
      assert.equal(metrics.jaccard(p, t), m.jaccard)
      assert.equal(metrics.hd95(p, t, sp3), m.hd95)
      assert.equal(metrics.assd(p, t, sp3), m.assd)
      assert.equal(metrics.sensitivity(p, t), m.sensitivity)
      assert.equal(metrics.specificity(p, t), m.specificity)
      local d = metrics.volume_difference(p, t, sp3)
      assert.near(d, m.volume_difference_ml, 1e-12)
      assert.near(m.volume_ml - m.volume_truth_ml, d, 1e-12)
    end
    -- label 3 is missing from the prediction
    assert.equal(0, r[3].dice)
    assert.equal(math.huge, r[3].hd95)
    assert.near((r[1].dice + r[2].dice + r[3].dice) / 3, r.mean.dice, 1e-15)
    assert.equal(math.huge, r.mean.hd95)
    local only = metrics.evaluate(lp, lt, { spacing = sp3, labels = { 2 } })
    assert.is_nil(only[1])
    assert.equal(r[2].hd95, only[2].hd95)
    assert.equal(r[2].dice, only.mean.dice)
  end)

  it('refuses bad input with clear errors', function()
    local function err(pattern, f, ...)
      local ok, e = pcall(f, ...)
      assert.is_false(ok)
      assert.matches(pattern, e, 1, true)
    end
    local a, b = lumen.zeros({ 4, 5 }, 'u8'), lumen.zeros({ 5, 4 }, 'u8')
    err('lumen.metrics.dice: pred of shape 4x5 and truth of shape 5x4, expected equal shapes', metrics.dice, a, b)
    err('lumen.metrics.hd95: pred of shape 4x5 and truth of shape 5x4', metrics.hd95, a, b)
    err('lumen.metrics.jaccard: truth is f32, expected an integer or bool mask', metrics.jaccard, a, lumen.zeros(4, 5))
    err('lumen.metrics.assd: spacing must be a number or a list of 2 numbers', metrics.assd, a, a, { 1, 1, 1 })
    err('lumen.metrics.hd95: spacing -1 along dim 0', metrics.hd95, a, a, -1)
    err("lumen.metrics.lesion_f1: unknown option 'overlap'", metrics.lesion_f1, a, a, { overlap = 1 })
    err('lumen.metrics.lesion_f1: min_overlap must be an integer >= 1, got 0', metrics.lesion_f1, a, a, { min_overlap = 0 })
    err('lumen.metrics.lesion_f1: connectivity 26 for a 2-D mask', metrics.lesion_f1, a, a, { connectivity = 26 })
    err('lumen.metrics.evaluate: pred of shape 4x5 and truth of shape 5x4', metrics.evaluate, a, b)
    err('lumen.metrics.evaluate: labels must be a list of integers', metrics.evaluate, a, a, { labels = 3 })
    err('lumen.metrics.specificity: pred must be a tensor, got nil', metrics.specificity, nil, a)
    err('lumen.metrics.surface_distances: percentile must be a number from 0 to 100, got 101',
      metrics.surface_distances, a, a, 1, { percentile = 101 })
    err('lumen.metrics.volume_difference: pred is 4-D (1x1x4x5), expected 1 to 3 spatial dims',
      metrics.volume_difference, a:reshape({ 1, 1, 4, 5 }), a:reshape({ 1, 1, 4, 5 }))
    local ok, e = pcall(function() metrics.dice(a, b) end)
    assert.matches('metrics_spec.lua:%d+: lumen.metrics.dice', e)
  end)
end)
