-- Image geometry and intensity ops against scipy.ndimage, nibabel and numpy.
local lumen = require 'lumen'
local image = require 'lumen.image'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'

-- Python statements as a run('...') expression of the oracle.
local PRELUDE = [[
import numpy as np
import scipy.ndimage as nd
import nibabel as nib
import nibabel.processing as nproc
import nibabel.orientations as no
def grid_coords(M, shape):
    idx = np.indices(shape).reshape(3, -1).astype(np.float64)
    return (M[:3, :3] @ idx + M[:3, 3:4]).reshape((3,) + tuple(shape))
]]
local function py(code)
  local src = (PRELUDE .. code):gsub('\\', '\\\\'):gsub("'", "\\'"):gsub('\n', '\\n')
  return "run('" .. src .. "')"
end

local function T(rows) return lumen.tensor(rows, 'f64') end
local function mat(t) return t:totable() end

-- oblique (rotated and sheared) source affine and an oblique target grid
local A = { { 0.9, 0.2, 0.1, -4 }, { -0.15, 1.1, 0.25, 3 }, { 0.05, -0.2, 1.3, -2 }, { 0, 0, 0, 1 } }
local B = { { 1.2, -0.1, 0.05, -3.2 }, { 0.1, 0.95, -0.2, 4.1 }, { -0.05, 0.15, 1.1, -0.7 }, { 0, 0, 0, 1 } }
local vol = check.sine({ 9, 10, 11 }, 'f64', 3) * 10 + 2
local labels = (check.sine({ 9, 10, 11 }, 'f64', 5) * 4):to('i32')
local src = image.new(vol, { affine = A })
local tgt = image.new(lumen.zeros(8, 9, 7), { affine = B })
local axis_aligned = { { 2, 0, 0, -5 }, { 0, 1.5, 0, 7 }, { 0, 0, 1, 1 }, { 0, 0, 0, 1 } }

local function affine_close(a, e, what)
  for r = 1, 4 do
    for c = 1, 4 do
      if math.abs(a[r][c] - e[r][c]) > 1e-6 then
        error(string.format('%s: affine[%d][%d] = %.12g, expected %.12g', what, r, c, a[r][c], e[r][c]), 2)
      end
    end
  end
end

