-- PNG images: round trips through lumen, real PNG files decoded by an
-- independent pure-Python decoder, files written by Python's zlib+struct,
-- and corrupt files.
local lumen = require 'lumen'
local image = require 'lumen.image'
local ffi = require 'ffi'

local scratch = require 'helpers.scratch'
local dir, P = scratch.dir()
local read_all, write_all = scratch.read, scratch.write
local function run_python(script) return scratch.python(script, dir) end

-- Same shape, dtype and bytes (compared through ffi, not lumen's ops).
local function assert_same(a, e, what)
  assert.are.same(e:size(), a:size(), what)
  assert.are.equal(e:dtype(), a:dtype(), what)
  a, e = a:contiguous(), e:contiguous()
  local n = a:numel() * (a:dtype() == 'u8' and 1 or a:dtype() == 'i32' and 4 or 8)
  local pa, pe = ffi.cast('uint8_t*', a:data_ptr()), ffi.cast('uint8_t*', e:data_ptr())
  for i = 0, n - 1 do
    if pa[i] ~= pe[i] then error(string.format('%s: byte %d differs: %d, expected %d', what, i, pa[i], pe[i]), 2) end
  end
end

-- The rows of an image's data (H x W [x C]): the file's own layout.
local function rows_of(img)
  local d = img.data
  return d:dim() == 2 and d:permute(1, 0) or d:permute(1, 0, 2)
end

-- Python: writes PNG files with zlib+struct from known arrays (saved as
-- .npy), and decodes real PNG files with its own minimal decoder (8/16-bit,
-- non-interlaced, all five row filters, palettes expanded to RGB).
local PY = [==[
import sys, os, struct, zlib, glob
import numpy as np
out = sys.argv[1]

def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)

def write_png(path, rows, depth, ctype, plte=None, filt=0):
    h, w = rows.shape[:2]
    raw = b''
    for y in range(h):
        r = rows[y].astype('>u2' if depth == 16 else 'u1').tobytes()
        if filt == 1:   # Sub, to check that libpng undoes a filter we applied
            bpp = (2 if depth == 16 else 1) * (1 if rows.ndim == 2 else rows.shape[2])
            r = bytes((r[i] - (r[i - bpp] if i >= bpp else 0)) & 255 for i in range(len(r)))
        raw += bytes([filt]) + r
    ihdr = struct.pack('>IIBBBBB', w, h, depth, ctype, 0, 0, 0)
    data = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr)
    if plte is not None:
        data += chunk(b'PLTE', plte.astype('u1').tobytes())
    data += chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')
    open(path, 'wb').write(data)

rng = np.random.default_rng(7)
g16 = rng.integers(0, 65536, (5, 7)).astype(np.int32)
write_png(out + '/g16.png', g16, 16, 0); np.save(out + '/g16.npy', g16)
rgb16 = rng.integers(0, 65536, (4, 3, 3)).astype(np.int32)
write_png(out + '/rgb16.png', rgb16, 16, 2, filt=1); np.save(out + '/rgb16.npy', rgb16)
ga8 = rng.integers(0, 256, (6, 5, 2)).astype(np.uint8)
write_png(out + '/ga8.png', ga8, 8, 4, filt=1); np.save(out + '/ga8.npy', ga8)
pal = rng.integers(0, 256, (4, 3))
idx = rng.integers(0, 4, (3, 5))
write_png(out + '/pal.png', idx, 8, 3, plte=pal); np.save(out + '/pal.npy', pal[idx].astype(np.uint8))

# Adam7 interlacing: seven passes over sub-grids, each with its own rows
def write_interlaced(path, rows, depth, ctype):
    h, w = rows.shape[:2]
    raw = b''
    for y0, x0, dy, dx in ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)):
        sub = rows[y0::dy, x0::dx]
        if sub.size == 0: continue
        for r in sub: raw += b'\0' + r.astype('>u2' if depth == 16 else 'u1').tobytes()
    data = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, ctype, 0, 0, 1))
            + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
    open(path, 'wb').write(data)
il8 = rng.integers(0, 256, (11, 9, 3)).astype(np.uint8)
write_interlaced(out + '/il8.png', il8, 8, 2); np.save(out + '/il8.npy', il8)
il16 = rng.integers(0, 65536, (10, 13)).astype(np.int32)
write_interlaced(out + '/il16.png', il16, 16, 0); np.save(out + '/il16.npy', il16)

