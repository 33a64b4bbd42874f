-- nifti.lua: NIfTI-1 and NIfTI-2 images (.nii, .nii.gz, .hdr/.img pairs).
--
-- Reading follows nibabel: the shape is dim[1..dim[0]], the data is indexed
-- (i, j, k[, t...]) as a strided view of the file's x-fastest buffer, the
-- affine is the sform when sform_code > 0, else the qform when qform_code
-- > 0, else nibabel's fallback from pixdim (x flipped, centred), and
-- scl_slope/scl_inter are applied as get_fdata does (result f64; a slope
-- of 0 or NaN means no scaling). Both byte orders are read (told apart by
-- sizeof_hdr). Writing makes NIfTI-1 (NIfTI-2 when a size needs it) in the
-- host byte order with the sform and qform both set from the affine.
local ffi = require 'ffi'
local bit = require 'bit'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx
local image, lumen -- set when the module is registered

-- datatype code -> name, bytes per voxel, lumen dtype (nil: refused)
local DT = {
  [2] = { 'uint8', 1, 'u8', 'uint8_t' },
  [256] = { 'int8', 1, 'i32', 'int8_t' },
  [4] = { 'int16', 2, 'i32', 'int16_t' },
  [512] = { 'uint16', 2, 'i32', 'uint16_t' },
  [8] = { 'int32', 4, 'i32', 'int32_t' },
  [768] = { 'uint32', 4, 'i64', 'uint32_t' },
  [1024] = { 'int64', 8, 'i64', 'int64_t' },
  [16] = { 'float32', 4, 'f32', 'float' },
  [64] = { 'float64', 8, 'f64', 'double' },
}
local REFUSED = { [1] = 'binary (1 bit)', [32] = 'complex64', [128] = 'RGB24', [1280] = 'uint64',
  [1536] = 'float128', [1792] = 'complex128', [2048] = 'complex256', [2304] = 'RGBA32' }
local DT_OF_LUMEN = { u8 = 2, i32 = 8, i64 = 1024, f32 = 16, f64 = 64, bool = 2 }

-- Upper limit on a header's data size (voxels * bytes): past this the header
-- is treated as corrupt rather than tried.
local MAX_DATA = 2 ^ 40

-- Field layouts: name -> {offset, C type, count}
local N1 = {
  sizeof_hdr = { 0, 'int32_t' }, dim_info = { 39, 'uint8_t' }, dim = { 40, 'int16_t', 8 },
  intent_p = { 56, 'float', 3 }, intent_code = { 68, 'int16_t' }, datatype = { 70, 'int16_t' },
  bitpix = { 72, 'int16_t' }, pixdim = { 76, 'float', 8 }, vox_offset = { 108, 'float' },
  scl_slope = { 112, 'float' }, scl_inter = { 116, 'float' }, xyzt_units = { 123, 'uint8_t' },
  descrip = { 148, 'char', 80 }, qform_code = { 252, 'int16_t' }, sform_code = { 254, 'int16_t' },
  quatern = { 256, 'float', 3 }, qoffset = { 268, 'float', 3 }, srow = { 280, 'float', 12 },
  intent_name = { 328, 'char', 16 }, magic = { 344, 'char', 4 },
}
local N2 = {
  sizeof_hdr = { 0, 'int32_t' }, magic = { 4, 'char', 8 }, datatype = { 12, 'int16_t' },
  bitpix = { 14, 'int16_t' }, dim = { 16, 'int64_t', 8 }, intent_p = { 80, 'double', 3 },
  pixdim = { 104, 'double', 8 }, vox_offset = { 168, 'int64_t' }, scl_slope = { 176, 'double' },
  scl_inter = { 184, 'double' }, descrip = { 240, 'char', 80 }, qform_code = { 344, 'int32_t' },
  sform_code = { 348, 'int32_t' }, quatern = { 352, 'double', 3 }, qoffset = { 376, 'double', 3 },
  srow = { 400, 'double', 12 }, xyzt_units = { 500, 'int32_t' }, intent_code = { 504, 'int32_t' },
  intent_name = { 508, 'char', 16 }, dim_info = { 524, 'uint8_t' },
}

local scratch = ffi.new('uint8_t[8]')

