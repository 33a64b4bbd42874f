-- DICOM: every file of pydicom's and nibabel's test data is read and
-- compared with pydicom (pixel_array, then apply_modality_lut), or must
-- fail with a clear lumen.image.read error naming the file (and, for
-- compressed pixel data, the transfer syntax). Geometry: the RAS affine
-- NumPy builds from the tags.
local ffi = require 'ffi'
local image = require 'lumen.image'

local scratch = require 'helpers.scratch'
local dir, P = scratch.dir()
local slurp, write_all = scratch.read, scratch.write

local PY = [==[
import sys, os, glob, json
import numpy as np
import pydicom
from pydicom.pixel_data_handlers.util import apply_modality_lut
out = sys.argv[1]
roots = ['/usr/lib/python3/dist-packages/pydicom/data/test_files']
files = sorted(p for r in roots for p in glob.glob(r + '/**/*', recursive=True) if os.path.isfile(p))
files += sorted(glob.glob('/usr/lib/python3/dist-packages/nibabel/nicom/tests/data/*.dcm'))
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
    if ds.get('SamplesPerPixel', 1) != 1:
        r['colour'] = True
        continue
    r['dtype'] = lumen_dtype.get(arr.dtype.name, arr.dtype.name)
    arr = apply_modality_lut(arr, ds)
    if arr.dtype == np.float64: r['dtype'] = 'f64'
    if arr.ndim == 2: arr = arr[None]
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
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
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

  it('reads every test file like pydicom or refuses it clearly', function()
    local compared = 0
    for _, c in ipairs(cases) do
      local okr, img = pcall(image.read, c.path)
      if c.shape and not c.compressed then
        assert(okr, c.path .. ': ' .. tostring(img))
        assert.are.equal(c.dtype, img.data:dtype(), c.path)
        local s = img.data:size()
        assert.are.same({ c.shape[3], c.shape[2], c.shape[1] }, s, c.path)
        local got = img.data:permute(2, 1, 0):contiguous():to('f64')
        local raw = slurp(c.raw)
        local e = ffi.cast('const double*', raw)
        local g = ffi.cast('const double*', got:data_ptr())
        local n = got:numel()
        assert.are.equal(#raw / 8, n)
        for i = 0, n - 1 do
          local tol = c.slope and 1e-12 * math.max(1, math.abs(e[i])) or 0
          if math.abs(g[i] - e[i]) > tol then error(string.format('%s: element %d is %.17g, pydicom %.17g', c.path, i, g[i], e[i])) end
        end
        for r = 1, 4 do
          for k = 1, 4 do
            assert(math.abs(img.affine[r][k] - c.affine[r][k]) < 1e-9,
              string.format('%s: affine[%d][%d] %g, expected %g', c.path, r, k, img.affine[r][k], c.affine[r][k]))
          end
        end
        assert.are.equal(c.syntax, img.meta.transfer_syntax)
        compared = compared + 1
      else
        assert(not okr, c.path .. ': lumen read it but pydicom gives no greyscale pixels')
        local msg = tostring(img)
        assert(msg:find('lumen.image.read: ', 1, true), msg)
        assert(msg:find(c.path, 1, true), msg)
        if c.compressed then assert(msg:find(c.syntax, 1, true), c.path .. ': ' .. msg) end
      end
    end
    assert(compared >= 40, 'only ' .. compared .. ' files compared')
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
  end)
end)