# 1-, 2- and 4-bit grey: packed high bits first, rows padded to a byte;
# read as 8-bit with the levels spread over 0..255 (v * 255 / (2^bits - 1))
for bits in (1, 2, 4):
    g = rng.integers(0, 2 ** bits, (5, 11))
    raw = b''
    for r in g:
        acc = ''.join(format(int(v), '0%db' % bits) for v in r)
        acc += '0' * (-len(acc) % 8)
        raw += b'\0' + bytes(int(acc[i:i + 8], 2) for i in range(0, len(acc), 8))
    open('%s/g%d.png' % (out, bits), 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 11, 5, bits, 0, 0, 0, 0))
        + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
    np.save('%s/g%d.npy' % (out, bits), (g * 255 // (2 ** bits - 1)).astype(np.uint8))

# a header promising 60000 x 60000 RGB pixels over a few bytes of data
open(out + '/huge.png', 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 60000, 60000, 8, 2, 0, 0, 0))
    + chunk(b'IDAT', zlib.compress(b'\0' * 1000)) + chunk(b'IEND', b''))

def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)

def decode(path):
    b = open(path, 'rb').read()
    assert b[:8] == b'\x89PNG\r\n\x1a\n'
    p, idat, plte = 8, b'', None
    while p < len(b):
        n, = struct.unpack('>I', b[p:p + 4]); kind = b[p + 4:p + 8]; data = b[p + 8:p + 8 + n]; p += 12 + n
        if kind == b'IHDR': w, h, depth, ctype, _, _, inter = struct.unpack('>IIBBBBB', data)
        elif kind == b'PLTE': plte = np.frombuffer(data, np.uint8).reshape(-1, 3)
        elif kind == b'IDAT': idat += data
    assert depth in (8, 16) and inter == 0
    ch = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    bpp = ch * depth // 8
    stride = w * bpp
    raw = zlib.decompress(idat)
    prev = bytearray(stride)
    rows = []
    for y in range(h):
        f = raw[y * (stride + 1)]
        cur = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            up = prev[i]; c = prev[i - bpp] if i >= bpp else 0
            pred = [0, a, up, (a + up) // 2, paeth(a, up, c)][f]
            cur[i] = (cur[i] + pred) & 255
        rows.append(bytes(cur)); prev = cur
    arr = np.frombuffer(b''.join(rows), '>u2' if depth == 16 else np.uint8).reshape(h, w, ch)
    if ctype == 3: arr = plte[arr[..., 0]]
    if arr.shape[2] == 1: arr = arr[..., 0]
    return arr.astype(np.int32 if depth == 16 else np.uint8)

real = sorted(glob.glob('/usr/lib/python3/dist-packages/**/*.png', recursive=True))
real = [f for f in real if os.path.getsize(f) < 40000][:3]
if os.path.exists('/usr/share/gitweb/static/git-logo.png'): real.append('/usr/share/gitweb/static/git-logo.png')
for i, f in enumerate(real):
    np.save('%s/real%d.npy' % (out, i), decode(f))
    print(f)
]==]