-- One value of type ct at byte offset off of buf (swapped when swap).
local function get1(buf, off, ct, swap)
  local n = ffi.sizeof(ct)
  if swap and n > 1 then
    for b = 0, n - 1 do scratch[b] = buf[off + n - 1 - b] end
  else
    ffi.copy(scratch, buf + off, n)
  end
  -- LuaJIT keeps a NaN's payload, and some payloads read back as nil or
  -- as a bogus object (as tensor.lua's item says): test the bits first
  if ct == 'float' or ct == 'double' then
    local w = ffi.cast('uint32_t*', scratch)
    local hi = n == 4 and w[0] or w[1]
    local e, m = n == 4 and 0x7f800000 or 0x7ff00000, n == 4 and 0x7fffff or 0xfffff
    if bit.band(hi, e) == e and (bit.band(hi, m) ~= 0 or (n == 8 and w[0] ~= 0)) then return 0 / 0 end
  end
  local v = ffi.cast(ct .. '*', scratch)[0]
  return tonumber(v)
end

local function get(buf, layout, name, swap)
  local f = layout[name]
  if f[2] == 'char' then
    local s = ffi.string(buf + f[1], f[3])
    return (s:gsub('%z.*$', ''))
  end
  if not f[3] then return get1(buf, f[1], f[2], swap) end
  local t, n = {}, ffi.sizeof(f[2])
  for i = 1, f[3] do t[i] = get1(buf, f[1] + (i - 1) * n, f[2], swap) end
  return t
end

local function put(buf, layout, name, v)
  local f = layout[name]
  if f[2] == 'char' then
    ffi.fill(buf + f[1], f[3], 0)
    ffi.copy(buf + f[1], v, math.min(#v, f[3]))
    return
  end
  local n = ffi.sizeof(f[2])
  local p = ffi.new(f[2] .. '[1]')
  if type(v) ~= 'table' then v = { v } end
  for i = 1, #v do
    p[0] = v[i]
    ffi.copy(buf + f[1] + (i - 1) * n, p, n)
  end
end

-- "181x217x181" (whole numbers even past 2^53, where %d would fail)
local function dims_str(shape)
  local t = {}
  for i, v in ipairs(shape) do t[i] = string.format('%.0f', v) end
  return table.concat(t, 'x')
end

local function fmt_bytes(n)
  if n >= 2 ^ 30 then return string.format('%.1f GB', n / 2 ^ 30) end
  if n >= 2 ^ 20 then return string.format('%.0f MB', n / 2 ^ 20) end
  return string.format('%d bytes', n)
end

-- The C context's message as a read/write error naming the file.
local function c_fail(op, path)
  local msg = ffi.string(C.lm_ctx_errmsg(ctx)):gsub('^[%w_]+: ', '', 1)
  -- the C message names the file too: say it once
  local at = msg:find(path, 1, true)
  if at == 1 then msg = 'file ' .. msg:sub(#path + 1):gsub('^:? *', '', 1) end
  C.lm_ctx_clear_error(ctx)
  error(string.format("lumen.image.%s: '%s': %s", op, path, msg), 0)
end

local function qform_affine(q, off, pixdim)
  local b, c, d = q[1], q[2], q[3]
  local w2 = 1 - (b * b + c * c + d * d)
  -- nibabel's fillpositive: tiny negative w^2 from rounding means w = 0
  local a = w2 < 0 and 0 or math.sqrt(w2)
  local R = {
    { a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c) },
    { 2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b) },
    { 2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b },
  }
  local qfac = pixdim[1] == -1 and -1 or 1
  local vox = { pixdim[2], pixdim[3], pixdim[4] * qfac }
  local A = {}
  for r = 1, 3 do A[r] = { R[r][1] * vox[1], R[r][2] * vox[2], R[r][3] * vox[3], off[r] } end
  A[4] = { 0, 0, 0, 1 }
  return A
end

local function sform_affine(s)
  return { { s[1], s[2], s[3], s[4] }, { s[5], s[6], s[7], s[8] }, { s[9], s[10], s[11], s[12] }, { 0, 0, 0, 1 } }
end

-- nibabel's shape_zoom_affine with the x axis flipped, origin at the centre
local function base_affine(shape, pixdim)
  local A = { { 0, 0, 0, 0 }, { 0, 0, 0, 0 }, { 0, 0, 0, 0 }, { 0, 0, 0, 1 } }
  for r = 1, 3 do
    local n, z = shape[r] or 1, pixdim[r + 1] or 1
    if not shape[r] then z = 1 end
    if r == 1 then z = -z end
    A[r][r] = z
    A[r][4] = -(n - 1) / 2 * z
  end
  return A
end

-- Parsed header from the first bytes (buf, n of them). Raises on anything
-- that is not a NIfTI header.
local function parse_header(buf, n, path, pair)
  local function bad(fmt, ...) error(string.format("lumen.image.read: '%s': " .. fmt, path, ...), 0) end
  if n < 348 then bad('file is truncated: %d bytes, a NIfTI header needs at least 348', n) end
  local size = get1(buf, 0, 'int32_t', false)
  local swapped = get1(buf, 0, 'int32_t', true)
  local layout, swap, version
  if size == 348 or swapped == 348 then
    layout, swap, version = N1, size ~= 348, 1
  elseif size == 540 or swapped == 540 then
    layout, swap, version = N2, size ~= 540, 2
  else
    bad('not a NIfTI file: sizeof_hdr is %d, expected 348 (NIfTI-1) or 540 (NIfTI-2)', size)
  end
  if version == 2 and n < 540 then bad('file is truncated: %d bytes, a NIfTI-2 header needs 540', n) end
  local magic = get(buf, layout, 'magic', swap)
  local want = version == 1 and (pair and 'ni1' or 'n+1') or (pair and 'ni2' or 'n+2')
  if magic:sub(1, 3) ~= want then
    if version == 1 and magic == '' then
      bad('no NIfTI magic: an Analyze 7.5 header, which lumen does not read (convert it to NIfTI)')
    end
    bad("bad magic '%s', expected '%s'", magic:gsub('[^%g ]', '?'), want)
  end
  local h = { version = version, swap = swap, layout = layout }
  for name in pairs(layout) do h[name] = get(buf, layout, name, swap) end
  local nd = h.dim[1]
  if nd < 1 or nd > 7 then bad('dim[0] is %d, expected 1 to 7', nd) end
  h.shape = {}
  for i = 1, nd do
    local v = h.dim[i + 1]
    if v < 0 then bad('dim[%d] is %d, expected >= 0', i, v) end
    h.shape[i] = v
  end
  local dt = DT[h.datatype]
  if not dt then
    bad('datatype %s (%d) is not supported (supported: uint8, int8, int16, uint16, int32, uint32, int64, float32, float64)',
      REFUSED[h.datatype] or 'unknown', h.datatype)
  end
  h.dt = dt
  local numel, nonzero = 1, 1
  for i = 1, nd do
    numel = numel * h.shape[i]
    if h.shape[i] > 0 then nonzero = nonzero * h.shape[i] end
  end
  h.numel = numel
  h.nbytes = numel * dt[2]
  if h.nbytes > MAX_DATA then
    bad('header says %s %s (%s): impossibly large', dims_str(h.shape), dt[1], fmt_bytes(h.nbytes))
  end
  -- empty, but no tensor has such dims (and no real scan)
  if nonzero > MAX_DATA then bad('header says %s %s: impossibly large dimensions', dims_str(h.shape), dt[1]) end
  -- a .nii whose vox_offset points into the header (old writers left 0)
  -- has its data right after it, as nibabel and nifti1_io assume
  local first = version == 1 and 352 or 544
  if not pair and h.vox_offset < first then h.vox_offset = first end
  if h.vox_offset < 0 then bad('vox_offset %g is negative', h.vox_offset) end
  if h.vox_offset > MAX_DATA then bad('vox_offset %g is impossibly large', h.vox_offset) end
  -- negative voxel sizes are read as their magnitude (nibabel's fix)
  for i = 2, 8 do h.pixdim[i] = math.abs(h.pixdim[i]) end
  if h.vox_offset ~= math.floor(h.vox_offset) then bad('vox_offset %g is not a whole number', h.vox_offset) end
  return h
end

local function u8_from_file(path, offset, nbytes)
  local box = core.out1
  local t = core.call(C.lm_empty, C.LM_U8, 1, ffi.new('int64_t[1]', math.max(nbytes, 0)), box)
  if nbytes > 0 and C.lm_file_read(ctx, path, offset, nbytes, core.info(t).data) ~= 0 then c_fail('read', path) end
  return t
end

local function gz_call(fn, path, n)
  local out = ffi.new('lm_tensor*[1]')
  if fn(ctx, path, n, out) ~= 0 then c_fail('read', path) end
  return core.wrap(out[0])
end

local function file_size(path)
  local box = ffi.new('int64_t[1]')
  if C.lm_file_size(ctx, path, box) ~= 0 then c_fail('read', path) end
  return tonumber(box[0])
end

-- Bytes [off, off + n) of a source ('raw' or 'gz'); checks the size first.
local function is_gz(path) return path:lower():sub(-3) == '.gz' end

local function header_bytes(path)
  if is_gz(path) then
    local t = gz_call(C.lm_gzip_read_head, path, 540)
    return t, tonumber(core.info(t).numel)
  end
  local size = file_size(path)
  return u8_from_file(path, 0, math.min(size, 540)), math.min(size, 540)
end

-- The data bytes of h as a u8 tensor and the byte offset of the data in it.
local function data_bytes(h, path)
  local need = h.vox_offset + h.nbytes
  local function short(have)
    error(string.format("lumen.image.read: '%s': header says %s %s (%s at offset %d, %s in all) but the file has %s",
      path, dims_str(h.shape), h.dt[1], fmt_bytes(h.nbytes), h.vox_offset, fmt_bytes(need), fmt_bytes(have)), 0)
  end
  if is_gz(path) then
    -- a little slack for trailing bytes; never more than the header allows
    local t = gz_call(C.lm_gzip_read, path, need + 2 ^ 20)
    local have = tonumber(core.info(t).numel)
    if have < need then short(have) end
    return t, h.vox_offset
  end
  local size = file_size(path)
  if size < need then short(size) end
  return u8_from_file(path, h.vox_offset, h.nbytes), 0
end

local function pair_paths(path)
  local lower = path:lower()
  local gz = lower:sub(-3) == '.gz' and path:sub(-3) or ''
  local stem = path:sub(1, #path - #gz - 4)
  local ext = path:sub(#path - #gz - 3, #path - #gz)
  local up = ext:match('%u') ~= nil
  return stem .. (up and '.HDR' or '.hdr') .. gz, stem .. (up and '.IMG' or '.img') .. gz
end

local function read(path, opts)
  local lower = path:lower():gsub('%.gz$', '')
  local pair = lower:sub(-4) == '.hdr' or lower:sub(-4) == '.img'
  local hdr_path, img_path = path, path
  if pair then
    hdr_path, img_path = pair_paths(path)
    local f = io.open(img_path, 'rb')
    if not f then
      error(string.format("lumen.image.read: '%s': the image data file '%s' is missing", path, img_path), 0)
    end
    f:close()
  end
  local hb, hn = header_bytes(hdr_path)
  local h = parse_header(ffi.cast('uint8_t*', core.info(hb).data), hn, hdr_path, pair)
  local bytes, off = data_bytes(h, img_path)
  local src = ffi.cast('uint8_t*', core.info(bytes).data) + off
  local dt = h.dt
  if h.swap and dt[2] > 1 then C.lm_byteswap(src, h.numel, dt[2]) end

  -- C-order buffer (last dim fastest in C = x fastest in the file)
  local nd = #h.shape
  local cshape = {}
  for i = 1, nd do cshape[i] = h.shape[nd + 1 - i] end
  local t = lumen.empty(cshape, dt[3])
  if h.numel > 0 then
    local dst = core.info(t).data
    if DT_OF_LUMEN[dt[3]] == h.datatype then
      ffi.copy(dst, src, h.nbytes)
    else
      local s = ffi.cast(dt[4] .. '*', src)
      local d = ffi.cast(dt[3] == 'i64' and 'int64_t*' or 'int32_t*', dst)
      for i = 0, h.numel - 1 do d[i] = s[i] end
    end
  end
  bytes:free()
  local perm = {}
  for i = 1, nd do perm[i] = nd - i end
  local data = nd > 1 and t:permute(perm) or t

  -- scaling as nibabel's get_slope_inter / get_fdata
  local slope, inter = h.scl_slope, h.scl_inter
  local scaled = false
  if slope ~= 0 and slope == slope and math.abs(slope) ~= math.huge then
    if inter ~= inter or math.abs(inter) == math.huge then
      error(string.format("lumen.image.read: '%s': valid scl_slope %g but invalid scl_inter %g", path, slope, inter), 0)
    end
    if slope ~= 1 or inter ~= 0 then
      data = data:to('f64') * slope + inter
      scaled = true
    end
  end

  local qform = qform_affine(h.quatern, h.qoffset, h.pixdim)
  local sform = sform_affine(h.srow)
  local affine, from
  if h.sform_code > 0 then affine, from = sform, 'the sform (srow_x, srow_y, srow_z)'
  elseif h.qform_code > 0 then affine, from = qform, 'the qform (quatern_b/c/d, qoffset, pixdim)'
  else affine, from = base_affine(h.shape, h.pixdim), 'pixdim' end
  -- a NaN or infinite entry is a corrupt header, not a place in the world
  for r = 1, 3 do
    for c = 1, 4 do
      local v = affine[r][c]
      if v ~= v or math.abs(v) == math.huge then
        error(string.format("lumen.image.read: '%s': %s gives the affine a non-finite entry (%s at row %d, column %d)",
          path, from, tostring(v), r, c), 0)
      end
    end
  end
  local meta = {
    format = 'nifti' .. h.version, qform_code = h.qform_code, sform_code = h.sform_code,
    qform = qform, sform = sform, descrip = h.descrip, intent_code = h.intent_code,
    intent_name = h.intent_name, intent_p = h.intent_p, xyzt_units = h.xyzt_units,
    dim = h.dim, pixdim = h.pixdim, datatype = h.datatype, file_dtype = dt[1],
    scl_slope = slope, scl_inter = inter, scaled = scaled, dim_info = h.dim_info,
    byte_order = h.swap and 'swapped' or 'native',
  }
  return image.new(data, { affine = affine, meta = meta })
end

-- quaternion (b, c, d), qfac from the rotation part of an affine with the
-- voxel sizes taken out (nifti1_io's polar-free method for a proper rotation)
local function affine_to_qform(A)
  local col, zoom = {}, {}
  for c = 1, 3 do
    local n = math.sqrt(A[1][c] ^ 2 + A[2][c] ^ 2 + A[3][c] ^ 2)
    zoom[c] = n > 0 and n or 1
    col[c] = {}
    for r = 1, 3 do col[c][r] = n > 0 and A[r][c] / n or (r == c and 1 or 0) end
  end
  local R = { {}, {}, {} }
  for r = 1, 3 do for c = 1, 3 do R[r][c] = col[c][r] end end
  local det = R[1][1] * (R[2][2] * R[3][3] - R[2][3] * R[3][2]) - R[1][2] * (R[2][1] * R[3][3] - R[2][3] * R[3][1])
    + R[1][3] * (R[2][1] * R[3][2] - R[2][2] * R[3][1])
  local qfac = 1
  if det < 0 then
    qfac = -1
    for r = 1, 3 do R[r][3] = -R[r][3] end
  end
  local a = R[1][1] + R[2][2] + R[3][3] + 1
  local b, c, d
  if a > 0.5 then
    a = 0.5 * math.sqrt(a)
    b = 0.25 * (R[3][2] - R[2][3]) / a
    c = 0.25 * (R[1][3] - R[3][1]) / a
    d = 0.25 * (R[2][1] - R[1][2]) / a
  else
    local xd, yd, zd = 1 + R[1][1] - (R[2][2] + R[3][3]), 1 + R[2][2] - (R[1][1] + R[3][3]), 1 + R[3][3] - (R[1][1] + R[2][2])
    if xd > 1 then
      b = 0.5 * math.sqrt(xd); c = 0.25 * (R[1][2] + R[2][1]) / b; d = 0.25 * (R[1][3] + R[3][1]) / b
      a = 0.25 * (R[3][2] - R[2][3]) / b
    elseif yd > 1 then
      c = 0.5 * math.sqrt(yd); b = 0.25 * (R[1][2] + R[2][1]) / c; d = 0.25 * (R[2][3] + R[3][2]) / c
      a = 0.25 * (R[1][3] - R[3][1]) / c
    else
      d = 0.5 * math.sqrt(zd); b = 0.25 * (R[1][3] + R[3][1]) / d; c = 0.25 * (R[2][3] + R[3][2]) / d
      a = 0.25 * (R[2][1] - R[1][2]) / d
    end
    if a < 0 then b, c, d = -b, -c, -d end
  end
  return { b, c, d }, qfac, zoom
end

local function write(img, path, opts)
  local data = img.data
  local dtype = data:dtype()
  local code = DT_OF_LUMEN[dtype]
  if not code then error(string.format("lumen.image.write: '%s': cannot store dtype %s in NIfTI", path, dtype), 0) end
  if data:device() ~= 'cpu' then data = data:to('cpu') end
  local shape = data:size()
  local nd = #shape
  if nd < 1 or nd > 7 then
    error(string.format("lumen.image.write: '%s': NIfTI holds 1 to 7 dims, the data has %d", path, nd), 0)
  end
  local version = 1
  for i = 1, nd do if shape[i] > 32767 then version = 2 end end
  local L = version == 1 and N1 or N2
  local hsize = version == 1 and 348 or 540
  local vox_offset = version == 1 and 352 or 544
  local buf = ffi.new('uint8_t[?]', vox_offset)
  local meta = img.meta or {}
  put(buf, L, 'sizeof_hdr', hsize)
  put(buf, L, 'magic', version == 1 and 'n+1' or 'n+2\0\r\n\026\n')
  local dim = { nd, 1, 1, 1, 1, 1, 1, 1 }
  for i = 1, nd do dim[i + 1] = shape[i] end
  put(buf, L, 'dim', dim)
  put(buf, L, 'datatype', code)
  put(buf, L, 'bitpix', code == 2 and 8 or (code == 8 or code == 16) and 32 or 64)
  local A = img.affine
  local q, qfac, zoom = affine_to_qform(A)
  local pixdim = { qfac, zoom[1], zoom[2], zoom[3], 1, 1, 1, 1 }
  if type(meta.pixdim) == 'table' then
    for i = 5, 8 do pixdim[i] = tonumber(meta.pixdim[i]) or 1 end
  end
  put(buf, L, 'pixdim', pixdim)
  put(buf, L, 'vox_offset', vox_offset)
  put(buf, L, 'scl_slope', 1)
  put(buf, L, 'scl_inter', 0)
  put(buf, L, 'xyzt_units', tonumber(meta.xyzt_units) or 10) -- mm and s
  put(buf, L, 'descrip', type(meta.descrip) == 'string' and meta.descrip or '')
  local qc = tonumber(meta.qform_code)
  local sc = tonumber(meta.sform_code)
  put(buf, L, 'qform_code', qc and qc > 0 and qc or 2)
  put(buf, L, 'sform_code', sc and sc > 0 and sc or 2)
  put(buf, L, 'quatern', q)
  put(buf, L, 'qoffset', { A[1][4], A[2][4], A[3][4] })
  local srow = {}
  for r = 1, 3 do for c = 1, 4 do srow[#srow + 1] = A[r][c] end end
  put(buf, L, 'srow', srow)
  if meta.intent_code then put(buf, L, 'intent_code', tonumber(meta.intent_code) or 0) end
  if type(meta.intent_name) == 'string' then put(buf, L, 'intent_name', meta.intent_name) end

  -- x fastest: the reversed permutation made contiguous is the file order
  local perm = {}
  for i = 1, nd do perm[i] = nd - i end
  local c = (nd > 1 and data:permute(perm) or data):contiguous()
  if dtype == 'bool' then c = c:to('u8') end
  local nbytes = c:numel() * C.lm_dtype_size(core.info(c).dtype)
  local parts = ffi.new('const void*[2]', buf, core.info(c).data)
  local sizes = ffi.new('int64_t[2]', vox_offset, nbytes)
  local st
  if is_gz(path) then
    st = C.lm_gzip_write_atomic(ctx, path, 2, parts, sizes, tonumber(opts.level) or 6)
  else
    st = C.lm_file_write_atomic(ctx, path, 2, parts, sizes)
  end
  if st ~= 0 then c_fail('write', path) end
end

return function(image_mod, lumen_mod)
  image, lumen = image_mod, lumen_mod
  local f = { read = read, write = write }
  image.formats['.nii'] = f
  image.formats['.nii.gz'] = f
  image.formats['.hdr'] = { read = read }
  image.formats['.img'] = { read = read }
  image.formats['.hdr.gz'] = { read = read }
  image.formats['.img.gz'] = { read = read }
end
