-- image/mha.lua: MetaImage (.mha: header and data in one file; .mhd: a
-- text header naming the data file, or a LIST of slice files).
--
-- The data is stored x fastest, so img.data is the view (nx, ny, nz[, c])
-- of the C-order buffer (nz, ny, nx[, c]); several components per voxel
-- (ElementNumberOfChannels) are the last dim. Geometry follows ITK's
-- reading of the header: axis i of the index has direction row i of
-- TransformMatrix (its synonyms Rotation and Orientation too), length
-- ElementSpacing[i], and Offset (or Origin, Position) is voxel 0 in LPS
-- millimetres. lumen's affine is RAS, so the first two world rows are
-- negated on the way in and on the way out.
-- Files are written uncompressed, little-endian; compressed data
-- (CompressedData = True, one zlib stream: .zraw or LOCAL) is read.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C = core.C

-- MetaIO element type -> element C type and the lumen dtype it reads as
local types = {
  MET_UCHAR = { 'uint8_t', 'u8', 'uint8' },
  MET_CHAR = { 'int8_t', 'i32', 'int8' },
  MET_SHORT = { 'int16_t', 'i32', 'int16' },
  MET_USHORT = { 'uint16_t', 'i32', 'uint16' },
  MET_INT = { 'int32_t', 'i32', 'int32' },
  MET_UINT = { 'uint32_t', 'i64', 'uint32' },
  MET_LONG = { 'int32_t', 'i32', 'int32' },     -- MetaIO's long is 4 bytes
  MET_ULONG = { 'uint32_t', 'i64', 'uint32' },
  MET_LONG_LONG = { 'int64_t', 'i64', 'int64' },
  MET_ULONG_LONG = { 'uint64_t', 'i64', 'uint64' }, -- values past 2^63 wrap
  MET_FLOAT = { 'float', 'f32', 'float32' },
  MET_DOUBLE = { 'double', 'f64', 'float64' },
}
local lumen_ctype = { u8 = 'uint8_t', i32 = 'int32_t', i64 = 'int64_t', f32 = 'float', f64 = 'double' }
-- lumen dtype -> element type written
local write_type = { u8 = 'MET_UCHAR', bool = 'MET_UCHAR', i32 = 'MET_INT', i64 = 'MET_LONG_LONG',
  f32 = 'MET_FLOAT', f64 = 'MET_DOUBLE' }

local MAX_HEADER_BYTES = 4 * 2 ^ 20 -- a LIST of many slice files included