local cases, expect = {}, {}
local function add(case, fn) cases[#cases + 1] = case; expect[#expect + 1] = fn end

-- map_coordinates on the voxel map inv(A) * B
for _, order in ipairs { 0, 1, 3 } do
  for _, mode in ipairs { 'constant', 'nearest' } do
    add({ py(string.format([==[
M = np.linalg.inv(a.numpy()) @ b.numpy()
result = nd.map_coordinates(x.numpy(), grid_coords(M, (8, 9, 7)), order=%d, mode='%s', cval=-3.0)
]==], order, mode)), x = vol, a = T(A), b = T(B) }, function(r)
      local out = src:resample_to(tgt, { order = order, mode = mode, cval = -3 })
      affine_close(out.affine, B, 'resample_to')
      check.assert_close(out.data, r[1], { rtol = order == 3 and 1e-6 or 1e-12, atol = 1e-9 },
        'map_coordinates order ' .. order .. ' ' .. mode)
    end)
  end
end

-- nibabel.processing.resample_from_to (constant mode, cval 0)
for _, order in ipairs { 0, 1, 3 } do
  add({ py(string.format([==[
img = nib.Nifti1Image(x.numpy(), a.numpy())
out = nproc.resample_from_to(img, ((8, 9, 7), b.numpy()), order=%d)
result = (out.get_fdata(), out.affine)
]==], order)), x = vol, a = T(A), b = T(B) }, function(r)
    local out = src:resample_to(tgt, { order = order })
    affine_close(out.affine, mat(r[2]), 'resample_from_to')
    check.assert_close(out.data, r[1], { rtol = order == 3 and 1e-6 or 1e-12, atol = 1e-9 },
      'resample_from_to order ' .. order)
  end)
end

-- labels: nearest keeps the dtype and the values
add({ py([==[
M = np.linalg.inv(a.numpy()) @ b.numpy()
result = nd.map_coordinates(x.numpy(), grid_coords(M, (8, 9, 7)), order=0, mode='constant', cval=0)
]==]), x = labels, a = T(A), b = T(B) }, function(r)
  local out = image.new(labels, { affine = A }):resample_to(tgt, { order = 0 })
  assert.are.equal('i32', out.data:dtype())
  check.assert_close(out.data, r[1], { rtol = 0, atol = 0 }, 'labels')
end)

-- resample to a spacing: coordinates i * new / old along each axis
local sp = { 0.7, 1.6, 0.9 }
for _, order in ipairs { 0, 1, 3 } do
  add({ py(string.format([==[
ratio = np.array([0.7, 1.6, 0.9]) / np.sqrt((a.numpy()[:3, :3] ** 2).sum(0))
shape = tuple(int(v) for v in np.round(np.array([9, 10, 11]) / ratio))
aff = a.numpy().copy(); aff[:3, :3] *= ratio
idx = np.indices(shape).astype(np.float64) * ratio[:, None, None, None]
result = (nd.map_coordinates(x.numpy(), idx, order=%d, mode='constant'), aff)
]==], order)), x = vol, a = T(A) }, function(r)
    local out = src:resample { spacing = sp, order = order }
    affine_close(out.affine, mat(r[2]), 'resample')
    check.assert_close(out.data, r[1], { rtol = order == 3 and 1e-6 or 1e-12, atol = 1e-9 }, 'resample ' .. order)
    local s = out:spacing()
    for c = 1, 3 do assert.is_true(math.abs(s[c] - sp[c]) < 1e-12) end
  end)
end

-- nibabel.processing.resample_to_output for an axis-aligned image: the same
-- grid, compared where both have voxels
add({ py([==[
img = nib.Nifti1Image(x.numpy(), a.numpy())
out = nproc.resample_to_output(img, (1.3, 1.0, 2.2), order=3)
result = (out.get_fdata(), out.affine)
]==]), x = vol, a = T(axis_aligned) }, function(r)
  local out = image.new(vol, { affine = axis_aligned }):resample { spacing = { 1.3, 1.0, 2.2 }, order = 3 }
  affine_close(out.affine, mat(r[2]), 'resample_to_output')
  local e, a = r[1], out.data
  local n = {}
  for d = 1, 3 do n[d] = math.min(e:size(d - 1), a:size(d - 1)) end
  local function sub(t) return lumen.narrow(lumen.narrow(lumen.narrow(t, 0, 0, n[1]), 1, 0, n[2]), 2, 0, n[3]) end
  check.assert_close(sub(a), sub(e), { rtol = 1e-6, atol = 1e-9 }, 'resample_to_output')
end)

-- a 4-D image (i, j, k, t) resamples each volume on the same map
local vol4 = check.sine({ 9, 10, 11, 2 }, 'f64', 9)
add({ py([==[
M = np.linalg.inv(a.numpy()) @ b.numpy()
v = x.numpy()
result = np.stack([nd.map_coordinates(v[..., t], grid_coords(M, (8, 9, 7)), order=3, mode='nearest') for t in range(2)], -1)
]==]), x = vol4, a = T(A), b = T(B) }, function(r)
  local out = image.new(vol4, { affine = A }):resample_to(tgt, { order = 3, mode = 'nearest' })
  check.assert_close(out.data, r[1], { rtol = 1e-6, atol = 1e-9 }, '4-D resample_to')
end)

-- reorientation, as nibabel.orientations
local shear = { { -0.2, 1.1, 0.3, 5 }, { 0.1, 0.15, -1.9, -2 }, { 1.4, 0.3, 0.1, 8 }, { 0, 0, 0, 1 } }
local small = lumen.arange(4 * 5 * 6):to('f64'):reshape(4, 5, 6)
for _, aff in ipairs { A, shear, axis_aligned } do
  for _, code in ipairs { 'RAS', 'LPS', 'PIR', 'SAL', 'ILA' } do
    add({ py(string.format([==[
aff = a.numpy()
tr = no.ornt_transform(no.io_orientation(aff), no.axcodes2ornt('%s'))
result = (no.apply_orientation(x.numpy(), tr), aff @ no.inv_ornt_aff(tr, x.shape), np.array(no.aff2axcodes(aff @ no.inv_ornt_aff(tr, x.shape))) == np.array(list('%s')))
]==], code, code)), x = small, a = T(aff) }, function(r)
      local out = image.new(small, { affine = aff }):reorient(code)
      affine_close(out.affine, mat(r[2]), 'reorient ' .. code)
      check.assert_close(out.data, r[1], { rtol = 0, atol = 0 }, 'reorient ' .. code)
      for _, v in ipairs(r[3]:totable()) do assert.is_true(v) end
    end)
  end
end

-- crop, pad back, zscore, percentiles, windowing
local blob = lumen.zeros(9, 10, 11):to('f64')
lumen.narrow(lumen.narrow(lumen.narrow(blob, 0, 3, 3), 1, 2, 5), 2, 6, 2):copy_(check.sine({ 3, 5, 2 }, 'f64', 1) + 2)
add({ py([==[
v = x.numpy(); nz = np.argwhere(v > 0.5)
lo = np.maximum(nz.min(0) - 2, 0); hi = np.minimum(nz.max(0) + 3, v.shape)
c = v[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
aff = a.numpy().copy(); aff[:3, 3] = (a.numpy() @ np.r_[lo, 1])[:3]
back = np.zeros_like(v); back[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = c
result = (c, aff, np.c_[lo, hi], back)
]==]), x = blob, a = T(A) }, function(r)
  local img = image.new(blob, { affine = A })
  local cropped, box = img:crop_foreground { margin = 2, threshold = 0.5 }
  check.assert_close(cropped.data, r[1], { rtol = 0, atol = 0 }, 'crop')
  affine_close(cropped.affine, mat(r[2]), 'crop')
  local b = r[3]:totable()
  for d = 1, 3 do assert.are.same({ b[d][1], b[d][2] }, box[d]) end
  local back = image.pad_back(cropped, box, { 9, 10, 11 })
  check.assert_close(back.data, r[4], { rtol = 0, atol = 0 }, 'pad_back')
  affine_close(back.affine, A, 'pad_back')
end)

local mask = (check.sine({ 9, 10, 11 }, 'f64', 7) + 0.3):gt(0)
add({ py([==[
v = x.numpy(); m = k.numpy().astype(bool)
result = ((v - v[m].mean()) / v[m].std(), (v - v.mean()) / v.std())
]==]), x = vol, k = mask }, function(r)
  check.assert_close(src:zscore { mask = mask }.data, r[1], { rtol = 1e-12, atol = 1e-12 }, 'zscore mask')
  check.assert_close(src:zscore { mask = image.new(mask) }.data, r[1], { rtol = 1e-12, atol = 1e-12 }, 'zscore image mask')
  check.assert_close(src:zscore().data, r[2], { rtol = 1e-12, atol = 1e-12 }, 'zscore')
end)

add({ py([==[
v = x.numpy(); lo, hi = np.percentile(v, [0.5, 99.5]); lo2, hi2 = np.percentile(v, [10, 73.3])
result = (np.clip(v, lo, hi), np.clip(v, lo2, hi2), np.clip((v - (3 - 12 / 2)) / 12, 0, 1))
]==]), x = vol }, function(r)
  check.assert_close(src:clip_percentiles(0.5, 99.5).data, r[1], { rtol = 1e-12, atol = 1e-12 }, 'clip 0.5 99.5')
  check.assert_close(src:clip_percentiles(10, 73.3).data, r[2], { rtol = 1e-12, atol = 1e-12 }, 'clip 10 73.3')
  check.assert_close(src:window(3, 12).data, r[3], { rtol = 1e-12, atol = 1e-12 }, 'window')
end)

describe('image ops', function()
  local results
  setup(function() results = oracle.run(cases) end)

  it('match scipy, nibabel and numpy', function()
    for i, fn in ipairs(expect) do
      local r = results[i]
      if r.error then error('case ' .. i .. ': python: ' .. r.error) end
      fn(r)
    end
  end)

  it('keep f32 as f32 and make interpolated integers f32', function()
    local f = image.new(vol:to('f32'), { affine = A })
    assert.are.equal('f32', f:resample_to(tgt, { order = 3 }).data:dtype())
    assert.are.equal('f32', image.new(labels, { affine = A }):resample_to(tgt, { order = 1 }).data:dtype())
    assert.are.equal('f32', f:window(0, 1).data:dtype())
  end)

  it('has C loops that refuse what they cannot take', function()
    local core = require 'lumen.core'
    local ffi = require 'ffi'
    local m = ffi.new('double[12]', 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)
    local size = ffi.new('int64_t[3]', 2, 2, 2)
    local function msg(st)
      assert.is_true(st < 0)
      local s = ffi.string(core.C.lm_ctx_errmsg(core.ctx))
      core.C.lm_ctx_clear_error(core.ctx)
      return s
    end
    local f32 = lumen.zeros(3, 3, 3)
    assert.matches('map_affine3d: input is f32, expected f64',
      msg(core.C.lm_map_affine3d(core.ctx, core.handle(f32, 't'), m, 1, 0, 0, size, core.out1)), 1, true)
    assert.matches('map_affine3d: order 2, expected 0, 1 or 3',
      msg(core.C.lm_map_affine3d(core.ctx, core.handle(f32:to('f64'), 't'), m, 2, 0, 0, size, core.out1)), 1, true)
    assert.matches('spline_prefilter3d: input is 2-D',
      msg(core.C.lm_spline_prefilter3d(core.ctx, core.handle(lumen.zeros(3, 3):to('f64'), 't'))), 1, true)
    m[3] = 0 / 0
    assert.matches('map_affine3d: matrix entry 3 is not finite',
      msg(core.C.lm_map_affine3d(core.ctx, core.handle(f32:to('f64'), 't'), m, 1, 0, 0, size, core.out1)), 1, true)
  end)

  it('refuse bad arguments with clear errors', function()
    local function err(pat, f, ...)
      local ok, e = pcall(f, ...)
      assert.is_false(ok)
      assert.matches(pat, tostring(e), 1, true)
    end
    err('lumen.image.resample_to: order 2 is not supported', src.resample_to, src, tgt, { order = 2 })
    err("lumen.image.resample_to: unknown option 'oder'", src.resample_to, src, tgt, { oder = 1 })
    err('lumen.image.resample_to: the target must be an image', src.resample_to, src, vol)
    err("lumen.image.resample_to: mode 'wrap' is not supported", src.resample_to, src, tgt, { mode = 'wrap' })
    err('lumen.image.resample: spacing must be a list of 3 positive numbers', src.resample, src, { spacing = { 1, 2 } })
    err('lumen.image.resample: spacing[2] is -1, expected a positive number', src.resample, src, { spacing = { 1, -1, 1 } })
    err('lumen.image.resample: the image is 2-D, expected 3 spatial dims', image.new(lumen.zeros(3, 4)).resample,
      image.new(lumen.zeros(3, 4)), { spacing = { 1, 1, 1 } })
    err("lumen.image.reorient: 'RAQ': letter 'Q' is not one of", src.reorient, src, 'RAQ')
    err("lumen.image.reorient: 'RAR' names a world axis twice", src.reorient, src, 'RAR')
    err('lumen.image.reorient: orientation must be a 3-letter code', src.reorient, src, 'RA')
    err('lumen.image.crop_foreground: no voxel is above the threshold 100', src.crop_foreground, src, { threshold = 100 })
    err('lumen.image.crop_foreground: margin must be a non-negative integer', src.crop_foreground, src, { margin = -1 })
    err('lumen.image.pad_back: box[1] = {0, 3} does not fit', image.pad_back, lumen.zeros(2, 2, 2),
      { { 0, 3 }, { 0, 2 }, { 0, 2 } }, { 5, 5, 5 })
    err('lumen.image.crop_foreground: the image is 4-D, expected a 3-D volume', src.crop_foreground, image.new(vol4))
    err('lumen.image.zscore: mask is 2x2, expected the image shape 9x10x11', src.zscore, src, { mask = lumen.zeros(2, 2) })
    err('lumen.image.zscore: the mask selects no voxel', src.zscore, src, { mask = lumen.zeros(9, 10, 11) })
    err('lumen.image.clip_percentiles: percentiles must be numbers with 0 <= lo <= hi <= 100', src.clip_percentiles, src, 60, 40)
    err('lumen.image.window: width must be a positive number, got 0', src.window, src, 40, 0)
  end)
end)
