-- image/dicom.lua: DICOM files (.dcm, .dicom, or no suffix with the DICM
-- preamble) and series folders. Read only.
--
-- A file is parsed in two steps: the file meta (group 2, always explicit
-- VR little endian, after the 128-byte preamble and "DICM"), then the
-- dataset in the transfer syntax the meta names: implicit or explicit VR,
-- little or big endian, or deflated. Files without a meta are guessed
-- from their first element. Only top-level elements are kept; sequences
-- are walked to find their end, not interpreted. Compressed (encapsulated)
-- pixel data is refused, naming its transfer syntax.
--
-- img.data is (columns i, rows j, frames or slices k): the view of the
-- C-order (k, j, i) buffer. Colour (SamplesPerPixel 3) adds a trailing
-- channel dim: (i, j, k, 3), a view of pydicom's (frames, rows, columns, 3)
-- for PlanarConfiguration 0 and of (frames, 3, rows, columns) for 1.
-- RGB, YBR_FULL and YBR_FULL_422 (uncompressed; 4:2:2 pairs upsampled by
-- repeating Cb and Cr, as pydicom does) are read; the data keeps the
-- file's colour space, as pydicom's pixel_array does, unless
-- image.read(path, {rgb = true}) converts 8-bit YBR to RGB with the
-- equations of convert_color_space (ITU T.871, rounded, clipped to 0..255).
-- meta.photometric is the file's value, meta.color_space what the data holds. The affine follows the DICOM geometry (LPS):
-- axis i along the row direction cosines (ImageOrientationPatient[1..3])
-- times the column spacing (PixelSpacing[2]), axis j along the column
-- cosines times the row spacing (PixelSpacing[1]), axis k along their
-- cross product times the slice spacing; voxel 0 at ImagePositionPatient.
-- The first two world rows are negated for RAS.
-- With RescaleSlope and RescaleIntercept both present the data is f64
-- (stored * slope + intercept, as pydicom's apply_modality_lut); else the
-- stored integers widened to a lumen dtype.
local ffi = require 'ffi'
local bit = require 'bit'
local core = require 'lumen.core'
local C = core.C

local UNCOMPRESSED = {
  ['1.2.840.10008.1.2'] = { name = 'Implicit VR Little Endian', implicit = true, little = true },
  ['1.2.840.10008.1.2.1'] = { name = 'Explicit VR Little Endian', implicit = false, little = true },
  ['1.2.840.10008.1.2.2'] = { name = 'Explicit VR Big Endian', implicit = false, little = false },
  ['1.2.840.10008.1.2.1.99'] = { name = 'Deflated Explicit VR Little Endian', implicit = false, little = true,
    deflated = true },
}
local COMPRESSED = {
  ['1.2.840.10008.1.2.4.50'] = 'JPEG Baseline (Process 1)',
  ['1.2.840.10008.1.2.4.51'] = 'JPEG Extended (Process 2 & 4)',
  ['1.2.840.10008.1.2.4.57'] = 'JPEG Lossless, Non-Hierarchical (Process 14)',
  ['1.2.840.10008.1.2.4.70'] = 'JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, Selection Value 1)',
  ['1.2.840.10008.1.2.4.80'] = 'JPEG-LS Lossless',
  ['1.2.840.10008.1.2.4.81'] = 'JPEG-LS Lossy (Near-Lossless)',
  ['1.2.840.10008.1.2.4.90'] = 'JPEG 2000 Image Compression (Lossless Only)',
  ['1.2.840.10008.1.2.4.91'] = 'JPEG 2000 Image Compression',
  ['1.2.840.10008.1.2.4.92'] = 'JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)',
  ['1.2.840.10008.1.2.4.93'] = 'JPEG 2000 Part 2 Multi-component Image Compression',
  ['1.2.840.10008.1.2.4.100'] = 'MPEG2 Main Profile / Main Level',
  ['1.2.840.10008.1.2.4.102'] = 'MPEG-4 AVC/H.264 High Profile / Level 4.1',
  ['1.2.840.10008.1.2.4.103'] = 'MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1',
  ['1.2.840.10008.1.2.4.201'] = 'High-Throughput JPEG 2000 Image Compression (Lossless Only)',
  ['1.2.840.10008.1.2.4.202'] = 'High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)',
  ['1.2.840.10008.1.2.4.203'] = 'High-Throughput JPEG 2000 Image Compression',
  ['1.2.840.10008.1.2.5'] = 'RLE Lossless',
}

-- explicit VRs whose length is 4 bytes after 2 reserved bytes
local LONG_VR = { OB = true, OD = true, OF = true, OL = true, OV = true, OW = true, SQ = true, SV = true,
  UC = true, UN = true, UR = true, UT = true, UV = true }

local function tag(g, e) return g * 65536 + e end
local T = {
  transfer_syntax = tag(0x0002, 0x0010),
  modality = tag(0x0008, 0x0060),
  slice_thickness = tag(0x0018, 0x0050),
  spacing_between = tag(0x0018, 0x0088),
  patient_position = tag(0x0018, 0x5100),
  series_uid = tag(0x0020, 0x000E),
  instance_number = tag(0x0020, 0x0013),
  position = tag(0x0020, 0x0032),
  orientation = tag(0x0020, 0x0037),
  samples = tag(0x0028, 0x0002),
  photometric = tag(0x0028, 0x0004),
  planar = tag(0x0028, 0x0006),
  frames = tag(0x0028, 0x0008),
  rows = tag(0x0028, 0x0010),
  columns = tag(0x0028, 0x0011),
  pixel_spacing = tag(0x0028, 0x0030),
  bits_allocated = tag(0x0028, 0x0100),
  bits_stored = tag(0x0028, 0x0101),
  high_bit = tag(0x0028, 0x0102),
  pixel_representation = tag(0x0028, 0x0103),
  window_center = tag(0x0028, 0x1050),
  window_width = tag(0x0028, 0x1051),
  rescale_intercept = tag(0x0028, 0x1052),
  rescale_slope = tag(0x0028, 0x1053),
  modality_lut = tag(0x0028, 0x3000),
  float_pixels = tag(0x7FE0, 0x0008),
  double_pixels = tag(0x7FE0, 0x0009),
  pixel_data = tag(0x7FE0, 0x0010),
}
local UNDEFINED = 0xFFFFFFFF
local COLOUR = { RGB = true, YBR_FULL = true, YBR_FULL_422 = true }
local MAX_INFLATED = 2 ^ 32

return function(image, lumen)
  -- A byte string with readers for unsigned integers at 0-based offsets.
  local function bytes_of(s)
    local p = ffi.cast('const uint8_t*', s)
    local function u16(o, little)
      if little then return p[o] + p[o + 1] * 256 end
      return p[o] * 256 + p[o + 1]
    end
    local function u32(o, little)
      if little then return p[o] + p[o + 1] * 256 + p[o + 2] * 65536 + p[o + 3] * 16777216 end
      return p[o] * 16777216 + p[o + 1] * 65536 + p[o + 2] * 256 + p[o + 3]
    end
    return { s = s, p = p, n = #s, u16 = u16, u32 = u32 }
  end

  local function is_vr(b, o)
    if o + 2 > b.n then return false end
    local c1, c2 = b.p[o], b.p[o + 1]
    return c1 >= 65 and c1 <= 90 and c2 >= 65 and c2 <= 90
  end

  -- Parses elements from offset pos up to limit (or to an item delimiter
  -- when limit is nil and stop_at_item). enc: {implicit=, little=}.
  -- Top-level elements go into elems (tag -> {vr, offset, length}).
  local parse
  local function skip_undefined(b, pos, enc, bad, depth)
    -- a sequence of undefined length: items until (FFFE,E0DD)
    if depth > 64 then bad('sequences nested more than 64 deep') end
    while true do
      if pos + 8 > b.n then bad('truncated inside a sequence at byte %d', pos) end
      local g, e, len = b.u16(pos, enc.little), b.u16(pos + 2, enc.little), b.u32(pos + 4, enc.little)
      pos = pos + 8
      if g == 0xFFFE and e == 0xE0DD then return pos end
      if g ~= 0xFFFE or e ~= 0xE000 then
        bad('expected a sequence item at byte %d, found (%04X,%04X)', pos - 8, g, e)
      end
      if len == UNDEFINED then
        pos = parse(b, pos, nil, enc, nil, bad, depth + 1)
      else
        if pos + len > b.n then bad('a sequence item at byte %d runs past the end of the file', pos - 8) end
        pos = pos + len
      end
    end
  end

  parse = function(b, pos, limit, enc, elems, bad, depth)
    local stop = limit or b.n
    while pos < stop do
      if pos + 8 > stop then
        if limit then bad('truncated element header at byte %d', pos) end
        -- trailing padding shorter than an element header
        return pos
      end
      local g, e = b.u16(pos, enc.little), b.u16(pos + 2, enc.little)
      local vr, len, hdr
      if g == 0xFFFE then -- item or delimiter: no VR in any syntax
        len, hdr = b.u32(pos + 4, enc.little), 8
        if e == 0xE00D and not elems then return pos + 8 end -- end of an item of undefined length
      elseif enc.implicit then
        len, hdr = b.u32(pos + 4, enc.little), 8
      else
        if not is_vr(b, pos + 4) then
          bad('element (%04X,%04X) at byte %d has no valid VR (bytes %q)', g, e, pos, b.s:sub(pos + 5, pos + 6))
        end
        vr = b.s:sub(pos + 5, pos + 6)
        if LONG_VR[vr] then
          if pos + 12 > b.n then bad('truncated element header at byte %d', pos) end
          len, hdr = b.u32(pos + 8, enc.little), 12
        else
          len, hdr = b.u16(pos + 6, enc.little), 8
        end
      end
      local t = tag(g, e)
      local start = pos + hdr
      if len == UNDEFINED then
        if t == T.pixel_data then
          if elems then elems[t] = { vr = vr, offset = start, length = UNDEFINED } end
          return b.n -- encapsulated pixel data is last; its fragments are not walked
        end
        -- a sequence (SQ, or UN / implicit of undefined length: items in implicit VR LE)
        local inner = (vr == 'UN') and { implicit = true, little = true } or enc
        pos = skip_undefined(b, start, inner, bad, depth)
      else
        if start + len > b.n then
          bad('element (%04X,%04X) at byte %d says %d bytes but the file has %d left', g, e, pos, len,
            math.max(b.n - start, 0))
        end
        if elems then elems[t] = { vr = vr, offset = start, length = len } end
        pos = start + len
      end
    end
    return pos
  end

  local function read_file(path)
    local f, err = io.open(path, 'rb')
    if not f then error(string.format("lumen.image.read: '%s': cannot open: %s", path, err), 0) end
    local s = f:read('*a')
    f:close()
    if not s then error(string.format("lumen.image.read: '%s': cannot read (a directory?)", path), 0) end
    return s
  end

  -- Parses one file into {elems, bytes, enc, syntax uid, syntax info}.
  local function parse_file(path)
    local function bad(fmt, ...)
      error(string.format("lumen.image.read: '%s': " .. fmt, path, ...), 0)
    end
    local b = bytes_of(read_file(path))
    local pos = 0
    if b.n >= 132 and b.s:sub(129, 132) == 'DICM' then pos = 132 end
    local meta = {}
    local le = { implicit = false, little = true }
    -- the meta group (2) in explicit VR LE, with or without its group length
    if b.n >= pos + 8 and b.u16(pos, true) == 0x0002 and is_vr(b, pos + 4) then
      local e0 = pos
      while pos + 8 <= b.n and b.u16(pos, true) == 0x0002 do
        pos = parse(b, pos, pos + 8 + (LONG_VR[b.s:sub(pos + 5, pos + 6)] and 4 + b.u32(pos + 8, true)
          or b.u16(pos + 6, true)), le, meta, bad, 0)
        if pos <= e0 then break end
      end
    elseif pos == 132 then
      bad('the file meta after the DICM preamble is missing or malformed')
    end
    local function str(elems, t)
      local el = elems[t]
      if not el then return nil end
      return (b.s:sub(el.offset + 1, el.offset + el.length):gsub('[%z ]+$', ''):gsub('^ +', ''))
    end
    local uid = str(meta, T.transfer_syntax)
    if uid and COMPRESSED[uid] then
      bad('pixel data is compressed with transfer syntax %s (%s), which lumen cannot decode', uid, COMPRESSED[uid])
    end
    local syntax = uid and UNCOMPRESSED[uid]
    if uid and not syntax then bad('unknown transfer syntax %s', uid) end
    if not syntax then
      -- no meta (or no syntax in it): guess from the first element
      if pos + 8 > b.n then bad('too short to be DICOM (%d bytes)', b.n) end
      local little = b.u16(pos, true) <= b.u16(pos, false)
      local explicit = is_vr(b, pos + 4)
      syntax = { name = (explicit and 'Explicit' or 'Implicit') .. ' VR ' .. (little and 'Little' or 'Big') ..
        ' Endian (guessed: no transfer syntax in the file)', implicit = not explicit, little = little }
      -- the first group must be plausible, else this is not a DICOM file at all
      local g = b.u16(pos, little)
      if g ~= 0x0008 and not (g >= 0x0002 and g <= 0x0010 and g % 2 == 0) then
        bad('not a DICOM file (no DICM preamble, and it does not start with a DICOM element)')
      end
    end
    local data = b
    if syntax.deflated then
      local z = lumen.empty({ math.max(b.n - pos, 1) }, 'u8')
      ffi.copy(z:data_ptr(), b.p + pos, b.n - pos)
      local out = ffi.new('lm_tensor*[1]')
      if C.lm_inflate_raw(core.ctx, z:slice(0, 0, b.n - pos).h, MAX_INFLATED, out) ~= 0 then
        local msg = ffi.string(C.lm_ctx_errmsg(core.ctx)):gsub('^[%w_]+: ', '')
        C.lm_ctx_clear_error(core.ctx)
        bad('deflated dataset: %s', msg)
      end
      local raw = core.wrap(out[0])
      data = bytes_of(ffi.string(raw:data_ptr(), raw:numel()))
      raw:free()
      z:free()
      pos = 0
    end
    local elems = {}
    parse(data, pos, nil, syntax, elems, bad, 0)
    return { elems = elems, b = data, syntax = syntax, uid = uid, path = path, bad = bad }
  end

  -- value readers on a parsed file
  local function get_str(d, t)
    local el = d.elems[t]
    if not el or el.length == UNDEFINED then return nil end
    local v = d.b.s:sub(el.offset + 1, el.offset + el.length):gsub('[%z ]+$', ''):gsub('^[%z ]+', '')
    return v
  end
  local function get_nums(d, t, what)
    local s = get_str(d, t)
    if not s or s == '' then return nil end
    local out = {}
    for w in (s .. '\\'):gmatch('([^\\]*)\\') do
      w = w:match('^%s*(.-)%s*$')
      local v = tonumber(w)
      if not v then d.bad('%s has a value that is not a number: %q', what, w) end
      out[#out + 1] = v
    end
    return out
  end
  local function get_us(d, t)
    local el = d.elems[t]
    if not el or el.length < 2 or el.length == UNDEFINED then return nil end
    return d.b.u16(el.offset, d.syntax.little)
  end

  -- 8-bit YBR_FULL (..., 3) to RGB u8: ITU T.871 (JPEG File Interchange
  -- Format) as pydicom's convert_color_space computes it, rounded half up
  -- and clipped to 0..255.
  local function ybr_to_rgb(t)
    local f = t:to('f64')
    local y, cb, cr = f:select(3, 0), f:select(3, 1) - 128, f:select(3, 2) - 128
    local r = y + cr * 1.402
    local g = y + cb * (-0.114 * 1.772 / 0.587) + cr * (-0.299 * 1.402 / 0.587)
    local b = y + cb * 1.772
    return lumen.clamp(lumen.floor(lumen.stack({ r, g, b }, 3) + 0.5), 0, 255):to('u8')
  end

  -- Pixels of one parsed file: C-order (frames, rows, columns) tensor,
  -- or (frames, rows, columns, 3) for colour (maybe a view), plus details
  -- for meta.
  local function pixels(d, opts)
    opts = opts or {}
    local bad = d.bad
    local px = d.elems[T.pixel_data]
    if not px then
      if d.elems[T.float_pixels] or d.elems[T.double_pixels] then bad('float pixel data is not supported') end
      bad('no Pixel Data element (7FE0,0010): not an image')
    end
    if px.length == UNDEFINED then
      bad('pixel data is encapsulated (compressed) but the transfer syntax is %s', d.syntax.name)
    end
    local rows, cols = get_us(d, T.rows), get_us(d, T.columns)
    if not rows or not cols then bad('Rows or Columns is missing') end
    local spp = get_us(d, T.samples) or 1
    local photometric = get_str(d, T.photometric)
    local planar = 0
    if spp == 3 then
      if not COLOUR[photometric or ''] then
        bad('SamplesPerPixel is 3 with PhotometricInterpretation %s: expected one of RGB, YBR_FULL, YBR_FULL_422',
          photometric or '(missing)')
      end
      planar = get_us(d, T.planar) or 0
      if planar ~= 0 and planar ~= 1 then bad('PlanarConfiguration is %d, expected 0 or 1', planar) end
      if photometric == 'YBR_FULL_422' and planar ~= 0 then
        bad('YBR_FULL_422 with PlanarConfiguration %d: 4:2:2 data is interleaved (0)', planar)
      end
    elseif spp ~= 1 then
      bad('SamplesPerPixel is %d (%s): expected 1 (greyscale) or 3 (colour)', spp, photometric or 'no PhotometricInterpretation')
    end
    local nf = (get_nums(d, T.frames, 'NumberOfFrames') or { 1 })[1]
    if nf ~= math.floor(nf) or nf < 1 then bad('NumberOfFrames is %s, expected a positive integer', nf) end
    local ba = get_us(d, T.bits_allocated)
    if not ba then bad('BitsAllocated is missing') end
    if ba ~= 1 and ba ~= 8 and ba ~= 16 and ba ~= 32 then bad('BitsAllocated is %d, expected 1, 8, 16 or 32', ba) end
    local bs = get_us(d, T.bits_stored) or ba
    local signed = (get_us(d, T.pixel_representation) or 0) == 1
    -- samples stored: 4:2:2 keeps two per pixel (Y, and Cb or Cr shared by a pair)
    local ybr422 = spp == 3 and photometric == 'YBR_FULL_422'
    local count = rows * cols * nf * (ybr422 and 2 or spp)
    local nbytes = math.ceil(count * ba / 8)
    if nbytes > px.length then
      bad('header says %dx%d pixels x %d frames%s of %d bits (%.0f bytes) but the pixel data has %d bytes', cols, rows,
        nf, spp == 3 and (' x ' .. photometric) or '', ba, nbytes, px.length)
    end
    if spp == 3 and ba == 1 then bad('BitsAllocated is 1 with 3 samples per pixel, expected 8, 16 or 32') end
    if ybr422 and (rows * cols * nf) % 2 == 1 then
      bad('YBR_FULL_422 with an odd number of pixels (%dx%d x %d frames): 4:2:2 stores pixel pairs', cols, rows, nf)
    end
    if ba == 1 then -- bit-packed (segmentations), lowest bit first
      local t = lumen.empty({ nf, rows, cols }, 'u8')
      local src, dst = d.b.p + px.offset, ffi.cast('uint8_t*', t:data_ptr())
      for i = 0, count - 1 do dst[i] = bit.band(bit.rshift(src[bit.rshift(i, 3)], bit.band(i, 7)), 1) end
      return t, { rows = rows, columns = cols, frames = nf, bits_allocated = 1, bits_stored = 1, signed = false,
        file_dtype = 'bit' }
    end
    local ctype = (signed and 'int' or 'uint') .. ba .. '_t'
    local dtype = ({ uint8_t = 'u8', int8_t = 'i32', uint16_t = 'i32', int16_t = 'i32', int32_t = 'i32',
      uint32_t = 'i64' })[ctype]
    -- the buffer as stored: grey (frames, rows, columns), colour
    -- interleaved (frames, rows, columns, 3) or planar (frames, 3, rows, columns)
    local shape = spp == 1 and { nf, rows, cols } or planar == 0 and { nf, rows, cols, 3 } or { nf, 3, rows, cols }
    local t = lumen.empty(shape, dtype)
    if count > 0 then
      local raw = ffi.new('uint8_t[?]', nbytes)
      ffi.copy(raw, d.b.p + px.offset, nbytes)
      if ba > 8 and (d.syntax.little ~= ffi.abi('le')) then C.lm_byteswap(raw, count, ba / 8) end
      local src = ffi.cast(ctype .. '*', raw)
      local dst = ffi.cast(({ u8 = 'uint8_t', i32 = 'int32_t', i64 = 'int64_t' })[dtype] .. '*', t:data_ptr())
      if ybr422 then
        -- Y1 Y2 Cb Cr -> Y1 Cb Cr Y2 Cb Cr (DICOM PS3.3 C.7.6.3.1.2)
        for p = 0, count / 4 - 1 do
          local i, o = 4 * p, 6 * p
          dst[o], dst[o + 3] = src[i], src[i + 1]
          dst[o + 1], dst[o + 4] = src[i + 2], src[i + 2]
          dst[o + 2], dst[o + 5] = src[i + 3], src[i + 3]
        end
      else
        for i = 0, count - 1 do dst[i] = src[i] end
      end
    end
    if spp == 3 and planar == 1 then t = t:permute(0, 2, 3, 1) end
    local color_space = spp == 3 and (photometric == 'RGB' and 'RGB' or 'YBR_FULL') or nil
    if color_space == 'YBR_FULL' and opts.rgb then
      if ba ~= 8 then bad('rgb = true converts 8-bit YBR only, this file has %d bits', ba) end
      t, color_space = ybr_to_rgb(t), 'RGB'
    end
    local slope = get_nums(d, T.rescale_slope, 'RescaleSlope')
    local intercept = get_nums(d, T.rescale_intercept, 'RescaleIntercept')
    if d.elems[T.modality_lut] then bad('a Modality LUT Sequence is not supported') end
    return t, { rows = rows, columns = cols, frames = nf, bits_allocated = ba, bits_stored = bs, signed = signed,
      file_dtype = ctype:gsub('_t$', ''), slope = slope and slope[1], intercept = intercept and intercept[1],
      color_space = color_space, planar = spp == 3 and planar or nil }
  end

  local function geometry(d)
    local iop = get_nums(d, T.orientation, 'ImageOrientationPatient')
    local ipp = get_nums(d, T.position, 'ImagePositionPatient')
    local ps = get_nums(d, T.pixel_spacing, 'PixelSpacing')
    if iop and #iop ~= 6 then d.bad('ImageOrientationPatient has %d values, expected 6', #iop) end
    if ipp and #ipp ~= 3 then d.bad('ImagePositionPatient has %d values, expected 3', #ipp) end
    if ps and #ps ~= 2 then d.bad('PixelSpacing has %d values, expected 2', #ps) end
    iop = iop or { 1, 0, 0, 0, 1, 0 }
    local r, c = { iop[1], iop[2], iop[3] }, { iop[4], iop[5], iop[6] }
    local n = { r[2] * c[3] - r[3] * c[2], r[3] * c[1] - r[1] * c[3], r[1] * c[2] - r[2] * c[1] }
    return { row = r, col = c, normal = n, position = ipp or { 0, 0, 0 }, spacing = ps or { 1, 1 } }
  end

  local function dot(a, b) return a[1] * b[1] + a[2] * b[2] + a[3] * b[3] end

  -- RAS affine from the LPS geometry and the slice step (a vector).
  local function affine_of(g, step, bad)
    local A = { {}, {}, {}, { 0, 0, 0, 1 } }
    for r = 1, 3 do
      A[r][1] = g.row[r] * g.spacing[2]
      A[r][2] = g.col[r] * g.spacing[1]
      A[r][3] = step[r]
      A[r][4] = g.position[r]
    end
    for r = 1, 2 do
      for c = 1, 4 do A[r][c] = -A[r][c] + 0 end -- + 0: no -0
    end
    for r = 1, 3 do -- tonumber reads 'nan' and 'inf' too
      for c = 1, 4 do
        if A[r][c] ~= A[r][c] or math.abs(A[r][c]) == math.huge then
          bad('ImagePositionPatient, ImageOrientationPatient, PixelSpacing or the slice spacing is not finite')
        end
      end
    end
    return A
  end

  local function meta_of(d, info, extra)
    local function s(t) local v = get_str(d, t) return v ~= '' and v or nil end
    local m = { format = 'dicom', transfer_syntax = d.uid, transfer_syntax_name = d.syntax.name,
      modality = s(T.modality), patient_position = s(T.patient_position), series_uid = s(T.series_uid),
      photometric = s(T.photometric), rescale_slope = info.slope, rescale_intercept = info.intercept,
      window_center = get_nums(d, T.window_center, 'WindowCenter'),
      window_width = get_nums(d, T.window_width, 'WindowWidth'), file_dtype = info.file_dtype,
      bits_allocated = info.bits_allocated, bits_stored = info.bits_stored, color_space = info.color_space,
      planar_configuration = info.planar }
    for k, v in pairs(extra or {}) do m[k] = v end
    return m
  end

  -- C-order (k, j, i[, c]) to the image's (i, j, k[, c]) view
  local function ijk(t)
    if t:dim() == 4 then return t:permute(2, 1, 0, 3) end
    return t:permute(2, 1, 0)
  end

  local function finish(t, info, affine, meta)
    if info.slope and info.intercept then
      t = t:to('f64') * info.slope + info.intercept
    end
    return image.new(ijk(t), { affine = affine, meta = meta })
  end

  local function read_one(path, opts)
    local d = parse_file(path)
    local t, info = pixels(d, opts)
    local g = geometry(d)
    local dz = (get_nums(d, T.spacing_between, 'SpacingBetweenSlices') or get_nums(d, T.slice_thickness,
      'SliceThickness') or { 1 })[1]
    local step = { g.normal[1] * dz, g.normal[2] * dz, g.normal[3] * dz }
    return finish(t, info, affine_of(g, step, d.bad), meta_of(d, info))
  end

  local function read_dir(dir, opts)
    local function bad(fmt, ...)
      error(string.format("lumen.image.read: '%s': " .. fmt, dir, ...), 0)
    end
    local need = ffi.new('int64_t[1]')
    if C.lm_dir_list(core.ctx, dir, nil, 0, need) ~= 0 then core.fail_as('image.read', 0) end
    local buf = ffi.new('char[?]', need[0] + 1)
    if C.lm_dir_list(core.ctx, dir, buf, need[0], need) ~= 0 then core.fail_as('image.read', 0) end
    local names, at = {}, 0
    while at < need[0] do
      local name = ffi.string(buf + at)
      at = at + #name + 1
      names[#names + 1] = name
    end
    table.sort(names)
    local slices, series = {}, nil
    for _, name in ipairs(names) do
      local p = dir:gsub('/+$', '') .. '/' .. name
      if C.lm_is_dir(p) == 0 then
        local ok, d = pcall(parse_file, p)
        if ok and d.elems[T.pixel_data] then
          local uid = get_str(d, T.series_uid) or ''
          series = series or uid
          if uid == series then slices[#slices + 1] = d end
        end
      end
    end
    if #slices == 0 then bad('no DICOM image files in the folder') end
    local g = geometry(slices[1])
    for _, d in ipairs(slices) do d.where = dot(geometry(d).position, g.normal) end
    table.sort(slices, function(a, b2) return a.where < b2.where end)
    local tensors, info0 = {}, nil
    for i, d in ipairs(slices) do
      local t, info = pixels(d, opts)
      if info.frames ~= 1 then d.bad('a series file has %d frames; series of multi-frame files are not supported', info.frames) end
      if i == 1 then
        info0 = info
      elseif info.rows ~= info0.rows or info.columns ~= info0.columns then
        d.bad('is %dx%d but the series starts with %dx%d', info.columns, info.rows, info0.columns, info0.rows)
      elseif info.color_space ~= info0.color_space then
        d.bad('is %s but the series starts with %s', info.color_space or 'greyscale', info0.color_space or 'greyscale')
      end
      if info.slope and info.intercept then t = t:to('f64') * info.slope + info.intercept end
      tensors[i] = t
    end
    local t = #tensors == 1 and tensors[1] or lumen.cat(tensors, 0)
    local step
    if #slices > 1 then
      local a, z = geometry(slices[1]).position, geometry(slices[#slices]).position
      step = {}
      for r = 1, 3 do step[r] = (z[r] - a[r]) / (#slices - 1) end
    else
      local dz = (get_nums(slices[1], T.slice_thickness, 'SliceThickness') or { 1 })[1]
      step = { g.normal[1] * dz, g.normal[2] * dz, g.normal[3] * dz }
    end
    local g1 = geometry(slices[1])
    local files = {}
    for i, d in ipairs(slices) do files[i] = d.path end
    local info = { slope = nil, intercept = nil, file_dtype = info0.file_dtype, bits_allocated = info0.bits_allocated,
      bits_stored = info0.bits_stored }
    local meta = meta_of(slices[1], info0, { files = files })
    return image.new(ijk(t), { affine = affine_of(g1, step, bad), meta = meta }), info
  end

  local function read(path, opts)
    opts = core.options(opts, 'image.read', { rgb = true }, 3) -- blames image.read's caller
    if C.lm_is_dir(path) ~= 0 then return (read_dir(path, opts)) end
    return read_one(path, opts)
  end

  for _, suffix in ipairs { '.dcm', '.dicom' } do image.formats[suffix] = { read = read } end
  image.dicom = { read = read, is_dir = function(p) return C.lm_is_dir(p) ~= 0 end }
end
