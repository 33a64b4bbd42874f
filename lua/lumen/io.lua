-- io.lua: saving and loading tensors as safetensors (lumen.save/lumen.load)
-- and NumPy .npy files (lumen.save_npy/lumen.load_npy). Files are written
-- atomically (temp file, fsync, rename) and every field read from a file is
-- checked before it is trusted: a corrupt file gives an error naming it.
local ffi = require 'ffi'
local core = require 'lumen.core'
local json = require 'lumen.json'
local C, ctx, Tensor = core.C, core.ctx, core.Tensor

local host_le = ffi.abi('le')
local MAX_HEADER = 100 * 2 ^ 20 -- safetensors' own limit on the JSON header

-- dtype code <-> safetensors name / npy descr (little-endian form)
local st_name = { [C.LM_F32] = 'F32', [C.LM_F64] = 'F64', [C.LM_I32] = 'I32', [C.LM_I64] = 'I64',
  [C.LM_U8] = 'U8', [C.LM_BOOL] = 'BOOL' }
local st_code = {}
for code, name in pairs(st_name) do st_code[name] = code end
local npy_descr = { [C.LM_F32] = '<f4', [C.LM_F64] = '<f8', [C.LM_I32] = '<i4', [C.LM_I64] = '<i8',
  [C.LM_U8] = '|u1', [C.LM_BOOL] = '|b1' }
-- npy kind+size -> dtype code; the byte-order character is handled apart
local npy_kind = { f4 = C.LM_F32, f8 = C.LM_F64, i4 = C.LM_I32, i8 = C.LM_I64, u1 = C.LM_U8, b1 = C.LM_BOOL }

-- Errors inside the implementations carry no position; the public wrappers
-- re-raise them at the caller.
local function fail(fmt, ...) error(string.format(fmt, ...), 0) end

-- Runs a C file call; its "file: ..." message becomes "lumen.<op>: ...".
local function check_file(op, st)
  if st ~= 0 then core.fail_as(op, 0) end
end

local size_box = ffi.new('int64_t[1]')
local function file_size(op, path)
  check_file(op, C.lm_file_size(ctx, path, size_box))
  return tonumber(size_box[0])
end

local function read_string(op, path, offset, n)
  local buf = ffi.new('uint8_t[?]', math.max(n, 1))
  check_file(op, C.lm_file_read(ctx, path, offset, n, buf))
  return ffi.string(buf, n)
end

local function esize(code) return C.lm_dtype_size(code) end

-- Reads n bytes of tensor data at offset straight into a new tensor.
local function read_tensor(op, path, offset, code, shape)
  local t = core.call(C.lm_empty, code, core.put_shape(shape, op), core.shape_buf, core.out1)
  local info = core.info(t)
  local n, nbytes = tonumber(info.numel), tonumber(info.numel) * esize(code)
  if nbytes > 0 then check_file(op, C.lm_file_read(ctx, path, offset, nbytes, info.data)) end
  return t, info.data, n
end

-- bool bytes other than 0 and 1 are read as true, as NumPy does
local function normalize_bool(p, n)
  p = ffi.cast('uint8_t*', p)
  for i = 0, n - 1 do
    if p[i] > 1 then p[i] = 1 end
  end
end

-- A contiguous CPU tensor with little-endian bytes, for writing out.
local function le_contiguous(op, t, what)
  if not core.is_tensor(t) then fail('lumen.%s: %s must be a tensor, got %s', op, what, type(t)) end
  if t.h == nil then fail('lumen.%s: %s was freed', op, what) end
  t = core.host(t) -- a device tensor is written from a CPU copy
  local c = t:contiguous()
  if not host_le and esize(core.info(c).dtype) > 1 then
    if c == t then c = t:clone() end
    local info = core.info(c)
    C.lm_byteswap(info.data, info.numel, esize(info.dtype))
  end
  return c
end

local function is_int(v) return type(v) == 'number' and v == math.floor(v) and v >= 0 and v < 2 ^ 53 end

-- Element count of a shape; a product of the non-zero sizes past 2^53
-- (no file holds that much) is refused before any allocation is tried.
local function checked_numel(shape, bad)
  local numel, nonzero = 1, 1
  for _, v in ipairs(shape) do
    numel = numel * v
    if v > 0 then nonzero = nonzero * v end
  end
  if nonzero > 2 ^ 53 then bad('shape (%s) is impossibly large', table.concat(shape, ', ')) end
  return numel
end

local function write_parts(op, path, parts, sizes, anchors)
  local n = #parts
  local p = ffi.new('const void*[?]', math.max(n, 1))
  local s = ffi.new('int64_t[?]', math.max(n, 1))
  for i = 1, n do
    p[i - 1] = ffi.cast('const void*', parts[i])
    s[i - 1] = sizes[i]
  end
  check_file(op, C.lm_file_write_atomic(ctx, path, n, p, s))
  return anchors -- parts (Lua strings, tensors) stay referenced until here
