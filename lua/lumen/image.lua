-- image.lua: medical images, a tensor plus its place in the world.
--
--   local image = require 'lumen.image'
--   local img = image.read('ch2.nii.gz')
--   img.data        tensor, dims in the file's index order (i, j, k[, t]),
--                   as nibabel and MONAI give them (a view: no copy);
--                   colour images add a trailing channel dim: (x, y, c)
--                   for PNG (meta.channels 2, 3 or 4), (i, j, k, 3) for
--                   DICOM (pydicom's (frames, rows, columns, 3) seen in
--                   i, j, k order; meta.color_space 'RGB' or 'YBR_FULL')
--   img.affine      4x4 (a Lua list of 4 rows) from voxel index (i, j, k, 1)
--                   to world millimetres in RAS+ (as NIfTI and nibabel)
--   img:spacing(), img:origin(), img:direction()  derived from the affine
--   img.meta        format details (NIfTI qform/sform codes, DICOM tags...)
--   img:write('out.nii.gz')
--
-- Readers and writers register themselves by file suffix (image.formats).
-- Geometry is always RAS+: readers of LPS formats (DICOM, MHA/MHD) flip
-- the first two world axes on the way in and back on the way out.
local lumen = require 'lumen'

local image = { formats = {} }
local Image = {}
Image.__index = Image
image.Image = Image

local function identity4()
  return { { 1, 0, 0, 0 }, { 0, 1, 0, 0 }, { 0, 0, 1, 0 }, { 0, 0, 0, 1 } }
end

local function check_affine(a, who)
  if type(a) ~= 'table' or #a ~= 4 then error(who .. ': affine must be 4 rows of 4 numbers', 3) end
  for r = 1, 4 do
    if type(a[r]) ~= 'table' or #a[r] ~= 4 then error(who .. ': affine must be 4 rows of 4 numbers', 3) end
    for c = 1, 4 do
      if type(a[r][c]) ~= 'number' or a[r][c] ~= a[r][c] then
        error(string.format('%s: affine[%d][%d] is %s, expected a number', who, r, c, tostring(a[r][c])), 3)
      end
    end
  end
end

-- image.new(data, {affine =, meta =}) -> Image (affine defaults to identity)
function image.new(data, opts)
  if not lumen.is_tensor(data) then error('lumen.image.new: data must be a tensor, got ' .. type(data), 2) end
  opts = opts or {}
  local affine = opts.affine or identity4()
  check_affine(affine, 'lumen.image.new')
  return setmetatable({ data = data, affine = affine, meta = opts.meta or {} }, Image)
end

-- Voxel sizes along i, j, k: the lengths of the affine's first three columns.
function Image:spacing()
  local s = {}
  for c = 1, 3 do
    local a = self.affine
    s[c] = math.sqrt(a[1][c] ^ 2 + a[2][c] ^ 2 + a[3][c] ^ 2)
  end
  return s
end

-- World position (RAS mm) of voxel (0, 0, 0).
function Image:origin() return { self.affine[1][4], self.affine[2][4], self.affine[3][4] } end

-- 3x3 direction cosines (rows x, y, z; column c: the world direction of axis c).
function Image:direction()
  local s, d = self:spacing(), {}
  for r = 1, 3 do
    d[r] = {}
    for c = 1, 3 do d[r][c] = s[c] > 0 and self.affine[r][c] / s[c] or (r == c and 1 or 0) end
  end
  return d
end

-- The format that handles path, by its longest matching suffix.
local function format_of(path, who)
  if type(path) ~= 'string' then error('lumen.image.' .. who .. ': path must be a string, got ' .. type(path), 3) end
  local lower, best, best_len = path:lower(), nil, 0
  for suffix, f in pairs(image.formats) do
    if #suffix > best_len and lower:sub(-#suffix) == suffix then best, best_len = f, #suffix end
  end
  if not best then
    local known = {}
    for suffix in pairs(image.formats) do known[#known + 1] = suffix end
    table.sort(known)
    error(string.format("lumen.image.%s: '%s' has no known image suffix (expected one of %s)", who, path,
      #known > 0 and table.concat(known, ', ') or 'none: no format is loaded'), 3)
  end
  return best
end

-- A DICOM series folder, or a file with no known suffix that has the DICM
-- preamble (DICOM files often have no suffix), goes to the DICOM reader.
local function dicom_fallback(path)
  if type(path) ~= 'string' or not image.dicom then return nil end
  if image.dicom.is_dir(path) then return image.dicom end
  local lower = path:lower()
  for suffix in pairs(image.formats) do
    if lower:sub(-#suffix) == suffix then return nil end
  end
  local fh = io.open(path, 'rb')
  local head = fh and fh:read(132)
  if fh then fh:close() end
  if head and #head == 132 and head:sub(129) == 'DICM' then return image.dicom end
  return nil
end

function image.read(path, opts)
  local f = dicom_fallback(path) or format_of(path, 'read')
  if not f.read then error("lumen.image.read: cannot read '" .. path .. "': the format is write-only", 2) end
  return f.read(path, opts or {})
end

function Image:write(path, opts)
  local f = format_of(path, 'write')
  if not f.write then error("lumen.image.write: cannot write '" .. path .. "': the format is read-only", 2) end
  f.write(self, path, opts or {})
  return self
end

-- Formats: one file each, lua/lumen/image/<name>.lua, returning
-- function(image, lumen) that adds entries to image.formats; a missing
-- file is skipped. 'ops' (image/ops.lua) adds resampling, reorientation,
-- cropping and intensity methods to Image the same way; 'deform'
-- (image/deform.lua) adds image.deform, random smooth deformations.
for _, name in ipairs { 'nifti', 'mha', 'png', 'dicom', 'ops', 'deform' } do
  local ok, mod = pcall(require, 'lumen.image.' .. name)
  if ok then
    mod(image, lumen)
  elseif not tostring(mod):find("module 'lumen.image." .. name .. "' not found", 1, true) then
    error(mod, 0)
  end
end

return image
