-- MetaImage (.mha/.mhd): files written by NumPy with known values and
-- geometry (oblique directions, big-endian data, external and LIST data
-- files), lumen's own files checked by Python, round trips, bad headers.
--
-- The geometry convention is ITK's: axis i of the index has direction row i
-- of TransformMatrix and length ElementSpacing[i]; Offset is voxel 0, all in
-- LPS. The expected RAS affines are computed by NumPy from that rule.
local lumen = require 'lumen'
local image = require 'lumen.image'
local check = require 'helpers.check'

local scratch = require 'helpers.scratch'
local dir, P = scratch.dir()
local write_all = scratch.write
local function run_python(script) return scratch.python(script, dir) end

local PY = [==[
import sys, json
import numpy as np
out = sys.argv[1]
rng = np.random.default_rng(3)
results = {}

def header(fields):
    return ''.join('%s = %s\n' % kv for kv in fields).encode()

def nums(v): return ' '.join(repr(float(x)) for x in np.ravel(v))

def ras_affine(R, s, o):
    # ITK: axis i has direction R[i, :] (LPS) and length s[i]; then LPS -> RAS
    n = len(s); g = min(n, 3)
    A = np.eye(4)
    for i in range(g):
        A[:g, i] = R[i, :g] * s[i]
        A[i, 3] = o[i]
    return (np.diag([-1.0, -1, 1, 1]) @ A).tolist()

def case(name, arr_xyz, etype, file_dtype, R, s, o, msb=False, ext=None, channels=1, keys=('TransformMatrix', 'Offset'),
         header_size=None, prefix=b'', listing=0):
    # arr_xyz: index order (x, y, z[, c]); the file stores x fastest
    nd = arr_xyz.ndim - (1 if channels > 1 else 0)
    perm = list(range(nd))[::-1] + ([nd] if channels > 1 else [])
    raw = np.ascontiguousarray(arr_xyz.transpose(perm)).astype(('>' if msb else '<') + file_dtype).tobytes()
    f = [('ObjectType', 'Image'), ('NDims', nd), ('BinaryData', 'True'), ('BinaryDataByteOrderMSB', msb),
         (keys[0], nums(R)), (keys[1], nums(o)), ('ElementSpacing', nums(s)),
         ('DimSize', ' '.join(str(v) for v in arr_xyz.shape[:nd]))]
    if channels > 1: f.append(('ElementNumberOfChannels', channels))
    if header_size is not None: f.append(('HeaderSize', header_size))
    f.append(('ElementType', etype))
    if listing:
        names = ['%s_%d.raw' % (name, k) for k in range(listing)]
        step = len(raw) // listing
        for k, nm in enumerate(names): open(out + '/' + nm, 'wb').write(raw[k * step:(k + 1) * step])
        f.append(('ElementDataFile', 'LIST'))
        open(out + '/' + name + '.mhd', 'wb').write(header(f) + ''.join(n + '\n' for n in names).encode())
    elif ext:
        f.append(('ElementDataFile', name + ext))
        open(out + '/' + name + ext, 'wb').write(prefix + raw)
        open(out + '/' + name + '.mhd', 'wb').write(header(f))
    else:
        f.append(('ElementDataFile', 'LOCAL'))
        open(out + '/' + name + '.mha', 'wb').write(header(f) + raw)
    np.save(out + '/' + name + '.npy', arr_xyz)
    results[name] = ras_affine(np.asarray(R, float).reshape(nd, nd), s, o)

def rot(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))

oblique = rot(0.3, -0.2, 0.7)
case('short_be', rng.integers(-30000, 30000, (5, 4, 3)).astype(np.int32), 'MET_SHORT', 'i2', oblique,
     [0.8, 1.25, 2.5], [-12.5, 30.25, 7.0], msb=True)
case('float_hdr', rng.standard_normal((3, 4, 2)).astype(np.float32), 'MET_FLOAT', 'f4', np.eye(3)[[1, 0, 2]],
     [1.5, 2.0, 3.0], [1.0, -2.0, 3.0], ext='.raw', keys=('Orientation', 'Origin'), header_size=16, prefix=b'x' * 16)
case('double_end', rng.standard_normal((2, 3, 2)), 'MET_DOUBLE', 'f8', rot(0.1, 0.2, 0.3), [1, 1, 1], [0, 0, 0],
     ext='.img', keys=('Rotation', 'Position'), header_size=-1, prefix=b'junk' * 5, msb=True)
case('ushort_rgb', rng.integers(0, 65536, (4, 3, 3)).astype(np.int32), 'MET_USHORT', 'u2', np.array([[0, 1], [-1, 0]]),
     [0.5, 0.25], [10.0, 20.0], channels=3)
case('uchar_list', rng.integers(0, 256, (4, 3, 5)).astype(np.uint8), 'MET_UCHAR', 'u1', np.eye(3), [1, 1, 2], [0, 0, -5],
     listing=5)
case('char', rng.integers(-128, 128, (3, 2, 2)).astype(np.int32), 'MET_CHAR', 'i1', np.eye(3), [1, 1, 1], [0, 0, 0])
case('uint', rng.integers(0, 2**32, (3, 2, 2)).astype(np.int64), 'MET_UINT', 'u4', np.eye(3), [1, 1, 1], [0, 0, 0], msb=True)
case('longlong', rng.integers(-2**62, 2**62, (2, 2, 2)).astype(np.int64), 'MET_LONG_LONG', 'i8', np.eye(3), [1, 1, 1], [0, 0, 0])
case('int4d', rng.integers(-1000, 1000, (2, 3, 2, 2)).astype(np.int32), 'MET_INT', 'i4', np.eye(4), [2, 2, 2, 1], [1, 2, 3, 0])

# lumen's own files (written before this script ran): parse them here
def read_meta(path):
    b = open(path, 'rb').read()
    f = {}
    pos = 0
    while True:
        end = b.index(b'\n', pos)
        k, v = b[pos:end].decode().split(' = ', 1)
        f[k] = v
        pos = end + 1
        if k == 'ElementDataFile': break
    if f['ElementDataFile'] == 'LOCAL': data = b[pos:]
    else: data = open(out + '/' + f['ElementDataFile'], 'rb').read()
    assert f['BinaryDataByteOrderMSB'] == 'False'
    dt = {'MET_FLOAT': '<f4', 'MET_SHORT': '<i2', 'MET_INT': '<i4', 'MET_UCHAR': 'u1', 'MET_DOUBLE': '<f8'}[f['ElementType']]
    dims = [int(v) for v in f['DimSize'].split()]
    c = int(f.get('ElementNumberOfChannels', '1'))
    arr = np.frombuffer(data, dt).reshape(dims[::-1] + ([c] if c > 1 else []))
    nd = len(dims)
    arr = arr.transpose(list(range(nd))[::-1] + ([nd] if c > 1 else []))
    R = np.array([float(v) for v in f['TransformMatrix'].split()]).reshape(nd, nd)
    s = [float(v) for v in f['ElementSpacing'].split()]
    o = [float(v) for v in f['Offset'].split()]
    return arr, ras_affine(R, s, o)

for name in ('lumen_oblique.mha', 'lumen_oblique.mhd', 'lumen_rgb.mha'):
    arr, aff = read_meta(out + '/' + name)
    np.save(out + '/' + name + '.npy', np.ascontiguousarray(arr))
    results[name] = aff
print(json.dumps(results))
]==]

