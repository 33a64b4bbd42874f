-- DICOM: every file of pydicom's and nibabel's test data, and colour files
-- written here by pydicom (RGB and YBR, planar and interleaved, 8 and 16
-- bits, big endian, several frames), is read and compared with pydicom
-- (pixel_array, then apply_modality_lut; colour as (frames, rows, columns,
-- 3), YBR kept as YBR as pixel_array does, and converted by
-- convert_color_space for {rgb = true}), or must fail with a clear
-- lumen.image.read error naming the file (and, for compressed pixel data,
-- the transfer syntax). Geometry: the RAS affine NumPy builds from the tags.
local ffi = require 'ffi'
local image = require 'lumen.image'

local scratch = require 'helpers.scratch'
local dir, P = scratch.dir()
local slurp, write_all = scratch.read, scratch.write

local PY = [==[
import sys, os, glob, json
import numpy as np
import pydicom
from pydicom.pixel_data_handlers.util import apply_modality_lut, convert_color_space
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian, generate_uid
out = sys.argv[1]
roots = ['/usr/lib/python3/dist-packages/pydicom/data/test_files']
files = sorted(p for r in roots for p in glob.glob(r + '/**/*', recursive=True) if os.path.isfile(p))
files += sorted(glob.glob('/usr/lib/python3/dist-packages/nibabel/nicom/tests/data/*.dcm'))
# colour files: pydicom's test data has few uncompressed ones
os.makedirs(out + '/colour', exist_ok=True)
crng = np.random.default_rng(11)
def write_colour(name, photometric, planar, bits, frames, syntax, rows=5, cols=6):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.7'
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.is_little_endian = syntax != ExplicitVRBigEndian
    ds.is_implicit_VR = syntax == ImplicitVRLittleEndian
    ds.Modality = 'OT'
    ds.Rows, ds.Columns = rows, cols
    if frames > 1: ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, planar
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    n = rows * cols * frames * (2 if photometric == 'YBR_FULL_422' else 3)
    v = crng.integers(0, 2 ** bits, size=n)
    dt = ('<' if ds.is_little_endian else '>') + {8: 'u1', 16: 'u2', 32: 'u4'}[bits]
    ds.PixelData = v.astype(dt).tobytes()
    p = out + '/colour/' + name
    ds.save_as(p, write_like_original=False)
    return p
colour_files = [
    write_colour('rgb8_il.dcm', 'RGB', 0, 8, 1, ExplicitVRLittleEndian),
    write_colour('rgb8_planar_3f.dcm', 'RGB', 1, 8, 3, ExplicitVRLittleEndian),
    write_colour('rgb16_il_2f.dcm', 'RGB', 0, 16, 2, ExplicitVRLittleEndian),
    write_colour('rgb16_planar_be.dcm', 'RGB', 1, 16, 2, ExplicitVRBigEndian),
    write_colour('rgb16_implicit.dcm', 'RGB', 0, 16, 1, ImplicitVRLittleEndian),
    write_colour('rgb32_planar_be.dcm', 'RGB', 1, 32, 2, ExplicitVRBigEndian),
    write_colour('ybr_full_planar_2f.dcm', 'YBR_FULL', 1, 8, 2, ExplicitVRLittleEndian),
    write_colour('ybr_full_il.dcm', 'YBR_FULL', 0, 8, 1, ExplicitVRLittleEndian, 16, 16),
    write_colour('ybr_422_3f.dcm', 'YBR_FULL_422', 0, 8, 3, ExplicitVRLittleEndian),
]
files += colour_files
# refused by lumen (not in the list: pydicom's numpy handler returns them as they are)
write_colour('hsv.dcm', 'HSV', 0, 8, 1, ExplicitVRLittleEndian)
write_colour('ybr422_planar.dcm', 'YBR_FULL_422', 1, 8, 1, ExplicitVRLittleEndian)
lumen_dtype = {'uint8': 'u8', 'int8': 'i32', 'int16': 'i32', 'uint16': 'i32', 'int32': 'i32', 'uint32': 'i64'}
res = []
for n, f in enumerate(files):
    r = {'path': f}
    res.append(r)
    try:
        try:
            ds = pydicom.dcmread(f)
        except Exception:
            ds = pydicom.dcmread(f, force=True)
        ts = getattr(getattr(ds, 'file_meta', None), 'TransferSyntaxUID', None)
        r['syntax'] = str(ts) if ts else None
        r['compressed'] = bool(ts and ts.is_compressed)
        arr = ds.pixel_array
    except Exception as e:
        r['why'] = type(e).__name__
        continue
    colour = ds.get('SamplesPerPixel', 1) != 1
    r['colour'] = colour
    r['dtype'] = lumen_dtype.get(arr.dtype.name, arr.dtype.name)
    if colour and ds.PhotometricInterpretation != 'RGB' and ds.BitsAllocated == 8:
        # what {rgb = true} must give
        rgb = convert_color_space(arr.copy(), ds.PhotometricInterpretation, 'RGB')
        if rgb.ndim == 3: rgb = rgb[None]
        r['rgb'] = '%s/%d.rgb.f64' % (out, n)
        np.ascontiguousarray(rgb, dtype='<f8').tofile(r['rgb'])
    arr = apply_modality_lut(arr, ds)
    if arr.dtype == np.float64: r['dtype'] = 'f64'
    if arr.ndim == (3 if colour else 2): arr = arr[None]
    r['shape'] = list(arr.shape)
    r['raw'] = '%s/%d.f64' % (out, n)
    np.ascontiguousarray(arr, dtype='<f8').tofile(r['raw'])
    # geometry (LPS) -> RAS affine: i along the row cosines x column spacing,
    # j along the column cosines x row spacing, k along their cross product
    iop = np.array([float(v) for v in ds.get('ImageOrientationPatient', [1, 0, 0, 0, 1, 0])])
    ipp = np.array([float(v) for v in ds.get('ImagePositionPatient', [0, 0, 0])])
    ps = [float(v) for v in ds.get('PixelSpacing', [1, 1])]
    dz = ds.get('SpacingBetweenSlices', None) or ds.get('SliceThickness', None) or 1
    A = np.eye(4)
    A[:3, 0] = iop[:3] * ps[1]
    A[:3, 1] = iop[3:] * ps[0]
    A[:3, 2] = np.cross(iop[:3], iop[3:]) * float(dz)
    A[:3, 3] = ipp
    r['affine'] = (np.diag([-1.0, -1, 1, 1]) @ A).tolist()
    r['slope'] = float(ds.RescaleSlope) if 'RescaleSlope' in ds and 'RescaleIntercept' in ds else None
# a synthetic series: 4 oblique slices written in shuffled file order, and
# one file of another series in the same folder that must be left out
os.makedirs(out + '/series', exist_ok=True)
rng = np.random.default_rng(5)
th = 0.3
row = np.array([np.cos(th), np.sin(th), 0.0])
col = np.array([-np.sin(th) * np.cos(0.2), np.cos(th) * np.cos(0.2), np.sin(0.2)])
normal = np.cross(row, col)
origin = np.array([-20.0, 15.5, 7.25])
uid = generate_uid()
slices = [rng.integers(-1000, 3000, size=(3, 5)).astype(np.int16) for _ in range(4)]
def write_slice(name, pix, pos, series):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.4'
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.Modality = 'MR'
    ds.SeriesInstanceUID = series
    ds.ImageOrientationPatient = [float(v) for v in np.concatenate([row, col])]
    ds.ImagePositionPatient = [float(v) for v in pos]
    ds.PixelSpacing = [0.75, 1.25]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = pix.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pix.tobytes()
    ds.save_as(out + '/series/' + name, write_like_original=False)
for n, k in enumerate([2, 0, 3, 1]):
    write_slice('f%d' % n, slices[k], origin + normal * 2.5 * k, uid)
write_slice('other.dcm', slices[0] + 1, origin, generate_uid())
A = np.eye(4)
A[:3, 0] = row * 1.25
A[:3, 1] = col * 0.75
A[:3, 2] = normal * 2.5
A[:3, 3] = origin
vol = np.stack(slices).astype('<f8')
vol.tofile(out + '/series.f64')
series = {'path': out + '/series', 'affine': (np.diag([-1.0, -1, 1, 1]) @ A).tolist(), 'shape': list(vol.shape),
          'raw': out + '/series.f64'}
res.append({'series': series})
json.dump(res, open(out + '/expected.json', 'w'))
]==]