end

local function u64_le(n)
  local b = {}
  for i = 1, 8 do
    b[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(b)
end

---------------------------------------------------------------------------
-- safetensors

local function save_impl(path, tensors, metadata)
  if type(path) ~= 'string' then fail('lumen.save: path must be a string, got %s', type(path)) end
  if core.is_tensor(tensors) then tensors = { tensor = tensors } end
  if type(tensors) ~= 'table' then fail('lumen.save: tensors must be a tensor or a table name -> tensor, got %s', type(tensors)) end
  local names = {}
  for name, t in pairs(tensors) do
    if type(name) ~= 'string' then fail('lumen.save: tensor names must be strings, got %s %s', type(name), tostring(name)) end
    if name == '__metadata__' then fail("lumen.save: '__metadata__' is reserved and cannot name a tensor") end
    if not core.is_tensor(t) then fail("lumen.save: '%s' is a %s, expected a tensor", name, type(t)) end
    if t.h == nil then fail("lumen.save: tensor '%s' was freed", name) end
    names[#names + 1] = name
  end
  -- widest dtypes first, then by name: every tensor's data stays aligned to
  -- its element size (the data block starts at a multiple of 8)
  local width = {}
  for _, name in ipairs(names) do width[name] = esize(core.info(tensors[name]).dtype) end
  table.sort(names, function(a, b)
    if width[a] ~= width[b] then return width[a] > width[b] end
    return a < b
  end)

  local header = {}
  if metadata ~= nil then
    if type(metadata) ~= 'table' then fail('lumen.save: metadata must be a table string -> string, got %s', type(metadata)) end
    local m = {}
    for k, v in pairs(metadata) do
      if type(k) ~= 'string' then fail('lumen.save: metadata key %s is a %s, expected a string', tostring(k), type(k)) end
      local tv = type(v)
      if tv == 'number' or tv == 'boolean' then v = tostring(v)
      elseif tv ~= 'string' then fail("lumen.save: metadata value for '%s' is a %s, expected a string", k, tv) end
      m[k] = v
    end
    if next(m) ~= nil then header.__metadata__ = m end
  end

  local datas, sizes, offset = {}, {}, 0
  for i, name in ipairs(names) do
    local c = le_contiguous('save', tensors[name], "tensor '" .. name .. "'")
    local info = core.info(c)
    local nbytes = tonumber(info.numel) * esize(info.dtype)
    header[name] = { dtype = st_name[info.dtype], shape = json.array(c:size()),
      data_offsets = json.array { offset, offset + nbytes } }
    offset = offset + nbytes
    datas[i], sizes[i] = c, nbytes
  end
  local h = json.encode(header)
  h = h .. string.rep(' ', (8 - #h % 8) % 8)

  local parts, psizes = { u64_le(#h), h }, { 8, #h }
  for i, c in ipairs(datas) do
    parts[i + 2] = core.info(c).data
    psizes[i + 2] = sizes[i]
  end
  write_parts('save', path, parts, psizes, datas)
end

local function load_impl(path)
  if type(path) ~= 'string' then fail('lumen.load: path must be a string, got %s', type(path)) end
  local function bad(fmt, ...) fail('lumen.load: %s: ' .. fmt, path, ...) end
  local size = file_size('load', path)
  if size < 8 then bad('file has %d bytes, too short for a safetensors file (at least 8)', size) end
  local lenbuf = ffi.new('uint64_t[1]')
  check_file('load', C.lm_file_read(ctx, path, 0, 8, lenbuf))
  local hlen = lenbuf[0]
  if not host_le then C.lm_byteswap(lenbuf, 1, 8); hlen = lenbuf[0] end
  if hlen > size - 8 then
    bad('header length %s runs past the end of the file (%d bytes)', (tostring(hlen):gsub('ULL$', '')), size)
  end
  hlen = tonumber(hlen)
  if hlen > MAX_HEADER then bad('header length %d is over the %d byte limit', hlen, MAX_HEADER) end
  local text = read_string('load', path, 8, hlen)
  local ok, header = pcall(json.decode, text)
  if not ok then bad('header is not valid JSON (%s)', tostring(header)) end
  if type(header) ~= 'table' or getmetatable(header) == json.array_mt then
    bad('header is a JSON %s, expected an object', type(header) == 'table' and 'array' or type(header))
  end

  local metadata = {}
  local meta = header.__metadata__
  if meta ~= nil then
    if type(meta) ~= 'table' or getmetatable(meta) == json.array_mt then bad('__metadata__ is not an object') end
    for k, v in pairs(meta) do
      if type(v) ~= 'string' then bad("__metadata__ value for '%s' is not a string", k) end
      metadata[k] = v
    end
  end

  local data_start, data_len = 8 + hlen, size - 8 - hlen
  local entries = {}
  for name, e in pairs(header) do
    if name ~= '__metadata__' then
      if type(e) ~= 'table' or getmetatable(e) == json.array_mt then bad("entry '%s' is not an object", name) end
      local code = type(e.dtype) == 'string' and st_code[e.dtype]
      if not code then
        bad("tensor '%s' has unsupported dtype %s (lumen reads F32, F64, I32, I64, U8 and BOOL)", name,
          type(e.dtype) == 'string' and "'" .. e.dtype .. "'" or tostring(e.dtype))
      end
      local shape = e.shape
      if type(shape) ~= 'table' or getmetatable(shape) ~= json.array_mt then
        bad("tensor '%s' has no shape list", name)
      end
      if #shape > C.LM_MAX_DIMS then bad("tensor '%s' has %d dimensions, lumen supports at most %d", name, #shape, C.LM_MAX_DIMS) end
      for d = 1, #shape do
        if not is_int(shape[d]) then bad("tensor '%s' has shape entry %s, expected a non-negative integer", name, tostring(shape[d])) end
      end
      local numel = checked_numel(shape, bad)
      local off = e.data_offsets
      if type(off) ~= 'table' or #off ~= 2 or not is_int(off[1]) or not is_int(off[2]) then
        bad("tensor '%s' has bad data_offsets (expected [begin, end] of non-negative integers)", name)
      end
      local b, en = off[1], off[2]
      if b > en or en > data_len then
        bad("tensor '%s' has data_offsets [%d, %d] outside the %d data bytes", name, b, en, data_len)
      end
      local want = numel * esize(code)
      if en - b ~= want then
        bad("tensor '%s' has %d data bytes, but shape [%s] of %s needs %.0f", name, en - b,
          table.concat(shape, ', '), e.dtype, want)
      end
      entries[#entries + 1] = { name = name, code = code, shape = shape, b = b, e = en }
    end
  end
  table.sort(entries, function(x, y) return x.b < y.b or (x.b == y.b and x.e < y.e) end)
  local prev
  for _, x in ipairs(entries) do
    if x.e > x.b then
      if prev and x.b < prev.e then bad("tensors '%s' and '%s' overlap in the data", prev.name, x.name) end
      prev = x
    end
  end

  local out = {}
  for _, x in ipairs(entries) do
    local t, p, n = read_tensor('load', path, data_start + x.b, x.code, x.shape)
    if x.code == C.LM_BOOL then normalize_bool(p, n)
    elseif not host_le then C.lm_byteswap(p, n, esize(x.code)) end
    out[x.name] = t
  end
  return out, metadata
end

---------------------------------------------------------------------------
-- NumPy .npy

local NPY_MAGIC = '\147NUMPY'

local function save_npy_impl(path, t)
  if type(path) ~= 'string' then fail('lumen.save_npy: path must be a string, got %s', type(path)) end
  local c = le_contiguous('save_npy', t, 'tensor')
  local info = core.info(c)
  local shape = c:size()
  local tuple = #shape == 0 and '()' or #shape == 1 and '(' .. shape[1] .. ',)' or '(' .. table.concat(shape, ', ') .. ')'
  local h = string.format("{'descr': '%s', 'fortran_order': False, 'shape': %s, }", npy_descr[info.dtype], tuple)
  -- magic(6) + version(2) + length(2) + header, padded to 64 bytes, ends in \n
  local total = 10 + #h + 1
  h = h .. string.rep(' ', (64 - total % 64) % 64) .. '\n'
  if #h > 65535 then fail('lumen.save_npy: header of %d bytes is too long for .npy version 1.0', #h) end
  local pre = NPY_MAGIC .. '\1\0' .. string.char(#h % 256, math.floor(#h / 256)) .. h
  local nbytes = tonumber(info.numel) * esize(info.dtype)
  local parts = { pre, info.data }
  write_parts('save_npy', path, parts, { #pre, nbytes }, c)
end

-- Parses the Python dict literal of an .npy header.
local function parse_npy_header(h, bad)
  if not h:match('^%s*{') then bad('header is not a Python dict: %q', h:sub(1, 40):match('^(.-)%s*$')) end
  local descr = h:match("['\"]descr['\"]%s*:%s*'([^']*)'") or h:match("['\"]descr['\"]%s*:%s*\"([^\"]*)\"")
  if not descr then
    if h:match("['\"]descr['\"]%s*:%s*%[") then bad('structured dtypes are not supported') end
    bad("header has no 'descr'")
  end
  local fo = h:match("['\"]fortran_order['\"]%s*:%s*(%a+)")
  if fo ~= 'True' and fo ~= 'False' then bad("header has no valid 'fortran_order' (True or False)") end
  local st = h:match("['\"]shape['\"]%s*:%s*(%b())")
  if not st then bad("header has no valid 'shape' tuple") end
  local shape = {}
  for item in st:sub(2, -2):gmatch('[^,]+') do
    local s = item:match('^%s*(.-)%s*$'):gsub('L$', '') -- Python 2 wrote 3L
    if s ~= '' then
      local v = tonumber(s)
      if not v or not s:match('^%d+$') then bad('shape entry %q is not a non-negative integer', s) end
      shape[#shape + 1] = v
    end
  end
  return descr, fo == 'True', shape
end

local function load_npy_impl(path)
  if type(path) ~= 'string' then fail('lumen.load_npy: path must be a string, got %s', type(path)) end
  local function bad(fmt, ...) fail('lumen.load_npy: %s: ' .. fmt, path, ...) end
  local size = file_size('load_npy', path)
  if size < 10 then bad('file has %d bytes, too short for an .npy file', size) end
  local pre = read_string('load_npy', path, 0, math.min(size, 12))
  if pre:sub(1, 6) ~= NPY_MAGIC then bad('not an .npy file (bad magic bytes)') end
  local major, minor = pre:byte(7), pre:byte(8)
  local hlen, hstart
  if major == 1 then
    hlen, hstart = pre:byte(9) + 256 * pre:byte(10), 10
  elseif major == 2 or major == 3 then
    if size < 12 then bad('file has %d bytes, too short for an .npy version %d file', size, major) end
    local b1, b2, b3, b4 = pre:byte(9, 12)
    hlen, hstart = b1 + 256 * (b2 + 256 * (b3 + 256 * b4)), 12
  else
    bad('unsupported .npy version %d.%d (lumen reads 1.0, 2.0 and 3.0)', major, minor)
  end
  if hstart + hlen > size then
    bad('header length %d runs past the end of the file (%d bytes)', hlen, size)
  end
  local h = read_string('load_npy', path, hstart, hlen)
  local descr, fortran, shape = parse_npy_header(h, bad)
  local order, kind = descr:sub(1, 1), descr:sub(2)
  local code = npy_kind[kind]
  if not code or not (order == '<' or order == '>' or order == '|' or order == '=') then
    bad("unsupported dtype '%s' (lumen reads f4, f8, i4, i8, u1 and b1)", descr)
  end
  if #shape > C.LM_MAX_DIMS then bad('%d dimensions, lumen supports at most %d', #shape, C.LM_MAX_DIMS) end
  local numel = checked_numel(shape, bad)
  local data_start = hstart + hlen
  local want = numel * esize(code)
  if want > size - data_start then
    bad('truncated: shape (%s) of %s needs %.0f data bytes, file has %d', table.concat(shape, ', '), descr, want,
      size - data_start)
  end
  -- Fortran order: the bytes are the C-order array of the reversed shape,
  -- transposed; load that and permute back.
  local file_shape = shape
  if fortran then
    file_shape = {}
    for i = 1, #shape do file_shape[i] = shape[#shape + 1 - i] end
  end
  local t, p, n = read_tensor('load_npy', path, data_start, code, file_shape)
  local swap = esize(code) > 1 and ((order == '>' and host_le) or (order == '<' and not host_le))
  if code == C.LM_BOOL then normalize_bool(p, n)
  elseif swap then C.lm_byteswap(p, n, esize(code)) end
  if fortran and #shape > 1 then
    local perm = {}
    for i = 1, #shape do perm[i] = #shape - i end
    t = t:permute(perm):contiguous()
  end
  return t
end

-- Public entry points: errors raised at the caller's line.
local function public(impl)
  return function(...)
    local r = { pcall(impl, ...) }
    if not r[1] then error(r[2], 2) end
    return unpack(r, 2, table.maxn(r))
  end
end

return function(lumen)
  -- save(path, tensors[, metadata]): tensors is a tensor or name -> tensor;
  -- metadata a table string -> string stored as __metadata__.
  lumen.save = public(save_impl)
  -- load(path) -> name -> tensor, metadata (an empty table when none)
  lumen.load = public(load_impl)
  lumen.save_npy = public(save_npy_impl)
  lumen.load_npy = public(load_npy_impl)
  -- write_file(path, text): atomically (a failed write leaves the old file)
  lumen.write_file = public(function(path, text)
    if type(path) ~= 'string' then error('lumen.write_file: path must be a string, got ' .. type(path), 0) end
    if type(text) ~= 'string' then error('lumen.write_file: text must be a string, got ' .. type(text), 0) end
    write_parts('write_file', path, { text }, { #text })
  end)
  -- t:save(path[, metadata]) stores t under the name 'tensor'
  Tensor.save = public(function(t, path, metadata) return save_impl(path, t, metadata) end)
  Tensor.save_npy = public(function(t, path) return save_npy_impl(path, t) end)
end