local oblique = { { -0.6, 0.8 * 1.5, 0, 12.5 }, { 0.8, 0.6 * 1.5, 0, -3 }, { 0, 0, -2.5, 40 }, { 0, 0, 0, 1 } }

local function assert_affine(a, e, what)
  for r = 1, 4 do
    for c = 1, 4 do
      if math.abs(a[r][c] - e[r][c]) > 1e-9 then
        error(string.format('%s: affine[%d][%d] is %.12g, expected %.12g', what, r, c, a[r][c], e[r][c]), 2)
      end
    end
  end
end

describe('image mha', function()
  local expected, vol, rgb
  teardown(function() os.execute('rm -rf ' .. dir) end)
  setup(function()
    vol = check.sine({ 4, 3, 5 }, 'f32', 1)
    image.new(vol, { affine = oblique }):write(P('lumen_oblique.mha'))
    image.new(vol, { affine = oblique }):write(P('lumen_oblique.mhd'))
    rgb = lumen.randint(0, 256, { 3, 4, 3 }):to('u8')
    image.new(rgb, { meta = { channels = 3 }, affine = { { 2, 0, 0, 1 }, { 0, 3, 0, 2 }, { 0, 0, 1, 0 }, { 0, 0, 0, 1 } } })
      :write(P('lumen_rgb.mha'))
    expected = require('lumen.json').decode(run_python(PY))
  end)

  it('reads zlib-compressed data, in a .zraw file and after a LOCAL header', function()
    run_python([[
import sys, zlib
import numpy as np
out = sys.argv[1]
a = (np.arange(4 * 3 * 2) * 7 - 50).astype('>i2')  # file order: x fastest, big-endian
z = zlib.compress(a.tobytes())
h = 'ObjectType = Image\nNDims = 3\nBinaryDataByteOrderMSB = True\nDimSize = 4 3 2\nElementType = MET_SHORT\nCompressedData = True\n'
open(out + '/zc.zraw', 'wb').write(z)
open(out + '/zc.mhd', 'w').write(h + 'CompressedDataSize = %d\nElementDataFile = zc.zraw\n' % len(z))
open(out + '/zl.mha', 'wb').write((h + 'ElementDataFile = LOCAL\n').encode() + z)
]])
    local want = (lumen.arange(24) * 7 - 50):to('i32'):reshape(2, 3, 4):permute(2, 1, 0)
    for _, name in ipairs { 'zc.mhd', 'zl.mha' } do
      local img = image.read(P(name))
      check.assert_close(img.data, want, { rtol = 0, atol = 0 }, name)
    end
  end)

  it('reads NumPy-written files: values, dtypes, channels and the RAS affine', function()
    local cases = { short_be = '.mha', float_hdr = '.mhd', double_end = '.mhd', ushort_rgb = '.mha',
      uchar_list = '.mhd', char = '.mha', uint = '.mha', longlong = '.mha', int4d = '.mha' }
    local dtypes = { short_be = 'i32', float_hdr = 'f32', double_end = 'f64', ushort_rgb = 'i32', uchar_list = 'u8',
      char = 'i32', uint = 'i64', longlong = 'i64', int4d = 'i32' }
    for name, ext in pairs(cases) do
      local img = image.read(P(name .. ext))
      check.assert_close(img.data, lumen.load_npy(P(name .. '.npy')), { rtol = 0, atol = 0 }, name)
      assert.are.equal(dtypes[name], img.data:dtype(), name)
      assert_affine(img.affine, expected[name], name)
    end
    assert.are.equal('int16', image.read(P('short_be.mha')).meta.file_dtype)
    assert.are.equal(3, image.read(P('ushort_rgb.mha')).meta.channels)
    -- the data is a view of the x-fastest buffer: stride 1 along x
    assert.are.same({ 1, 5, 20 }, image.read(P('short_be.mha')).data:stride())
  end)

  it('writes files that Python reads back with the same values and geometry', function()
    for _, name in ipairs { 'lumen_oblique.mha', 'lumen_oblique.mhd' } do
      check.assert_close(lumen.load_npy(P(name .. '.npy')), vol, { rtol = 0, atol = 0 }, name)
      assert_affine(expected[name], oblique, name)
    end
    check.assert_close(lumen.load_npy(P('lumen_rgb.mha.npy')), rgb, { rtol = 0, atol = 0 }, 'rgb')
  end)

  it('round-trips through lumen', function()
    for _, name in ipairs { 'lumen_oblique.mha', 'lumen_oblique.mhd' } do
      local img = image.read(P(name))
      check.assert_close(img.data, vol, { rtol = 0, atol = 0 }, name)
      assert_affine(img.affine, oblique, name)
    end
    local img = image.read(P('lumen_rgb.mha'))
    check.assert_close(img.data, rgb, { rtol = 0, atol = 0 }, 'rgb')
    -- written again from what was read: same values, same geometry
    img:write(P('again.mhd'))
    local again = image.read(P('again.mhd'))
    check.assert_close(again.data, rgb, { rtol = 0, atol = 0 }, 'again')
    assert_affine(again.affine, img.affine, 'again')
    local i64 = lumen.randint(-5, 5, { 2, 3 })
    image.new(i64):write(P('i64.mha'))
    check.assert_close(image.read(P('i64.mha')).data, i64, { rtol = 0, atol = 0 }, 'i64')
  end)

  it('refuses bad headers and short data with errors naming the file', function()
    local function err_of(name, text)
      write_all(P(name), text)
      local ok, e = pcall(image.read, P(name))
      assert.is_false(ok)
      return e
    end
    local base = 'ObjectType = Image\nNDims = 3\n'
    assert.matches("lumen.image.read: '.*/nodim.mha': the header has no DimSize",
      err_of('nodim.mha', base .. 'ElementType = MET_SHORT\nElementDataFile = LOCAL\n'))
    assert.matches("lumen.image.read: '.*/type.mha': ElementType MET_QUATERNION is not supported %(expected one of MET_CHAR",
      err_of('type.mha', base .. 'DimSize = 2 2 2\nElementType = MET_QUATERNION\nElementDataFile = LOCAL\n'))
    assert.matches("lumen.image.read: '.*/short.mha': header says 4x4x4 MET_SHORT %(128 bytes%) but the file has 10 bytes of data",
      err_of('short.mha', base .. 'DimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n' .. ('z'):rep(10)))
    assert.matches("lumen.image.read: '.*/absurd.mha': header says 10000x10000x10000 MET_DOUBLE .* but the file has 0 bytes",
      err_of('absurd.mha', base .. 'DimSize = 10000 10000 10000\nElementType = MET_DOUBLE\nElementDataFile = LOCAL\n'))
    assert.matches("impossibly large",
      err_of('huge.mha', base .. 'DimSize = 1e9 1e9 1e9\nElementType = MET_DOUBLE\nElementDataFile = LOCAL\n'))
    assert.matches("lumen.image.read: '.*/ndim.mha': DimSize has 2 values but NDims is 3",
      err_of('ndim.mha', base .. 'DimSize = 2 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n'))
    assert.matches("lumen.image.read: '.*/neg.mha': DimSize %(2 %-2 2%) must be positive integers",
      err_of('neg.mha', base .. 'DimSize = 2 -2 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n'))
    assert.matches("lumen.image.read: '.*/z.mha': compressed data: ",
      err_of('z.mha', base .. 'CompressedData = True\nDimSize = 2 2 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\nnot zlib'))
    assert.matches("lumen.image.read: '.*/noend.mha': the header has no ElementDataFile line",
      err_of('noend.mha', base .. 'DimSize = 2 2 2\nElementType = MET_UCHAR\n'))
    assert.matches("lumen.image.read: '.*/garbage.mha': header line 1 is not \"Key = Value\"",
      err_of('garbage.mha', '\0\1\2binary junk\n'))
    assert.matches("lumen.image.read: '.*/ext.mhd': data file: cannot open .*nofile.raw",
      err_of('ext.mhd', base .. 'DimSize = 2 2 2\nElementType = MET_UCHAR\nElementDataFile = nofile.raw\n'))
    assert.matches("TransformMatrix has 4 values, expected 9",
      err_of('tm.mha', base .. 'TransformMatrix = 1 0 0 1\nDimSize = 1 1 1\nElementType = MET_UCHAR\nElementDataFile = LOCAL\nx'))
  end)
end)
