-- Saving and loading: safetensors and .npy round trips, files exchanged with
-- NumPy and an independent Python safetensors reader, corrupt files, and
-- atomic writes that fail.
local lumen = require 'lumen'
local check = require 'helpers.check'
local json = require 'lumen.json'
local ffi = require 'ffi'
local C = lumen.core.C

local python = os.getenv('LUMEN_PYTHON') or '/usr/bin/python3'

local dir = os.tmpname()
os.remove(dir)
assert(os.execute('mkdir -p ' .. dir) == 0)
local function P(name) return dir .. '/' .. name end

local function read_all(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end
local function write_all(path, s)
  local f = assert(io.open(path, 'wb'))
  f:write(s)
  f:close()
end
local function exists(path)
  local f = io.open(path, 'rb')
  if f then f:close() end
  return f ~= nil
end
local function list_dir(d)
  local p = io.popen('ls -A ' .. d)
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end
-- Runs a Python script; returns its stdout (errors when Python fails).
local function run_python(script, arg)
  local file = P('script.py')
  write_all(file, script)
  local p = io.popen(string.format('%s %s %s 2>&1', python, file, arg or ''))
  local out = p:read('*a')
  local ok = p:close()
  assert(ok == true or ok == 0, 'python failed:\n' .. out)
  return out
end
-- Raw little-endian C-order bytes of t, read through ffi (not lumen.io).
local function raw_bytes(t)
  local c = t:contiguous()
  return ffi.string(c:data_ptr(), c:numel() * C.lm_dtype_size(lumen.core.dtypes[c:dtype()]))
end
local function from_raw(s, dtype, shape)
  local t = lumen.empty(shape, dtype)
  if #s > 0 then ffi.copy(t:data_ptr(), s, #s) end
  return t
end
local function same(a, e, what)
  assert.are.same(e:size(), a:size(), what)
  assert.are.equal(e:dtype(), a:dtype(), what)
  assert.are.equal(raw_bytes(e), raw_bytes(a), what)
  check.assert_close(a, e, { rtol = 0, atol = 0 }, what)
end
local function u64le(n)
  local b = {}
  for i = 1, 8 do b[i] = string.char(n % 256); n = math.floor(n / 256) end
  return table.concat(b)
end

-- Inputs of every dtype, built from Lua values: specials for floats,
-- extremes for integers, then views of them.
local function inputs()
  local f = { 0, -0.0, 1.5, -2.25, 1e30, -1e-30, 1 / 0, -1 / 0, 0 / 0, 3.0e-39, 123456.789, 7 }
  local i32 = { 0, 1, -1, 2147483647, -2147483648, 42, -7, 100000, 3, 5, 8, 13 }
  local i64 = { 0, 1, -1, 2 ^ 53, -(2 ^ 53), 2 ^ 40 + 3, -7, 100000, 3, 5, 8, 13 }
  local u8 = { 0, 1, 255, 128, 127, 42, 7, 9, 3, 5, 8, 13 }
  local b = { true, false, true, true, false, false, true, false, true, true, true, false }
  local base = {
    f32 = lumen.tensor(f, 'f32'):reshape(3, 4),
    f64 = lumen.tensor(f, 'f64'):reshape(3, 4),
    i32 = lumen.tensor(i32, 'i32'):reshape(3, 4),
    i64 = lumen.tensor(i64, 'i64'):reshape(3, 4),
    u8 = lumen.tensor(u8, 'u8'):reshape(3, 4),
    bool = lumen.tensor(b, 'bool'):reshape(3, 4),
  }
  local ts = {}
  for dt, x in pairs(base) do
    ts[dt] = x
    ts[dt .. '_t'] = x:transpose(0, 1)                             -- transposed
    ts[dt .. '_step'] = x:slice(1, 0, 4, 3)                         -- stepped slice
    ts[dt .. '_exp'] = x[{ {}, { 1, 2 } }]:expand(3, 5)             -- expanded
    ts[dt .. '_0d'] = x:select(0, 1):select(0, 2)                   -- 0-d
    ts[dt .. '_empty'] = x:slice(0, 1, 1)                           -- 0x4
    ts[dt .. '_3d'] = x:reshape(2, 3, 2):permute(2, 0, 1)           -- 3-D view
  end
  return ts
end
local T = inputs()
local names = {}
for k in pairs(T) do names[#names + 1] = k end
table.sort(names)

describe('io', function()
  teardown(function() os.execute('rm -rf ' .. dir) end)

  describe('safetensors round trip', function()
    local path = P('all.safetensors')
    lumen.save(path, T, { format = 'pt', note = 'all dtypes "quoted" \n newline' })
    local back, meta = lumen.load(path)
    for _, name in ipairs(names) do
      it(name, function()
        assert.is_not_nil(back[name], name)
        same(back[name], T[name], name)
        assert.is_true(back[name]:is_contiguous())
      end)
    end
    it('keeps the metadata and no extra tensors', function()
      assert.are.same({ format = 'pt', note = 'all dtypes "quoted" \n newline' }, meta)
      local n = 0
      for _ in pairs(back) do n = n + 1 end
      assert.are.equal(#names, n)
    end)
    it('saves one tensor as "tensor", with no metadata', function()
      local p = P('one.safetensors')
      T.f64_t:save(p)
      local r, m = lumen.load(p)
      same(r.tensor, T.f64_t)
      assert.are.same({}, m)
      lumen.save(p, T.i32_step, { step = 3 })
      r, m = lumen.load(p)
      same(r.tensor, T.i32_step)
      assert.are.same({ step = '3' }, m)
    end)
    it('saves an empty table of tensors', function()
      local p = P('none.safetensors')
      lumen.save(p, {})
      local r, m = lumen.load(p)
      assert.are.same({}, r)
      assert.are.same({}, m)
    end)
    it('reads bool bytes other than 0 and 1 as true', function()
      local h = '{"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}}'
      h = h .. string.rep(' ', (8 - #h % 8) % 8)
      write_all(P('bool.safetensors'), u64le(#h) .. h .. '\0\2\255')
      local b = lumen.load(P('bool.safetensors')).b
      assert.are.same({ false, true, true }, b:totable())
      assert.are.equal('\0\1\1', raw_bytes(b))
    end)
  end)

  describe('npy round trip', function()
    for _, name in ipairs(names) do
      it(name, function()
        local p = P('rt_' .. name .. '.npy')
        lumen.save_npy(p, T[name])
        same(lumen.load_npy(p), T[name], name)
      end)
    end
    it('t:save_npy', function()
      T.u8_3d:save_npy(P('m.npy'))
      same(lumen.load_npy(P('m.npy')), T.u8_3d)
    end)
  end)

  describe('files written by NumPy', function()
    -- Python writes each array as .npy and as raw little-endian C-order
    -- bytes; lumen.load_npy must match the raw bytes.
    local out = run_python([==[
import json, sys
import numpy as np
d = sys.argv[1]
base = np.arange(-12, 12).reshape(2, 3, 4)
cases = {
  'f4': base.astype('<f4') / 3, 'f8': base.astype('<f8') / 7, 'i4': base.astype('<i4') * 1000003,
  'i8': base.astype('<i8') * (2**40 + 1), 'u1': (base * 11).astype('|u1'), 'b1': (base % 3 == 0),
  'f4_be': (base / 3).astype('>f4'), 'f8_be': (base / 7).astype('>f8'), 'i4_be': (base * -99991).astype('>i4'),
  'i8_be': (base * -(2**41 + 5)).astype('>i8'),
  'f8_fortran': np.asfortranarray(base.astype('<f8') * 0.5),
  'i4_fortran2d': np.asfortranarray(base.reshape(6, 4).astype('<i4')),
  'f4_be_fortran': np.asfortranarray((base + 0.25).astype('>f4')),
  'f4_0d': np.array(2.5, dtype='<f4'), 'i8_0d': np.array(-(2**50), dtype='<i8'),
  'f4_empty': np.zeros((0, 3), dtype='<f4'), 'b1_1d': np.array([True, False, True]),
  'f8_v2': base.astype('<f8') - 0.125, 'i4_v3': base.astype('<i4'),
  'f4_1d_fortran': np.asfortranarray(np.arange(5, dtype='<f4')),
}
names = {'f4': 'f32', 'f8': 'f64', 'i4': 'i32', 'i8': 'i64', 'u1': 'u8', 'b1': 'bool'}
manifest = {}
for name, a in cases.items():
  path = d + '/np_' + name + '.npy'
  if name.endswith('_v2'):
    with open(path, 'wb') as f: np.lib.format.write_array(f, a, version=(2, 0))
  elif name.endswith('_v3'):
    with open(path, 'wb') as f: np.lib.format.write_array(f, a, version=(3, 0))
  else:
    np.save(path, a)
  raw = np.ascontiguousarray(a.astype(a.dtype.newbyteorder('<'))).tobytes()
  with open(d + '/np_' + name + '.raw', 'wb') as f: f.write(raw)
  with open(path, 'rb') as f: head = f.read(128)
  manifest[name] = {'dtype': names[a.dtype.str[1:]], 'shape': list(a.shape),
                    'version': head[6], 'fortran': b"'fortran_order': True" in head,
                    'big_endian': b"'descr': '>" in head}
print(json.dumps(manifest))
]==], dir)
    local manifest = json.decode(out)
    local cnames = {}
    for k in pairs(manifest) do cnames[#cnames + 1] = k end
    table.sort(cnames)
    it('covers versions 1, 2 and 3 and Fortran order', function()
      assert.are.equal(2, manifest.f8_v2.version)
      assert.are.equal(3, manifest.i4_v3.version)
      assert.are.equal(1, manifest.f4.version)
      assert.is_true(manifest.f8_fortran.fortran)
      assert.is_true(manifest.f4_be_fortran.fortran)
      for _, k in ipairs { 'f4_be', 'f8_be', 'i4_be', 'i8_be', 'f4_be_fortran' } do
        assert.is_true(manifest[k].big_endian, k)
      end
      assert.is_false(manifest.f4.big_endian)
      assert.are.equal(20, #cnames)
    end)
    for _, name in ipairs(cnames) do
      it(name, function()
        local m = manifest[name]
        local expected = from_raw(read_all(P('np_' .. name .. '.raw')), m.dtype, m.shape)
        local got = lumen.load_npy(P('np_' .. name .. '.npy'))
        same(got, expected, name)
        assert.is_true(got:is_contiguous())
      end)
    end
    it("accepts '<u1' for uint8", function()
      local s = read_all(P('np_u1.npy'))
      local patched = s:gsub("'|u1'", "'<u1'", 1)
      assert.are_not.equal(s, patched)
      write_all(P('u1_lt.npy'), patched)
      same(lumen.load_npy(P('u1_lt.npy')), lumen.load_npy(P('np_u1.npy')))
    end)
  end)

  describe('files read by NumPy and an independent safetensors reader', function()
    local manifest = {}
    for _, name in ipairs(names) do
      lumen.save_npy(P('lm_' .. name .. '.npy'), T[name])
      write_all(P('lm_' .. name .. '.raw'), raw_bytes(T[name]))
      manifest[name] = { dtype = T[name]:dtype(), shape = json.array(T[name]:size()) }
    end
    local meta = { framework = 'lumen', ['unicode é'] = 'ünï', empty = '' }
    lumen.save(P('lm_all.safetensors'), T, meta)
    write_all(P('lm_manifest.json'), json.encode({ tensors = manifest, metadata = meta }))
    local out = run_python([==[
import json, struct, sys
import numpy as np
d = sys.argv[1]
m = json.load(open(d + '/lm_manifest.json'))
npdt = {'f32': '<f4', 'f64': '<f8', 'i32': '<i4', 'i64': '<i8', 'u8': '|u1', 'bool': '|b1'}
stdt = {'F32': '<f4', 'F64': '<f8', 'I32': '<i4', 'I64': '<i8', 'U8': '|u1', 'BOOL': '|b1'}
def expected(name):
  e = m['tensors'][name]
  raw = open(d + '/lm_' + name + '.raw', 'rb').read()
  return np.frombuffer(raw, dtype=npdt[e['dtype']]).reshape(e['shape'])
def same(a, e):
  if a.dtype != e.dtype: return 'dtype %s, expected %s' % (a.dtype, e.dtype)
  if a.shape != e.shape: return 'shape %s, expected %s' % (a.shape, e.shape)
  if a.tobytes() != e.tobytes(): return 'values differ'
  return None
results = {}
for name in m['tensors']:
  path = d + '/lm_' + name + '.npy'
  head = open(path, 'rb').read(10)
  hlen = struct.unpack('<H', head[8:10])[0]
  problem = None
  if head[:8] != b'\x93NUMPY\x01\x00': problem = 'not version 1.0'
  elif (10 + hlen) % 64 != 0: problem = 'header not padded to 64'
  else: problem = same(np.load(path), expected(name))
  results['npy ' + name] = problem or 'ok'
# safetensors, read with struct + json + numpy only
blob = open(d + '/lm_all.safetensors', 'rb').read()
n = struct.unpack('<Q', blob[:8])[0]
header = json.loads(blob[8:8 + n].decode('utf-8'))
data = blob[8 + n:]
results['st header padded'] = 'ok' if n % 8 == 0 and blob[8 + n - 1:8 + n] in (b' ', b'}') else 'header length %d' % n
results['st metadata'] = 'ok' if header.pop('__metadata__', None) == m['metadata'] else 'metadata differs'
spans = sorted(tuple(v['data_offsets']) for v in header.values())
pos, problem = 0, None
for b, e in spans:
  if b != pos: problem = 'gap or overlap at %d' % b
  pos = e
if pos != len(data): problem = 'data ends at %d, file has %d' % (pos, len(data))
results['st data layout'] = problem or 'ok'
for name, v in header.items():
  b, e = v['data_offsets']
  a = np.frombuffer(data[b:e], dtype=stdt[v['dtype']]).reshape(v['shape'])
  if b % a.dtype.itemsize != 0: results['st ' + name] = 'misaligned'; continue
  results['st ' + name] = same(a, expected(name)) or 'ok'
print(json.dumps(results))
]==], dir)
    local results = json.decode(out)
    local keys = {}
    for k in pairs(results) do keys[#keys + 1] = k end
    table.sort(keys)
    it('checks every tensor both ways', function()
      assert.are.equal(2 * #names + 3, #keys)
    end)
    for _, k in ipairs(keys) do
      it(k, function() assert.are.equal('ok', results[k], k) end)
    end
  end)

  describe('corrupt safetensors files', function()
    local good = P('good.safetensors')
    lumen.save(good, { a = T.f32, b = T.i64_3d, c = T.u8_0d }, { k = 'v' })
    local bytes = read_all(good)
    local hlen = 0
    for i = 8, 1, -1 do hlen = hlen * 256 + bytes:byte(i) end
    local bad = P('bad.safetensors')
    local function load_err(content)
      write_all(bad, content)
      local ok, err = pcall(lumen.load, bad)
      assert.is_false(ok, 'a corrupt file loaded')
      return err
    end
    local function expect(content, msg)
      local err = load_err(content)
      assert.are.equal('lumen.load: ' .. bad .. ': ' .. msg, err)
    end
    local function st(header, data)
      header = header .. string.rep(' ', (8 - #header % 8) % 8)
      return u64le(#header) .. header .. (data or '')
    end

    it('refuses files cut at any point', function()
      local cuts = { 0, 1, 7, 8, 9, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1, #bytes - 1 }
      for k = 8 + hlen + 2, #bytes - 2, 7 do cuts[#cuts + 1] = k end
      for _, cut in ipairs(cuts) do
        local err = load_err(bytes:sub(1, cut))
        assert.are.equal('lumen.load: ' .. bad .. ': ', err:sub(1, #bad + 14), err)
      end
      expect(bytes:sub(1, 5), 'file has 5 bytes, too short for a safetensors file (at least 8)')
      expect(bytes:sub(1, 8 + hlen - 1),
        string.format('header length %d runs past the end of the file (%d bytes)', hlen, 8 + hlen - 1))
    end)
    it('refuses a header length of 2^60', function()
      expect(u64le(2 ^ 60) .. bytes:sub(9),
        string.format('header length 1152921504606846976 runs past the end of the file (%d bytes)', #bytes))
      expect('\255\255\255\255\255\255\255\255' .. bytes:sub(9),
        string.format('header length 18446744073709551615 runs past the end of the file (%d bytes)', #bytes))
      -- a sparse 200 MB file: the length fits, but no real header is that big
      write_all(bad, u64le(150 * 2 ^ 20) .. '{')
      os.execute('truncate -s 200M ' .. bad)
      local ok, err = pcall(lumen.load, bad)
      assert.are.equal('lumen.load: ' .. bad .. ': header length 157286400 is over the 104857600 byte limit', err)
      os.remove(bad)
    end)
    it('never crashes on flipped header bytes', function()
      local loaded, failed = 0, 0
      for pos = 1, 8 + hlen do
        for _, mask in ipairs { 0x01, 0x20, 0xff } do
          local b = bytes:byte(pos)
          local flipped = bytes:sub(1, pos - 1) .. string.char(bit.bxor(b, mask)) .. bytes:sub(pos + 1)
          write_all(bad, flipped)
          local ok, err = pcall(lumen.load, bad)
          if ok then
            loaded = loaded + 1
          else
            failed = failed + 1
            assert.are.equal('lumen.load: ' .. bad, err:sub(1, #bad + 12), err)
          end
        end
      end
      assert.is_true(failed > 2 * (8 + hlen), 'most flips should be caught: ' .. failed)
    end)
    it('explains what is wrong with the header', function()
      expect(st('{"a":'), 'header is not valid JSON (json.decode: unexpected character at byte 9)')
      expect(st('[1, 2]'), 'header is a JSON array, expected an object')
      expect(st('"x"'), 'header is a JSON string, expected an object')
      expect(st('{"a": 3}'), "entry 'a' is not an object")
      expect(st('{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}', '\0\0'),
        "tensor 'a' has unsupported dtype 'F16' (lumen reads F32, F64, I32, I64, U8 and BOOL)")
      expect(st('{"a":{"shape":[1],"data_offsets":[0,2]}}', '\0\0'),
        "tensor 'a' has unsupported dtype nil (lumen reads F32, F64, I32, I64, U8 and BOOL)")
      expect(st('{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}', '\0'),
        "tensor 'a' has shape entry -1, expected a non-negative integer")
      expect(st('{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}', '\0'),
        "tensor 'a' has shape entry 1.5, expected a non-negative integer")
      expect(st('{"a":{"dtype":"U8","shape":{"x":1},"data_offsets":[0,1]}}', '\0'), "tensor 'a' has no shape list")
      expect(st('{"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}', '\0'),
        "tensor 'a' has 9 dimensions, lumen supports at most 8")
      expect(st('{"a":{"dtype":"U8","shape":[1048576,1048576,1048576,0],"data_offsets":[0,0]}}'),
        'shape (1048576, 1048576, 1048576, 0) is impossibly large')
      expect(st('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0]}}', '\0\0'),
        "tensor 'a' has bad data_offsets (expected [begin, end] of non-negative integers)")
      expect(st('{"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}', '\0\0'),
        "tensor 'a' has data_offsets [1, 3] outside the 2 data bytes")
      expect(st('{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,0]}}', '\0\0'),
        "tensor 'a' has data_offsets [2, 0] outside the 2 data bytes")
      expect(st('{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,8]}}', string.rep('\0', 8)),
        "tensor 'a' has 8 data bytes, but shape [2, 3] of F32 needs 24")
      expect(st('{"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}',
        string.rep('\0', 8)), "tensors 'a' and 'b' overlap in the data")
      expect(st('{"__metadata__":{"k":1}}'), "__metadata__ value for 'k' is not a string")
      expect(st('{"__metadata__":[1]}'), '__metadata__ is not an object')
    end)
    it('accepts empty tensors that share an offset', function()
      write_all(bad, st('{"a":{"dtype":"I32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', '\7'))
      local r = lumen.load(bad)
      assert.are.same({ 0 }, r.a:size())
      assert.are.equal(7, r.b:totable()[1])
    end)
    it('names the file when it cannot be read', function()
      assert.has_error(function() lumen.load(P('missing.safetensors')) end,
        'lumen.load: cannot open ' .. P('missing.safetensors') .. ': No such file or directory')
      assert.has_error(function() lumen.load(dir) end, 'lumen.load: ' .. dir .. ' is a directory, not a file')
      assert.has_error(function() lumen.load(nil) end, 'lumen.load: path must be a string, got nil')
      assert.has_error(function() lumen.load_npy(dir) end, 'lumen.load_npy: ' .. dir .. ' is a directory, not a file')
    end)
    local id = io.popen('id -u')
    local root = id:read('*l') == '0'
    id:close()
    local test = root and pending or it -- root reads anything
    test('reports unreadable files (needs a user other than root)', function()
      write_all(P('locked'), bytes)
      os.execute('chmod 000 ' .. P('locked'))
      assert.has_error(function() lumen.load(P('locked')) end,
        'lumen.load: cannot open ' .. P('locked') .. ': Permission denied')
    end)
  end)

  describe('corrupt npy files', function()
    local good = P('good.npy')
    lumen.save_npy(good, T.f64_3d)
    local bytes = read_all(good)
    local bad = P('bad.npy')
    local function expect(content, msg)
      write_all(bad, content)
      assert.has_error(function() lumen.load_npy(bad) end, 'lumen.load_npy: ' .. bad .. ': ' .. msg)
    end
    local function npy(header, data)
      header = header .. string.rep(' ', (64 - (11 + #header) % 64) % 64) .. '\n'
      return '\147NUMPY\1\0' .. string.char(#header % 256, math.floor(#header / 256)) .. header .. (data or '')
    end
    it('refuses bad magic, versions and headers', function()
      expect('hello', 'file has 5 bytes, too short for an .npy file')
      expect('XNUMPY' .. bytes:sub(7), 'not an .npy file (bad magic bytes)')
      expect(bytes:sub(1, 6) .. '\4\0' .. bytes:sub(9), 'unsupported .npy version 4.0 (lumen reads 1.0, 2.0 and 3.0)')
      expect(bytes:sub(1, 8) .. '\255\255' .. bytes:sub(11),
        string.format('header length 65535 runs past the end of the file (%d bytes)', #bytes))
      expect(npy("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", '\0\0\0\0'),
        "unsupported dtype '<f2' (lumen reads f4, f8, i4, i8, u1 and b1)")
      expect(npy("{'descr': '<c16', 'fortran_order': False, 'shape': (1,), }", string.rep('\0', 16)),
        "unsupported dtype '<c16' (lumen reads f4, f8, i4, i8, u1 and b1)")
      expect(npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", '\0\0\0\0'),
        'structured dtypes are not supported')
      expect(npy("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,), }", '\0\0\0\0'),
        "header has no valid 'fortran_order' (True or False)")
      expect(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", '\0\0\0\0'),
        'shape entry "-1" is not a non-negative integer')
      expect(npy("{'descr': '<f4', 'fortran_order': False, }", '\0\0\0\0'), "header has no valid 'shape' tuple")
      expect(npy("[1, 2]"), 'header is not a Python dict: "[1, 2]"')
    end)
    it('refuses truncated data, at every cut', function()
      local hend = 10 + bytes:byte(9) + 256 * bytes:byte(10)
      expect(bytes:sub(1, #bytes - 1),
        string.format('truncated: shape (2, 2, 3) of <f8 needs 96 data bytes, file has %d', #bytes - 1 - hend))
      for cut = 0, #bytes - 1, 13 do
        write_all(bad, bytes:sub(1, cut))
        local ok, err = pcall(lumen.load_npy, bad)
        assert.is_false(ok)
        assert.are.equal('lumen.load_npy: ' .. bad .. ': ', err:sub(1, #bad + 18), err)
      end
    end)
  end)

  describe('atomic writes', function()
    it('fail cleanly into a directory that does not exist', function()
      local p = P('nodir/sub/x.safetensors')
      assert.has_error(function() lumen.save(p, T.f32) end,
        'lumen.save: cannot write ' .. p .. ': cannot create a temporary file next to it: No such file or directory')
      assert.has_error(function() lumen.save_npy(p, T.f32) end,
        'lumen.save_npy: cannot write ' .. p .. ': cannot create a temporary file next to it: No such file or directory')
      assert.is_false(exists(p))
    end)
    it('leave a directory in the target path untouched', function()
      local sub = P('target_dir')
      os.execute('rm -rf ' .. sub .. ' && mkdir -p ' .. sub .. '/inner')
      local before = list_dir(dir)
      local ok, err = pcall(lumen.save, sub, T.f32)
      assert.is_false(ok)
      assert.are.equal('lumen.save: cannot write ' .. sub .. ': cannot rename the temporary file over it: ',
        err:sub(1, #sub + 69))
      assert.are.same(before, list_dir(dir)) -- the temp file is gone
      assert.are.same({ 'inner' }, list_dir(sub))
    end)
    it('leave the old file unchanged when writing fails midway', function()
      -- A file size limit makes write() fail with EFBIG part way through
      -- (SIGXFSZ ignored so the process sees the error).
      local sub = P('limited')
      os.execute('rm -rf ' .. sub .. ' && mkdir -p ' .. sub)
      local target = sub .. '/w.safetensors'
      lumen.save(target, { small = T.f32 })
      local old = read_all(target)
      local script = P('big_write.lua')
      write_all(script, string.format([[
        package.path = './lua/?.lua;./lua/?/init.lua;' .. package.path
        local lumen = require 'lumen'
        local ok, err = pcall(lumen.save, %q, { big = lumen.zeros(1000000, 'f64') })
        io.write(ok and 'saved' or err)
      ]], target))
      local p = io.popen(string.format("sh -c \"trap '' XFSZ; ulimit -f 64; luajit %s\" 2>&1", script))
      local out = p:read('*a')
      p:close()
      assert.are.equal('lumen.save: cannot write ' .. target .. ': File too large', out)
      assert.are.equal(old, read_all(target))
      assert.are.same({ 'w.safetensors' }, list_dir(sub))
    end)
    it('replace the old file and leave no temp files', function()
      local sub = P('replace')
      os.execute('rm -rf ' .. sub .. ' && mkdir -p ' .. sub)
      local target = sub .. '/r.npy'
      lumen.save_npy(target, T.f32)
      os.execute('chmod 640 ' .. target)
      lumen.save_npy(target, T.i64_3d)
      same(lumen.load_npy(target), T.i64_3d)
      assert.are.same({ 'r.npy' }, list_dir(sub))
      local p = io.popen('stat -c %a ' .. target)
      assert.are.equal('640', p:read('*l')) -- permissions of the replaced file kept
      p:close()
    end)
  end)

  describe('C file functions', function()
    local ctx = lumen.core.ctx
    local function errmsg()
      local s = ffi.string(C.lm_ctx_errmsg(ctx))
      C.lm_ctx_clear_error(ctx)
      return s
    end
    it('read exactly, or report truncation', function()
      local p = P('ten')
      write_all(p, '0123456789')
      local size = ffi.new('int64_t[1]')
      assert.are.equal(0, C.lm_file_size(ctx, p, size))
      assert.are.equal(10, tonumber(size[0]))
      local buf = ffi.new('char[16]')
      assert.are.equal(0, C.lm_file_read(ctx, p, 3, 4, buf))
      assert.are.equal('3456', ffi.string(buf, 4))
      assert.are.equal(0, C.lm_file_read(ctx, p, 10, 0, buf))
      assert.are.equal(C.LM_E_FORMAT, C.lm_file_read(ctx, p, 8, 16, buf))
      assert.are.equal('file: ' .. p .. ' is truncated: wanted 16 bytes at offset 8, file has 10', errmsg())
      assert.are.equal(C.LM_E_FORMAT, C.lm_file_read(ctx, p, 2 ^ 62, 2 ^ 62, buf))
      errmsg()
      assert.are.equal(C.LM_E_ARG, C.lm_file_read(ctx, p, -1, 4, buf))
      errmsg()
      assert.are.equal(C.LM_E_IO, C.lm_file_read(ctx, P('nope'), 0, 1, buf))
      assert.are.equal('file: cannot open ' .. P('nope') .. ': No such file or directory', errmsg())
      assert.are.equal(C.LM_E_IO, C.lm_file_size(ctx, dir, size))
      assert.are.equal('file: ' .. dir .. ' is a directory, not a file', errmsg())
    end)
    it('write parts atomically', function()
      local p = P('parts')
      local a, b = 'abc', 'de'
      local parts = ffi.new('const void*[3]')
      parts[0], parts[1], parts[2] = ffi.cast('const void*', a), nil, ffi.cast('const void*', b)
      local sizes = ffi.new('int64_t[3]', { 3, 0, 2 })
      assert.are.equal(0, C.lm_file_write_atomic(ctx, p, 3, parts, sizes))
      assert.are.equal('abcde', read_all(p))
      sizes[1] = 5 -- a NULL part with a size
      assert.are.equal(C.LM_E_ARG, C.lm_file_write_atomic(ctx, p, 3, parts, sizes))
      errmsg()
      assert.are.equal('abcde', read_all(p))
    end)
    it('swap bytes', function()
      local b = ffi.new('uint8_t[16]', { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 })
      C.lm_byteswap(b, 8, 2)
      assert.are.same({ 2, 1, 4, 3, 6, 5, 8, 7 }, { b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7] })
      C.lm_byteswap(b, 8, 2)
      C.lm_byteswap(b + 1, 3, 4) -- unaligned
      assert.are.same({ 1, 5, 4, 3, 2, 9, 8, 7, 6, 13, 12, 11, 10, 14 },
        { b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13] })
      local d = ffi.new('uint64_t[1]', 0x0102030405060708ULL)
      C.lm_byteswap(d, 1, 8)
      assert.are.equal(0x0807060504030201ULL, d[0])
      C.lm_byteswap(d, 1, 1) -- nothing to swap
      C.lm_byteswap(nil, 4, 4)
      assert.are.equal(0x0807060504030201ULL, d[0])
    end)
  end)

  describe('bad arguments', function()
    it('are reported with the op name', function()
      assert.has_error(function() lumen.save(1, T.f32) end, 'lumen.save: path must be a string, got number')
      assert.has_error(function() lumen.save(P('x'), 5) end,
        'lumen.save: tensors must be a tensor or a table name -> tensor, got number')
      assert.has_error(function() lumen.save(P('x'), { a = 5 }) end, "lumen.save: 'a' is a number, expected a tensor")
      assert.has_error(function() lumen.save(P('x'), { T.f32 }) end, 'lumen.save: tensor names must be strings, got number 1')
      assert.has_error(function() lumen.save(P('x'), { __metadata__ = T.f32 }) end,
        "lumen.save: '__metadata__' is reserved and cannot name a tensor")
      assert.has_error(function() lumen.save(P('x'), T.f32, { k = {} }) end,
        "lumen.save: metadata value for 'k' is a table, expected a string")
      assert.has_error(function() lumen.save(P('x'), T.f32, 'meta') end,
        'lumen.save: metadata must be a table string -> string, got string')
      assert.has_error(function() lumen.save_npy(P('x'), 'nope') end, 'lumen.save_npy: tensor must be a tensor, got string')
      assert.has_error(function() lumen.load_npy(false) end, 'lumen.load_npy: path must be a string, got boolean')
      assert.is_false(exists(P('x')))
    end)
  end)
end)
