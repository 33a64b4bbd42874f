-- NIfTI conformance against nibabel: every NIfTI file in nibabel's test
-- data, files nibabel writes (both byte orders, NIfTI-2, scaling, each
-- datatype, qform-only and no-code headers), and lumen's own writes read
-- back by nibabel. All nibabel work runs in ONE Python process.
local lumen = require 'lumen'
local image = require 'lumen.image'
local check = require 'helpers.check'

local NIB = '/usr/lib/python3/dist-packages/nibabel/tests/data/'
local dir = os.tmpname()
os.remove(dir)
assert(os.execute('mkdir -p ' .. dir) == 0 or true)

-- nibabel's data files that are NIfTI. analyze.hdr, nifti1.hdr, nifti2.hdr
-- are headers without their .img: both nibabel and lumen refuse them.
local nib_files = { 'anatomical.nii', 'example4d.nii.gz', 'example_nifti2.nii.gz', 'functional.nii',
  'reoriented_anat_moved.nii', 'resampled_anat_moved.nii', 'row_major.dconn.nii', 'standard.nii.gz' }
local headers_only = { 'analyze.hdr', 'nifti1.hdr', 'nifti2.hdr' }

-- Files made by nibabel in the Python run: name -> numpy/nibabel statements
-- leaving an image in `img` (arr: a small deterministic array).
local made = {
  { 'be_f32.nii', "img = nib.Nifti1Image(arr.astype('>f4'), aff, nib.Nifti1Header(endianness='>'))" },
  { 'be_i16_scaled.nii.gz', "img = nib.Nifti1Image((arr*100).astype('>i2'), aff, nib.Nifti1Header(endianness='>')); img.header.set_slope_inter(0.5, -3)" },
  { 'n2_be_f64.nii', "img = nib.Nifti2Image(arr.astype('>f8'), aff, nib.Nifti2Header(endianness='>'))" },
  { 'n2_i64.nii.gz', "img = nib.Nifti2Image((arr*1000).astype(np.int64), aff, dtype=np.int64)" },
  { 'i8.nii', "img = nib.Nifti1Image((arr*100).astype(np.int8), aff)" },
  { 'u16.nii', "img = nib.Nifti1Image((arr*100+200).astype(np.uint16), aff)" },
  { 'u32.nii.gz', "img = nib.Nifti1Image((arr*100+200).astype(np.uint32), aff)" },
  { 'i32_slope.nii', "img = nib.Nifti1Image((arr*100).astype(np.int32), aff); img.header.set_slope_inter(2.5, 1.25)" },
  { 'u8_nanslope.nii', "img = nib.Nifti1Image((arr*100+120).astype(np.uint8), aff); img.header['scl_slope'] = np.nan" },
  { 'qform_only.nii', "img = nib.Nifti1Image(arr.astype(np.float32), None); img.set_qform(rot, 1); img.set_sform(None, 0)" },
  { 'no_codes.nii', "img = nib.Nifti1Image(arr.astype(np.float32), None); img.set_qform(None, 0); img.set_sform(None, 0); img.header.set_zooms((2, 3, 4, 1.5))" },
  { 'f32_5d.nii', "img = nib.Nifti1Image(np.arange(2*3*4*2*2, dtype=np.float32).reshape(2,3,4,2,2), aff)" },
  { 'pair.img', "img = nib.Nifti1Pair(arr.astype(np.int16), aff)" },
  { 'complex.nii', "img = nib.Nifti1Image(arr.astype(np.complex64), aff)" },
}

-- Images written by lumen, checked by nibabel.
local function rotation_affine(flip)
  local c, s = math.cos(0.3), math.sin(0.3)
  local f = flip and -1 or 1
  return { { 1.5 * c, -2 * s, 0, -10.5 }, { 1.5 * s, 2 * c, 0, 20.25 }, { 0, 0, 2.5 * f, 5 }, { 0, 0, 0, 1 } }