local function decode_json(s)
  -- the expectations are plain JSON; turn them into a Lua expression
  s = s:gsub('%[', '{'):gsub('%]', '}'):gsub('"([%w_]+)":', '["%1"]='):gsub('null', 'nil')
  return assert(loadstring('return ' .. s))()
end

describe('image dicom', function()
  scratch.python(PY, dir, '-W ignore')
  local cases = decode_json(slurp(P('expected.json')))
  local series = table.remove(cases).series

  -- Compares an image's data, put back in pydicom's order (frames, rows,
  -- columns[, 3]), with the float64 array NumPy wrote to raw.
  local function same_values(path, data, raw, rel)
    local perm = data:dim() == 4 and { 2, 1, 0, 3 } or { 2, 1, 0 }
    local got = data:permute(unpack(perm)):contiguous():to('f64')
    local bytes = slurp(raw)
    local e = ffi.cast('const double*', bytes)
    local g = ffi.cast('const double*', got:data_ptr())
    local n = got:numel()
    assert.are.equal(#bytes / 8, n, path)
    for i = 0, n - 1 do
      local tol = rel and rel * math.max(1, math.abs(e[i])) or 0
      if math.abs(g[i] - e[i]) > tol then error(string.format('%s: element %d is %.17g, pydicom %.17g', path, i, g[i], e[i])) end
    end
  end

  it('reads every test file like pydicom or refuses it clearly', function()
    local compared, colour = 0, 0
    for _, c in ipairs(cases) do
      local okr, img = pcall(image.read, c.path)
      if c.shape and not c.compressed then
        assert(okr, c.path .. ': ' .. tostring(img))
        assert.are.equal(c.dtype, img.data:dtype(), c.path)
        local s = img.data:size()
        local want = { c.shape[3], c.shape[2], c.shape[1] }
        if c.colour then want[4] = c.shape[4] end
        assert.are.same(want, s, c.path)
        same_values(c.path, img.data, c.raw, c.slope and 1e-12)
        for r = 1, 4 do
          for k = 1, 4 do
            assert(math.abs(img.affine[r][k] - c.affine[r][k]) < 1e-9,
              string.format('%s: affine[%d][%d] %g, expected %g', c.path, r, k, img.affine[r][k], c.affine[r][k]))
          end
        end
        assert.are.equal(c.syntax, img.meta.transfer_syntax)
        if c.colour then
          colour = colour + 1
          assert.are.equal(img.meta.photometric == 'RGB' and 'RGB' or 'YBR_FULL', img.meta.color_space, c.path)
          if c.rgb then
            local rgb = image.read(c.path, { rgb = true })
            assert.are.equal('RGB', rgb.meta.color_space)
            assert.are.equal('u8', rgb.data:dtype())
            same_values(c.path .. ' {rgb = true}', rgb.data, c.rgb)
          end
        end
        compared = compared + 1
      else
        assert(not okr, c.path .. ': lumen read it but pydicom gives no pixels')
        local msg = tostring(img)
        assert(msg:find('lumen.image.read: ', 1, true), msg)
        assert(msg:find(c.path, 1, true), msg)
        if c.compressed then assert(msg:find(c.syntax, 1, true), c.path .. ': ' .. msg) end
      end
    end
    assert(compared >= 50, 'only ' .. compared .. ' files compared')
    -- pydicom's uncompressed colour files (4, one big endian planar) and the 9 written here
    assert(colour >= 13, 'only ' .. colour .. ' colour files compared')
  end)

  it('reads a series folder in slice order, with its affine', function()
    local img = image.read(series.path)
    assert.are.same({ 5, 3, 4 }, img.data:size())
    assert.are.equal('i32', img.data:dtype())
    local got = img.data:permute(2, 1, 0):contiguous():to('f64')
    local raw = slurp(series.raw)
    local e, g = ffi.cast('const double*', raw), ffi.cast('const double*', got:data_ptr())
    for i = 0, got:numel() - 1 do assert.are.equal(e[i], g[i]) end
    for r = 1, 4 do
      for k = 1, 4 do
        assert(math.abs(img.affine[r][k] - series.affine[r][k]) < 1e-9,
          string.format('affine[%d][%d] %g, expected %g', r, k, img.affine[r][k], series.affine[r][k]))
      end
    end
    assert.are.equal(4, #img.meta.files)
    -- a trailing slash reads the same folder
    assert.are.same(img.affine, image.read(series.path .. '/').affine)
  end)

  it('refuses bad input clearly', function()
    local src = slurp('/usr/lib/python3/dist-packages/pydicom/data/test_files/MR_small.dcm')
    write_all(P('trunc.dcm'), src:sub(1, 2000))
    local okr, err = pcall(image.read, P('trunc.dcm'))
    assert.is_false(okr)
    assert.matches("lumen.image.read: '.-trunc.dcm': element %(7FE0,0010%).- says 8192 bytes", err)
    write_all(P('text.dcm'), 'hello, this is not a DICOM file at all\n')
    okr, err = pcall(image.read, P('text.dcm'))
    assert.is_false(okr)
    assert.matches("lumen.image.read: '.-text.dcm': not a DICOM file", err)
    -- Rows patched to 4096: the pixel data is far too short for it
    local rows = src:find('\40\0\16\0US\2\0', 1, true)
    assert(rows)
    write_all(P('rows.dcm'), src:sub(1, rows + 7) .. '\0\16' .. src:sub(rows + 10))
    okr, err = pcall(image.read, P('rows.dcm'))
    assert.is_false(okr)
    assert.matches("lumen.image.read: '.-rows.dcm': header says 64x4096 pixels", err)
    -- colour: photometric interpretations lumen does not read, a typo in the options
    okr, err = pcall(image.read, P('colour/hsv.dcm'))
    assert.is_false(okr)
    assert.matches("lumen.image.read: '.-hsv.dcm': SamplesPerPixel is 3 with PhotometricInterpretation HSV: expected one of RGB, YBR_FULL, YBR_FULL_422", err)
    okr, err = pcall(image.read, P('colour/ybr422_planar.dcm'))
    assert.is_false(okr)
    assert.matches("lumen.image.read: '.-ybr422_planar.dcm': YBR_FULL_422 with PlanarConfiguration 1", err)
    okr, err = pcall(image.read, P('colour/rgb8_il.dcm'), { rbg = true })
    assert.is_false(okr)
    assert.matches("lumen.image.read: unknown option 'rbg' %(expected rgb%)", err)
    assert.matches('image_dicom_spec.lua', err) -- blames the caller's line
  end)
end)