describe('image png', function()
  local real
  teardown(function() os.execute('rm -rf ' .. dir) end)
  setup(function()
    real = {}
    for line in run_python(PY):gmatch('[^\n]+') do real[#real + 1] = line end
  end)

  it('round-trips 8- and 16-bit grey, grey+alpha, RGB and RGBA', function()
    local cases = {
      { lumen.randint(0, 256, { 7, 5 }):to('u8'), 'u8' },
      { lumen.randint(0, 256, { 4, 6, 3 }):to('u8'), 'u8' },
      { lumen.randint(0, 256, { 3, 2, 4 }):to('u8'), 'u8' },
      { lumen.randint(0, 256, { 3, 3, 2 }):to('u8'), 'u8' },
      { lumen.randint(0, 65536, { 6, 4 }):to('i32'), 'i32' },
      { lumen.randint(0, 65536, { 5, 3, 3 }), 'i32' },   -- i64 written as 16-bit, read as i32
      { lumen.randint(0, 65536, { 2, 5, 4 }):to('i32'), 'i32' },
    }
    for n, c in ipairs(cases) do
      local path = P('rt' .. n .. '.png')
      image.new(c[1]):write(path)
      local img = image.read(path)
      assert_same(img.data, c[1]:to(c[2]), 'case ' .. n)
      assert.are.same({ 1, 1, 1 }, img:spacing())
      assert.are.equal(c[2] == 'u8' and 'uint8' or 'uint16', img.meta.file_dtype)
      -- the file itself: width = size of dim 0 (x), height = dim 1 (y)
      local s = read_all(path)
      local w = s:byte(17) * 2 ^ 24 + s:byte(18) * 2 ^ 16 + s:byte(19) * 256 + s:byte(20)
      local h = s:byte(21) * 2 ^ 24 + s:byte(22) * 2 ^ 16 + s:byte(23) * 256 + s:byte(24)
      assert.are.same({ c[1]:size()[1], c[1]:size()[2] }, { w, h })
    end
    -- a single channel last dim writes grey, which reads back as 2-D
    local t = lumen.randint(0, 256, { 3, 4, 1 }):to('u8')
    image.new(t):write(P('c1.png'))
    assert_same(image.read(P('c1.png')).data, t:reshape(3, 4), 'one channel')
  end)

  it('reads files written by Python (16-bit, filtered, interlaced, palettes, 1/2/4-bit grey) as Python wrote them', function()
    for _, name in ipairs { 'g16', 'rgb16', 'ga8', 'pal', 'il8', 'il16', 'g1', 'g2', 'g4' } do
      assert_same(rows_of(image.read(P(name .. '.png'))), lumen.load_npy(P(name .. '.npy')), name)
    end
  end)

  it('reads real PNG files like an independent decoder', function()
    assert.is_true(#real >= 1, 'no real PNG files found')
    for i, f in ipairs(real) do
      assert_same(rows_of(image.read(f)), lumen.load_npy(P('real' .. (i - 1) .. '.npy')), f)
    end
  end)

  it('refuses corrupt files and bad images with errors naming the file', function()
    local good = read_all(P('ga8.png'))
    local function err_of(bytes, name)
      write_all(P(name), bytes)
      local ok, e = pcall(image.read, P(name))
      assert.is_false(ok)
      return e
    end
    assert.matches("lumen.image.read: '.*/sig.png' is not a PNG file %(wrong signature%)",
      err_of('GIF89a' .. good:sub(7), 'sig.png'))
    assert.matches("lumen.image.read: '.*/short.png': the file is truncated", err_of(good:sub(1, 60), 'short.png'))
    assert.matches("lumen.image.read: '.*/tiny.png' is not a PNG file: it has only 3 bytes",
      err_of('abc', 'tiny.png'))
    -- one byte of the IHDR checksum, then of the IDAT checksum, changed
    local function flip(s, at) return s:sub(1, at - 1) .. string.char((s:byte(at) + 1) % 256) .. s:sub(at + 1) end
    assert.matches("lumen.image.read: '.*/crc1.png': IHDR: CRC error", err_of(flip(good, 30), 'crc1.png'))
    local idat = good:find('IDAT', 1, true)
    local idat_len = good:byte(idat - 2) * 256 + good:byte(idat - 1)
    assert.matches("lumen.image.read: '.*/crc2.png': IDAT: CRC error", err_of(flip(good, idat + 4 + idat_len), 'crc2.png'))
    -- a byte of the compressed data itself: zlib or the CRC catches it
    assert.matches("lumen.image.read: '.*/crc3.png': IDAT: ", err_of(flip(good, idat + 6), 'crc3.png'))
    local ok, e = pcall(image.read, P('huge.png'))
    assert.is_false(ok)
    assert.matches("lumen.image.read: '.*/huge.png': header says 60000x60000 with 3 channel%(s%) of 8 bits %(10800 MB%) but the file has only %d+ bytes", e)
    local _, e2 = pcall(image.read, P('missing.png'))
    assert.matches('lumen.image.read: cannot open .*missing.png', e2)

    local function werr(t, name)
      local ok, msg = pcall(function() image.new(t):write(P(name)) end)
      assert.is_false(ok)
      return msg
    end
    assert.matches("lumen.image.write: writing '.*/neg.png': value %-1 at element 0 is outside 0..65535",
      werr(lumen.tensor({ { -1, 2 } }, 'i32'), 'neg.png'))
    assert.matches('dtype f32, expected u8', werr(lumen.zeros(2, 2), 'f.png'))
    assert.matches('PNG holds 2%-D images', werr(lumen.zeros({ 2, 2, 2, 2 }, 'u8'), 'd4.png'))
    assert.matches('expected H x W or H x W x C with C in 1..4', werr(lumen.zeros({ 2, 2, 5 }, 'u8'), 'c5.png'))
    assert.is_nil(io.open(P('neg.png'), 'rb'))
  end)
end)