end
local function sine(shape, dtype, scale)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  local flat = {}
  for i = 1, n do flat[i] = math.floor(math.sin(i * 0.731) * (scale or 1) * 1000) / 1000 end
  return lumen.tensor(flat, 'f64'):reshape(shape):to(dtype)
end
local written = {
  { 'w_f32.nii', image.new(sine({ 5, 4, 3 }, 'f32', 50), { affine = rotation_affine(false) }) },
  { 'w_f64.nii.gz', image.new(sine({ 5, 4, 3, 2 }, 'f64', 50), { affine = rotation_affine(true) }) },
  { 'w_i32.nii.gz', image.new(sine({ 6, 2, 3 }, 'f64', 1000):to('i32'), { affine = rotation_affine(true) }) },
  { 'w_u8.nii', image.new(sine({ 3, 3, 3 }, 'f64', 100):abs():to('u8'),
    { affine = rotation_affine(false), meta = { qform_code = 1, sform_code = 4 } }) },
  -- a non-contiguous (transposed) tensor is written in index order
  { 'w_view.nii', image.new(sine({ 4, 5, 3 }, 'f32', 10):transpose(0, 1), { affine = rotation_affine(false) }) },
}

local py = [==[
import sys, os, warnings, numpy as np, nibabel as nib
warnings.filterwarnings('ignore')
d, nibdir = sys.argv[1], sys.argv[2]
arr = np.sin(np.arange(5*4*3*2).reshape(2,3,4,5).T * 0.731)
aff = np.array([[-2., 0.1, 0, 30], [0.2, 3., 0, -20], [0, 0, 4., 10], [0, 0, 0, 1]])
rot = np.array([[0, -3., 0, 30], [2., 0, 0, -20], [0, 0, 4., 10], [0, 0, 0, 1]])
made = [l.split('\t', 1) for l in open(os.path.join(d, 'made.txt')).read().splitlines()]
for name, code in made:
    ns = dict(np=np, nib=nib, arr=arr, aff=aff, rot=rot)
    exec(code, ns)
    nib.save(ns['img'], os.path.join(d, name))
import zlib
open(os.path.join(d, 'zraw.bin'), 'wb').write(zlib.compress(bytes(range(256)) * 40))
for i, p in enumerate(open(os.path.join(d, 'paths.txt')).read().splitlines()):
    try:
        img = nib.load(p)
        if getattr(img, 'affine', None) is None:  # CIFTI in a NIfTI-2 container: the NIfTI view
            img = nib.Nifti2Image.from_filename(p)
        np.save(os.path.join(d, '%d_data.npy' % i), np.asarray(img.get_fdata(), dtype=np.float64))
        np.save(os.path.join(d, '%d_aff.npy' % i), np.asarray(img.affine, dtype=np.float64))
        q = img.header.get_qform() if hasattr(img.header, 'get_qform') else img.affine
        np.save(os.path.join(d, '%d_qform.npy' % i), np.asarray(q, dtype=np.float64))
    except Exception as e:
        open(os.path.join(d, '%d_err.txt' % i), 'w').write(type(e).__name__ + ': ' + str(e))
]==]

local paths, results = {}, {}

local function write_file(path, s)
  local f = assert(io.open(path, 'wb'))
  f:write(s)
  f:close()
end
local function read_file(path)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local s = f:read('*a')
  f:close()
  return s
end