return function(image, lumen)
  local function dir_of(path) return path:match('^(.*)/[^/]*$') or '.' end

  -- A failed read of a data file names the header too (through bad): the
  -- header is the file the user asked for.
  local function io_fail(file, header, bad)
    if file == header then core.fail_as('image.read', 0) end
    local msg = ffi.string(C.lm_ctx_errmsg(core.ctx)):gsub('^[%w_]+: ', '')
    C.lm_ctx_clear_error(core.ctx)
    bad('data file: %s', msg)
  end

  local function file_size(path, header, bad)
    local box = ffi.new('int64_t[1]')
    if C.lm_file_size(core.ctx, path, box) ~= 0 then io_fail(path, header, bad) end
    return tonumber(box[0])
  end

  -- The header's fields (keys lower-cased), the byte offset just past the
  -- ElementDataFile line, which ends the header, and for LIST the file
  -- names that follow it. The header is read as bytes (a binary file must
  -- not confuse the line reader).
  local function read_header(path, bad)
    local size = file_size(path, path, bad)
    local n = math.min(size, MAX_HEADER_BYTES)
    local buf = ffi.new('uint8_t[?]', math.max(n, 1))
    if C.lm_file_read(core.ctx, path, 0, n, buf) ~= 0 then core.fail_as('image.read', 0) end
    local text = ffi.string(buf, n)
    local fields, pos, lineno = {}, 1, 0
    while true do
      local nl = text:find('\n', pos, true)
      if not nl then
        if n < size then bad('no ElementDataFile line in the first %d bytes of the header', n) end
        bad('the header has no ElementDataFile line (it must end the header)')
      end
      local line = text:sub(pos, nl - 1):gsub('\r$', '')
      pos = nl + 1
      lineno = lineno + 1
      if line:match('%S') then
        local key, value = line:match('^%s*([%w_]+)%s*=%s*(.-)%s*$')
        if not key then bad('header line %d is not "Key = Value": %q', lineno, line:sub(1, 40)) end
        key = key:lower()
        fields[key] = value
        if key == 'elementdatafile' then
          local rest
          if value:upper():match('^LIST') then -- the slice files follow, one a line
            rest = {}
            for name in text:sub(pos):gmatch('[^\r\n]+') do
              name = name:match('^%s*(.-)%s*$')
              if name ~= '' then rest[#rest + 1] = name end
            end
          end
          return fields, pos - 1, rest
        end
      end
    end
  end

  local function numbers(s, what, bad)
    local t = {}
    for w in (s or ''):gmatch('%S+') do
      local v = tonumber(w)
      if not v or v ~= v or math.abs(v) == math.huge then bad('%s has a value that is not a finite number: %q', what, w) end
      t[#t + 1] = v
    end
    return t
  end

  local function is_true(s) return s ~= nil and (s:lower() == 'true' or s == '1') end

  local function read(path, opts)
    local function bad(fmt, ...)
      error(string.format("lumen.image.read: '%s': " .. fmt, path, ...), 0)
    end
    local fields, data_pos, list = read_header(path, bad)

    local compressed = is_true(fields.compresseddata)
    if fields.objecttype and fields.objecttype:lower() ~= 'image' then
      bad('ObjectType is %s, expected Image', fields.objecttype)
    end
    if not fields.dimsize then bad('the header has no DimSize') end
    local dims = numbers(fields.dimsize, 'DimSize', bad)
    local nd = tonumber(fields.ndims) or #dims
    if nd ~= math.floor(nd) or nd < 1 or nd > 7 then bad('NDims is %s, expected 1 to 7', fields.ndims) end
    if #dims ~= nd then bad('DimSize has %d values but NDims is %d', #dims, nd) end
    local channels = tonumber(fields.elementnumberofchannels or '1')
    if not channels or channels ~= math.floor(channels) or channels < 1 then
      bad('ElementNumberOfChannels is %s, expected a positive integer', fields.elementnumberofchannels)
    end
    local count = channels
    for _, v in ipairs(dims) do
      if v ~= math.floor(v) or v < 1 then bad('DimSize (%s) must be positive integers', fields.dimsize) end
      count = count * v
    end
    local etype = fields.elementtype
    if not etype then bad('the header has no ElementType') end
    local ty = types[etype:upper()]
    if not ty then
      local known = {}
      for k in pairs(types) do known[#known + 1] = k end
      table.sort(known)
      bad('ElementType %s is not supported (expected one of %s)', etype, table.concat(known, ', '))
    end
    local esize = ffi.sizeof(ty[1])
    local nbytes = count * esize
    local desc = string.format('%s %s%s (%.0f bytes)', fields.dimsize:gsub('%s+', 'x'), etype,
      channels > 1 and (' x ' .. channels .. ' channels') or '', nbytes)
    if nbytes > 2 ^ 52 then bad('header says %s: impossibly large', desc) end
    local msb = fields.binarydatabyteordermsb or fields.elementbyteordermsb
    local swap = esize > 1 and (is_true(msb) ~= not ffi.abi('le'))

    -- Where the bytes are: (file, offset, length) pieces, checked against
    -- the file sizes before anything is allocated.
    local pieces = {}
    local datafile = fields.elementdatafile
    local header_size = tonumber(fields.headersize or '0')
    if not header_size or header_size ~= math.floor(header_size) or header_size < -1 then
      bad('HeaderSize is %s, expected a whole number of bytes (or -1)', fields.headersize)
    end
    local function piece(file, want, skip)
      local size = file_size(file, path, bad)
      if compressed then -- the stream runs to the end of the file unless its size is given
        want = tonumber(fields.compresseddatasize or '') or size - math.max(skip, 0)
        if skip == -1 then bad('HeaderSize = -1 cannot locate compressed data') end
        if want ~= math.floor(want) or want < 0 then
          bad('CompressedDataSize is %s, expected a whole number of bytes', fields.compresseddatasize)
        end
        -- zlib inflates at most about 1032:1: a larger image cannot be in
        -- there, and must not be allocated for
        if nbytes > want * 1032 + 1024 then
          bad('header says %s but %.0f bytes of compressed data cannot hold that much', desc, want)
        end
      end
      local offset = skip == -1 and size - want or skip
      if offset < 0 or size - offset < want then
        bad('header says %s but %s has %.0f bytes of data%s', desc, file == path and 'the file' or ("'" .. file .. "'"),
          math.max(size - math.max(offset, 0), 0), skip == -1 and '' or string.format(' after byte %d', offset))
      end
      pieces[#pieces + 1] = { file, offset, want }
    end
    if datafile:upper() == 'LOCAL' then
      piece(path, nbytes, header_size == -1 and -1 or data_pos + header_size)
    elseif list then
      if compressed then bad('compressed data split over a LIST of files is not supported') end
      if #list == 0 or nbytes % #list ~= 0 then
        bad('ElementDataFile LIST names %d files, which do not divide %s evenly', #list, desc)
      end
      for _, name in ipairs(list) do
        piece(name:sub(1, 1) == '/' and name or dir_of(path) .. '/' .. name, nbytes / #list, header_size)
      end
    elseif datafile:find('%%') then
      bad('ElementDataFile %q: numbered file patterns are not supported (use LIST)', datafile)
    else
      piece(datafile:sub(1, 1) == '/' and datafile or dir_of(path) .. '/' .. datafile, nbytes, header_size)
    end

    -- C-order buffer (nz, ..., nx[, c]); read straight into it when the
    -- element type is a lumen dtype, else through a byte buffer.
    local cshape = {}
    for i = 1, nd do cshape[i] = dims[nd + 1 - i] end
    if channels > 1 then cshape[nd + 1] = channels end
    local t = lumen.empty(cshape, ty[2])
    local direct = lumen_ctype[ty[2]] == ty[1]
    local buf = direct and t or lumen.empty({ math.max(nbytes, 1) }, 'u8')
    local base = ffi.cast('uint8_t*', buf:data_ptr())
    local at = 0
    for _, p in ipairs(pieces) do
      if compressed then -- one zlib stream that must inflate to exactly nbytes
        local z = lumen.empty({ math.max(p[3], 1) }, 'u8')
        if C.lm_file_read(core.ctx, p[1], p[2], p[3], z:data_ptr()) ~= 0 then io_fail(p[1], path, bad) end
        local out = ffi.new('lm_tensor*[1]')
        if C.lm_inflate(core.ctx, z:slice(0, 0, p[3]).h, nbytes, out) ~= 0 then
          local msg = ffi.string(C.lm_ctx_errmsg(core.ctx)):gsub('^[%w_]+: ', '')
          C.lm_ctx_clear_error(core.ctx)
          bad('compressed data: %s', msg)
        end
        local raw = core.wrap(out[0])
        ffi.copy(base, raw:data_ptr(), nbytes)
        raw:free()
        z:free()
      else
        if C.lm_file_read(core.ctx, p[1], p[2], p[3], base + at) ~= 0 then io_fail(p[1], path, bad) end
        at = at + p[3]
      end
    end
    if swap then C.lm_byteswap(base, count, esize) end
    if not direct then
      local src, dst = ffi.cast(ty[1] .. '*', base), ffi.cast(lumen_ctype[ty[2]] .. '*', t:data_ptr())
      for i = 0, count - 1 do dst[i] = src[i] end
      buf:free()
    end

    -- Index order first: reverse the spatial dims, channels stay last.
    local perm = {}
    for i = 1, nd do perm[i] = nd - i end
    if channels > 1 then perm[nd + 1] = nd end
    local data = t:permute(unpack(perm))

    -- Geometry (LPS) -> RAS affine; extra dims beyond 3 are left out.
    local spacing = numbers(fields.elementspacing or fields.elementsize, 'ElementSpacing', bad)
    local offset = numbers(fields.offset or fields.origin or fields.position, 'Offset', bad)
    local matrix = numbers(fields.transformmatrix or fields.rotation or fields.orientation, 'TransformMatrix', bad)
    if #spacing > 0 and #spacing < nd then bad('ElementSpacing has %d values for %d dimensions', #spacing, nd) end
    if #offset > 0 and #offset < nd then bad('Offset has %d values for %d dimensions', #offset, nd) end
    if #matrix > 0 and #matrix ~= nd * nd then bad('TransformMatrix has %d values, expected %d', #matrix, nd * nd) end
    local affine = { { 1, 0, 0, 0 }, { 0, 1, 0, 0 }, { 0, 0, 1, 0 }, { 0, 0, 0, 1 } }
    local g = math.min(nd, 3)
    for i = 1, g do          -- column i: axis i's direction times its spacing
      local s = spacing[i] or 1
      for r = 1, g do
        local d = #matrix > 0 and matrix[(i - 1) * nd + r] or (r == i and 1 or 0)
        affine[r][i] = d * s
      end
      affine[i][4] = offset[i] or 0
    end
    for c = 1, 4 do
      affine[1][c] = -affine[1][c]
      affine[2][c] = -affine[2][c]
    end
    for r = 1, 2 do
      for c = 1, 4 do if affine[r][c] == 0 then affine[r][c] = 0 end end -- no -0
    end
    local meta = { format = path:lower():match('%.mhd$') and 'mhd' or 'mha', file_dtype = ty[3],
      element_type = etype:upper(), channels = channels, header = fields }
    return image.new(data, { affine = affine, meta = meta })
  end

  local function fmt_num(v) return string.format('%.17g', v) end

  local function write(img, path, opts)
    local function bad(fmt, ...)
      error(string.format("lumen.image.write: '%s': " .. fmt, path, ...), 0)
    end
    local d = img.data
    local dtype = d:dtype()
    local etype = write_type[dtype] or bad('dtype %s cannot be written', dtype)
    if dtype == 'bool' then d = d:to('u8') end
    local size = d:size()
    local channels = img.meta and img.meta.channels or 1
    local nd = #size
    if channels > 1 and size[nd] == channels and nd >= 2 then nd = nd - 1 else channels = 1 end
    if nd < 1 or nd > 7 then bad('data is %d-D; MetaImage holds 1 to 7 dimensions', #size) end
    for i = 1, #size do if size[i] < 1 then bad('data has an empty dimension (%s)', table.concat(size, 'x')) end end

    -- RAS affine -> LPS spacing, direction rows, offset
    local a = img.affine
    local lps = {}
    for r = 1, 3 do
      lps[r] = {}
      for c = 1, 4 do lps[r][c] = (r <= 2 and -1 or 1) * a[r][c] end
    end
    local g = math.min(nd, 3)
    local spacing, offset, matrix = {}, {}, {}
    for i = 1, nd do
      if i <= g then
        local s = math.sqrt(lps[1][i] ^ 2 + lps[2][i] ^ 2 + lps[3][i] ^ 2)
        -- a 2-D image keeps only the in-plane part; its length is the spacing
        if nd < 3 then s = math.sqrt(lps[1][i] ^ 2 + lps[2][i] ^ 2) end
        spacing[i] = s > 0 and s or 1
        offset[i] = lps[i][4]
      else
        spacing[i], offset[i] = 1, 0
      end
      for r = 1, nd do
        local v
        if i <= g and r <= g then v = lps[r][i] / spacing[i] else v = (r == i) and 1 or 0 end
        matrix[(i - 1) * nd + r] = v
      end
    end
    local function list(t)
      local s = {}
      for i, v in ipairs(t) do s[i] = fmt_num(v == 0 and 0 or v) end
      return table.concat(s, ' ')
    end
    local dimsize = {}
    for i = 1, nd do dimsize[i] = size[i] end
    local is_mhd = path:lower():match('%.mhd$') ~= nil
    local raw_name
    if is_mhd then raw_name = path:match('([^/]*)$'):gsub('%.[mM][hH][dD]$', '') .. '.raw' end
    local header = table.concat({
      'ObjectType = Image',
      'NDims = ' .. nd,
      'BinaryData = True',
      'BinaryDataByteOrderMSB = False',
      'CompressedData = False',
      'TransformMatrix = ' .. list(matrix),
      'Offset = ' .. list(offset),
      'ElementSpacing = ' .. list(spacing),
      'DimSize = ' .. table.concat(dimsize, ' '),
      'ElementNumberOfChannels = ' .. channels,
      'ElementType = ' .. etype,
      'ElementDataFile = ' .. (is_mhd and raw_name or 'LOCAL'),
    }, '\n') .. '\n'

    -- x-fastest bytes: the C-order copy of the spatial dims reversed
    local perm = {}
    for i = 1, nd do perm[i] = nd - i end
    if channels > 1 then perm[nd + 1] = nd end
    local c = d:permute(unpack(perm)):contiguous()
    if not ffi.abi('le') then
      if c == d then c = c:clone() end
      C.lm_byteswap(c:data_ptr(), c:numel(), ffi.sizeof(lumen_ctype[c:dtype()]))
    end
    local nbytes = c:numel() * ffi.sizeof(lumen_ctype[c:dtype()])
    local function write_parts(file, parts, sizes)
      local p = ffi.new('const void*[?]', #parts)
      local s = ffi.new('int64_t[?]', #parts)
      for i = 1, #parts do
        p[i - 1] = ffi.cast('const void*', parts[i])
        s[i - 1] = sizes[i]
      end
      if C.lm_file_write_atomic(core.ctx, file, #parts, p, s) ~= 0 then core.fail_as('image.write', 0) end
    end
    if is_mhd then
      write_parts(dir_of(path) .. '/' .. raw_name, { c:data_ptr() }, { nbytes })
      write_parts(path, { header }, { #header })
    else
      write_parts(path, { header, c:data_ptr() }, { #header, nbytes })
    end
    return c -- keeps the data alive until the writes are done
  end

  for _, suffix in ipairs { '.mha', '.mhd' } do image.formats[suffix] = { read = read, write = write } end
end