setup(function()
  for _, w in ipairs(written) do w[2]:write(dir .. '/' .. w[1]) end
  local lines = {}
  for _, m in ipairs(made) do lines[#lines + 1] = m[1] .. '\t' .. m[2] end
  write_file(dir .. '/made.txt', table.concat(lines, '\n'))
  for _, f in ipairs(nib_files) do paths[#paths + 1] = NIB .. f end
  for _, f in ipairs(headers_only) do paths[#paths + 1] = NIB .. f end
  for _, m in ipairs(made) do paths[#paths + 1] = dir .. '/' .. m[1] end
  for _, w in ipairs(written) do paths[#paths + 1] = dir .. '/' .. w[1] end
  write_file(dir .. '/paths.txt', table.concat(paths, '\n'))
  write_file(dir .. '/oracle.py', py)
  local rc = os.execute(string.format('/usr/bin/python3 %s/oracle.py %s %s', dir, dir, NIB))
  assert(rc == 0 or rc == true, 'the nibabel oracle failed')
  for i, p in ipairs(paths) do
    local k = i - 1
    local err = read_file(string.format('%s/%d_err.txt', dir, k))
    if err then
      results[p] = { error = err }
    else
      results[p] = {
        data = lumen.load_npy(string.format('%s/%d_data.npy', dir, k)),
        affine = lumen.load_npy(string.format('%s/%d_aff.npy', dir, k)),
        qform = lumen.load_npy(string.format('%s/%d_qform.npy', dir, k)),
      }
    end
  end
end)

teardown(function() if not os.getenv('KEEP') then os.execute('rm -rf ' .. dir) end end)

-- max |a - e| - (atol + rtol |e|) <= 0 elementwise, computed by tensor ops
local function assert_data(a, e, rtol, what)
  assert.are.same(e:size(), a:size(), what .. ': shape')
  if e:numel() == 0 then return end
  local a64 = a:to('f64')
  local excess = ((a64 - e):abs() - (e:abs() * rtol + 1e-12)):max():item()
  if excess ~= excess then -- NaN voxels (nibabel keeps them): compare one by one, NaN matching NaN
    check.assert_close(a64, e, { rtol = rtol, atol = 1e-12 }, what)
    return
  end
  assert(excess <= 0, string.format('%s: data differs from nibabel by up to %g beyond tolerance', what, excess))
end

local function assert_affine(a, e, tol, what)
  local et = e:totable()
  for r = 1, 4 do
    for c = 1, 4 do
      local x, y = a[r][c], et[r][c]
      if math.abs(x - y) > tol * math.max(1, math.abs(y)) then
        error(string.format('%s: affine[%d][%d] is %.9g, nibabel has %.9g', what, r, c, x, y), 2)
      end
    end
  end
end

local function expect_read_error(path, pattern)
  local ok, err = pcall(image.read, path)
  assert.is_false(ok, path .. ' read without error')
  assert.is_truthy(tostring(err):find("lumen.image.read: '" .. path:gsub('%p', '%%%0') .. "'", 1),
    'error does not name the file: ' .. tostring(err))
  if pattern then assert.is_truthy(tostring(err):find(pattern), 'unexpected error: ' .. tostring(err)) end
  return err
end

describe('image nifti read (nibabel conformance)', function()
  it('reads every NIfTI file in nibabel\'s test data as nibabel does', function()
    for _, f in ipairs(nib_files) do
      local p = NIB .. f
      local r = results[p]
      assert.is_nil(r.error, f .. ': nibabel failed: ' .. tostring(r.error))
      local img = image.read(p)
      assert_data(img.data, r.data, 1e-12, f)
      assert_affine(img.affine, r.affine, 1e-5, f)
    end
  end)

  it('refuses a header whose .img is missing, as nibabel does', function()
    for _, f in ipairs(headers_only) do
      assert.is_truthy(results[NIB .. f].error, f .. ': nibabel read it')
      expect_read_error(NIB .. f, 'is missing')
    end
  end)

  it('reads files nibabel writes: both byte orders, NIfTI-2, scaling, every datatype, 5-D, pairs', function()
    for _, m in ipairs(made) do
      local p = dir .. '/' .. m[1]
      local r = results[p]
      if m[1] == 'complex.nii' then
        -- complex data has no lumen dtype: refused by name
        expect_read_error(p, 'complex64')
      else
        assert.is_nil(r.error, m[1] .. ': nibabel failed: ' .. tostring(r.error))
        local img = image.read(p)
        assert_data(img.data, r.data, 1e-12, m[1])
        assert_affine(img.affine, r.affine, 1e-5, m[1])
        assert_affine(img.meta.qform, r.qform, 1e-5, m[1] .. ' (qform)')
      end
    end
  end)

  it('gives the data as a strided view of the x-fastest buffer, with meta', function()
    local img = image.read(NIB .. 'anatomical.nii')
    assert.are.same({ 33, 41, 25 }, img.data:size())
    assert.are.same({ 1, 33, 33 * 41 }, img.data:stride())
    assert.are.equal('int16', img.meta.file_dtype)
    assert.are.equal('i32', img.data:dtype())
    local be = image.read(dir .. '/be_i16_scaled.nii.gz')
    assert.are.equal('f64', be.data:dtype())
    assert.are.equal(0.5, be.meta.scl_slope)
    assert.are.equal(-3, be.meta.scl_inter)
    assert.are.equal('swapped', be.meta.byte_order)
    local q = image.read(dir .. '/qform_only.nii')
    assert.are.equal(1, q.meta.qform_code)
    assert.are.equal(0, q.meta.sform_code)
    assert.are.equal('nifti2', image.read(dir .. '/n2_i64.nii.gz').meta.format)
  end)
end)

describe('image nifti write', function()
  it('writes .nii and .nii.gz that nibabel reads with the same data, affine and qform', function()
    for _, w in ipairs(written) do
      local p = dir .. '/' .. w[1]
      local r = results[p]
      assert.is_nil(r.error, w[1] .. ': nibabel failed: ' .. tostring(r.error))
      assert_data(w[2].data, r.data, 1e-12, w[1])
      assert_affine(w[2].affine, r.affine, 1e-5, w[1])
      -- the quaternion written must give back the same affine
      assert_affine(w[2].affine, r.qform, 1e-5, w[1] .. ' (qform)')
    end
  end)

  it('reads its own writes back unchanged, keeping the codes in meta', function()
    for _, w in ipairs(written) do
      local back = image.read(dir .. '/' .. w[1])
      assert.are.equal(w[2].data:dtype(), back.data:dtype())
      assert_data(back.data, w[2].data:to('f64'), 0, w[1] .. ' (lumen)')
      for r = 1, 4 do
        for c = 1, 4 do assert(math.abs(back.affine[r][c] - w[2].affine[r][c]) < 1e-5, w[1]) end
      end
    end
    local u8 = image.read(dir .. '/w_u8.nii')
    assert.are.equal(1, u8.meta.qform_code)
    assert.are.equal(4, u8.meta.sform_code)
    assert.are.equal(2, image.read(dir .. '/w_f32.nii').meta.sform_code)
  end)

  it('round-trips a nibabel file through lumen', function()
    local img = image.read(NIB .. 'example4d.nii.gz')
    img:write(dir .. '/rt.nii.gz')
    local back = image.read(dir .. '/rt.nii.gz')
    assert_data(back.data, img.data:to('f64'), 0, 'rt')
    for r = 1, 4 do for c = 1, 4 do assert(math.abs(back.affine[r][c] - img.affine[r][c]) < 1e-5) end end
  end)
end)

describe('zlib streams (lm_inflate, for MHA .zraw)', function()
  local C, ctx = lumen.core.C, lumen.core.ctx
  local function inflate(bytes, expected)
    local src = lumen.empty({ #bytes }, 'u8')
    require('ffi').copy(src:data_ptr(), bytes, #bytes)
    local out = require('ffi').new('lm_tensor*[1]')
    local st = C.lm_inflate(ctx, src.h, expected, out)
    if st ~= 0 then
      local msg = require('ffi').string(C.lm_ctx_errmsg(ctx))
      C.lm_ctx_clear_error(ctx)
      return nil, msg
    end
    return lumen.core.wrap(out[0])
  end

  it('inflates a zlib stream made by Python to exactly the expected bytes', function()
    local z = read_file(dir .. '/zraw.bin')
    local t = assert(inflate(z, 10240))
    assert.are.same({ 10240 }, t:size())
    local v = check.values(t)
    for i = 1, 10240 do assert(v[i] == (i - 1) % 256, 'byte ' .. i) end
    local _, err = inflate(z, 100)
    assert.is_truthy(err:find('more than 100 bytes'), err)
    _, err = inflate(z, 20000)
    assert.is_truthy(err:find('holds 10240 bytes, expected 20000'), err)
    _, err = inflate(z:sub(1, #z - 30), 10240)
    assert.is_truthy(err:find('truncated'), err)
  end)
end)

describe('image nifti bad input', function()
  local good -- bytes of a valid .nii
  setup(function() good = read_file(dir .. '/w_f32.nii') end)

  local function craft(name, bytes)
    local p = dir .. '/' .. name
    write_file(p, bytes)
    return p
  end
  local function i16(v) return string.char(v % 256, math.floor(v / 256) % 256) end

  it('refuses a truncated header', function()
    expect_read_error(craft('trunc_hdr.nii', good:sub(1, 200)), 'truncated')
  end)

  it('refuses data shorter than the header says, naming both sizes', function()
    local err = expect_read_error(craft('trunc_data.nii', good:sub(1, #good - 10)), 'header says 5x4x3 float32')
    assert.is_truthy(err:find('but the file has'))
  end)

  it('refuses a wrong magic and a wrong sizeof_hdr', function()
    expect_read_error(craft('magic.nii', good:sub(1, 344) .. 'xyz\0' .. good:sub(349)), 'bad magic')
    expect_read_error(craft('size.nii', 'abcd' .. good:sub(5)), 'not a NIfTI file')
  end)

  it('refuses absurd dims (2^40 voxels) without allocating', function()
    -- dim = {3, 32767, 32767, 1024}: about 2^40 float32 voxels
    local dims = i16(3) .. i16(32767) .. i16(32767) .. i16(1024)
    expect_read_error(craft('huge.nii', good:sub(1, 40) .. dims .. good:sub(49)), 'impossibly large')
    -- negative dims and dim[0] out of range
    expect_read_error(craft('neg.nii', good:sub(1, 40) .. i16(3) .. i16(65535) .. good:sub(45)), 'dim%[1%] is %-1')
    expect_read_error(craft('ndim.nii', good:sub(1, 40) .. i16(9) .. good:sub(43)), 'dim%[0%] is 9')
  end)

  it('refuses a corrupt or truncated gzip', function()
    local gz = read_file(dir .. '/w_f64.nii.gz')
    expect_read_error(craft('cut.nii.gz', gz:sub(1, math.floor(#gz / 2))), 'truncated')
    local mid = math.floor(#gz / 2)
    local bad = gz:sub(1, mid - 1) .. string.char((gz:byte(mid) + 77) % 256) .. ('\255'):rep(20) .. gz:sub(mid + 21)
    expect_read_error(craft('corrupt.nii.gz', bad))
    expect_read_error(craft('notgz.nii.gz', good), 'not a gzip file')
  end)

  it('refuses a gzip that inflates to far more than the header says', function()
    -- a valid header followed by 8 MB of zeros, for a 5x4x3 image
    local p = dir .. '/bomb.nii'
    write_file(p, good .. ('\0'):rep(8 * 2 ^ 20))
    assert(os.execute('gzip -f ' .. p) == 0 or true)
    expect_read_error(p .. '.gz', 'more than')
  end)

  it('reads a .nii whose vox_offset is 0 (old writers) from just after the header', function()
    local p = craft('vox0.nii', good:sub(1, 108) .. ('\0'):rep(4) .. good:sub(113))
    local a, b = image.read(p), image.read(dir .. '/w_f32.nii')
    assert_data(a.data, b.data:to('f64'), 0, 'vox0')
  end)

  it('refuses a missing file', function()
    expect_read_error(dir .. '/missing.nii', 'cannot open')
  end)
end)
