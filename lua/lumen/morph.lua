-- morph.lua: binary morphology on masks (src/ops/morph.c).
--
--   local morph = require 'lumen.morph'
--   local d = morph.distance(mask, {1, 1, 2.5})        -- f64, mm to the nearest outside voxel
--   local labels, n, sizes = morph.components(mask)    -- i32 labels 1..n, sizes[k] voxels
--   local big = morph.keep_largest(mask)               -- u8
--   local clean = morph.remove_small(mask, 20)         -- drop components under 20 voxels
--   local clean = morph.remove_small(mask, 50, {spacing = {1, 1, 3}})   -- ... under 50 mm^3
--   local filled = morph.fill_holes(mask)
--   local e, d = morph.erode(mask, 2), morph.dilate(mask, 2)
--   local o, c = morph.open(mask, 1), morph.close(mask, 1)
--   local t = morph.otsu(image, {mask = brain, bins = 256})
--
-- A mask is an integer or bool tensor of 1 to 3 dims (nonzero = in), with
-- any strides; results are u8 masks of its shape (0/1) unless said. Spacing
-- is a number or a list of one number per dim (mm), default 1.
--
-- Definitions:
--   distance      scipy.ndimage.distance_transform_edt(mask, sampling=spacing):
--                 exact Euclidean distance, 0 outside the mask. When the mask
--                 covers the whole volume every value is math.huge (scipy
--                 then returns distances to an arbitrary point).
--   components    connectivity counts neighbours: 6, 18 or 26 in 3-D, 4 or 8
--                 in 2-D, 2 in 1-D; the default is full connectivity (26, 8),
--                 as skimage.measure.label (scipy.ndimage.label's default
--                 structure is the faces only: 6, 4). Labels are numbered in
--                 the order of each component's first voxel in C order, as
--                 scipy.ndimage.label numbers them.
--   erode/dilate  the ball of offsets o with |o|^2 <= radius^2 voxels
--                 (radius 1: the cross, scipy's generate_binary_structure(nd, 1));
--                 outside the volume counts as background for erosion
--                 (scipy's default border_value=0).
--   open          dilate(erode(mask)): scipy's binary_opening.
--   close         erode(dilate(mask)) with outside counted as foreground for
--                 the erosion, as skimage's binary_closing: a closing never
--                 removes a mask voxel (scipy's binary_closing erodes masks
--                 that touch the border).
--   fill_holes    background components (face connectivity) that touch no
--                 border become foreground: scipy's binary_fill_holes.
--   otsu          skimage.filters.threshold_otsu's rule for float images on a
--                 histogram of `bins` equal bins over [min, max] (numpy's
--                 binning), over the voxels where mask is nonzero when given;
--                 the threshold is a bin centre (the value itself when all
--                 values are equal). Integer images use the same bins
--                 (skimage gives integer images one bin per value).
--
-- Every function runs in C over the whole volume: a distance transform is
-- one linear pass per axis (Felzenszwalb and Huttenlocher's lower envelope,
-- lines in parallel), whatever the radius; components are one union-find
-- scan.
local ffi = require 'ffi'
local lumen = require 'lumen'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

local morph = {}

-- Shared with metrics.lua (morph.util): argument checks whose errors blame
-- the first line outside these two files.
local util = {}
morph.util = util

local function ours(src)
  return src:match('lumen/morph%.lua$') or src:match('lumen/metrics%.lua$')
end
-- The level, for error() in the function that calls this, of the first
-- caller outside morph.lua and metrics.lua.
function util.level()
  local l = 1
  while true do
    local info = debug.getinfo(l + 1, 'S')
    if not info or not ours(info.source) then return l end
    l = l + 1
  end
end
local level = util.level

function util.fail(name, ...)
  error('lumen.' .. name .. ': ' .. string.format(...), level())
end
local fail = util.fail

-- the C message under name (C names its own op)
function util.fail_c(name)
  core.fail_as(name, level())
end

function util.describe(v)
  if lumen.is_tensor(v) then return 'a tensor' end
  if type(v) == 'table' then return 'a table' end
  return type(v) == 'string' and string.format("'%s'", v) or tostring(v)
end

-- The handle of a tensor argument.
function util.handle(name, t, what)
  if not lumen.is_tensor(t) then fail(name, '%s must be a tensor, got %s', what, util.describe(t)) end
  if t.h == nil then fail(name, '%s was freed', what) end
  return t.h
end

-- Spacing for a tensor of nd dims: nil (1), a number, or a list of nd
-- numbers; a double[nd] for C (positivity is checked there).
function util.spacing(name, s, nd)
  local out = ffi.new('double[?]', math.max(nd, 1))
  if s == nil then s = 1 end
  if type(s) == 'number' then
    for i = 0, nd - 1 do out[i] = s end
  elseif type(s) == 'table' and not lumen.is_tensor(s) and #s == nd then
    for i = 1, nd do
      if type(s[i]) ~= 'number' then fail(name, 'spacing entry %d is %s, expected a number', i, util.describe(s[i])) end
      out[i - 1] = s[i]
    end
  else
    fail(name, 'spacing must be a number or a list of %d numbers (one per dim), got %s', nd,
      type(s) == 'table' and not lumen.is_tensor(s) and ('a list of ' .. #s) or util.describe(s))
  end
  for i = 0, nd - 1 do
    if not (out[i] > 0 and out[i] < math.huge) then
      fail(name, 'spacing %s along dim %d, expected a positive finite number', tostring(out[i]), i)
    end
  end
  return out
end

-- An options table with only known names.
function util.options(name, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= 'table' or lumen.is_tensor(opts) then
    fail(name, 'options must be a table {%s}, got %s', table.concat(known, ', '), util.describe(opts))
  end
  for k in pairs(opts) do
    local ok = false
    for _, n in ipairs(known) do ok = ok or n == k end
    if not ok then fail(name, "unknown option '%s' (expected %s)", tostring(k), table.concat(known, ', ')) end
  end
  return opts
end

function util.int(name, v, what, lo)
  if type(v) ~= 'number' or v ~= math.floor(v) or v < lo or v >= 2 ^ 53 then
    fail(name, '%s must be an integer >= %d, got %s', what, lo, util.describe(v))
  end
  return v
end

-- The connectivity option for nd dims (default: full).
function util.connectivity(name, c, nd)
  local full = ({ 2, 8, 26 })[nd] or 26
  if c == nil then return full end
  local allowed = ({ { 2 }, { 4, 8 }, { 6, 18, 26 } })[nd] or { 6, 18, 26 }
  for _, a in ipairs(allowed) do
    if c == a then return c end
  end
  fail(name, 'connectivity %s for a %d-D mask, expected %s', util.describe(c), nd, table.concat(allowed, ', '))
end

function util.dim(t)
  local info = core.info(t)
  return tonumber(info.ndim)
end

-- components of mask: labels (tensor), n, sizes (tensor n + 1)
function util.components(name, mask, connectivity)
  local h = util.handle(name, mask, 'mask')
  local nd = util.dim(mask)
  local conn = util.connectivity(name, connectivity, nd)
  core.out1[0], core.out2[0] = nil, nil
  if C.lm_label_components(ctx, h, conn, core.out1, core.out2) ~= 0 then util.fail_c(name) end
  local labels, sizes = core.wrap(core.out1[0]), core.wrap(core.out2[0])
  return labels, sizes:numel() - 1, sizes
end

-- u8 mask of the labels whose keep[k] (Lua list over 0..n) is true
function util.select(name, labels, keep, n)
  local k = ffi.new('uint8_t[?]', n + 1)
  for i = 0, n do k[i] = keep[i] and 1 or 0 end
  core.out1[0] = nil
  if C.lm_label_select(ctx, labels.h, k, n + 1, core.out1) ~= 0 then util.fail_c(name) end
  return core.wrap(core.out1[0])
end

local function sizes_list(sizes, n)
  local p = ffi.cast('int64_t *', sizes:data_ptr())
  local list = {}
  for k = 1, n do list[k] = tonumber(p[k]) end
  return list
end

function morph.distance(mask, spacing)
  local name = 'morph.distance'
  local h = util.handle(name, mask, 'mask')
  local sp = util.spacing(name, spacing, util.dim(mask))
  core.out1[0] = nil
  if C.lm_distance_transform(ctx, h, sp, core.out1) ~= 0 then util.fail_c(name) end
  return core.wrap(core.out1[0])
end

-- labels (i32), n, sizes (Lua list: sizes[k] voxels of label k)
function morph.components(mask, opts)
  local name = 'morph.components'
  opts = util.options(name, opts, { 'connectivity' })
  local labels, n, sizes = util.components(name, mask, opts.connectivity)
  return labels, n, sizes_list(sizes, n)
end

function morph.keep_largest(mask, opts)
  local name = 'morph.keep_largest'
  opts = util.options(name, opts, { 'connectivity' })
  local labels, n, sizes = util.components(name, mask, opts.connectivity)
  local s = sizes_list(sizes, n)
  local best = nil
  for k = 1, n do
    if not best or s[k] > s[best] then best = k end -- the first of equal sizes
  end
  return util.select(name, labels, { [best or -1] = true }, n)
end

-- Removes components smaller than min_size voxels, or mm^3 with spacing.
function morph.remove_small(mask, min_size, opts)
  local name = 'morph.remove_small'
  opts = util.options(name, opts, { 'connectivity', 'spacing' })
  if type(min_size) ~= 'number' or min_size ~= min_size or min_size < 0 then
    fail(name, 'min_size must be a number >= 0 (voxels, or mm^3 with spacing), got %s', util.describe(min_size))
  end
  util.handle(name, mask, 'mask')
  local voxel = 1
  if opts.spacing ~= nil then
    local nd = util.dim(mask)
    local sp = util.spacing(name, opts.spacing, nd)
    for i = 0, nd - 1 do voxel = voxel * sp[i] end
  end
  local labels, n, sizes = util.components(name, mask, opts.connectivity)
  local s, keep = sizes_list(sizes, n), {}
  for k = 1, n do keep[k] = s[k] * voxel >= min_size end
  return util.select(name, labels, keep, n)
end

function morph.fill_holes(mask)
  local name = 'morph.fill_holes'
  local h = util.handle(name, mask, 'mask')
  core.out1[0] = nil
  if C.lm_fill_holes(ctx, h, core.out1) ~= 0 then util.fail_c(name) end
  return core.wrap(core.out1[0])
end

local function radius_arg(name, r)
  if r == nil then return 1 end
  return util.int(name, r, 'radius', 0)
end

local function erode(name, mask, radius, border)
  local h = util.handle(name, mask, 'mask')
  local r = radius_arg(name, radius)
  core.out1[0] = nil
  if C.lm_binary_erode(ctx, h, r, border, core.out1) ~= 0 then util.fail_c(name) end
  return core.wrap(core.out1[0])
end

local function dilate(name, mask, radius)
  local h = util.handle(name, mask, 'mask')
  local r = radius_arg(name, radius)
  core.out1[0] = nil
  if C.lm_binary_dilate(ctx, h, r, core.out1) ~= 0 then util.fail_c(name) end
  return core.wrap(core.out1[0])
end

function morph.erode(mask, radius) return erode('morph.erode', mask, radius, 0) end
function morph.dilate(mask, radius) return dilate('morph.dilate', mask, radius) end
function morph.open(mask, radius)
  local e = erode('morph.open', mask, radius, 0)
  local r = dilate('morph.open', e, radius)
  e:free()
  return r
end
function morph.close(mask, radius)
  local d = dilate('morph.close', mask, radius)
  local r = erode('morph.close', d, radius, 1)
  d:free()
  return r
end

function morph.otsu(image, opts)
  local name = 'morph.otsu'
  opts = util.options(name, opts, { 'mask', 'bins' })
  local h = util.handle(name, image, 'image')
  local m = opts.mask ~= nil and util.handle(name, opts.mask, 'mask') or nil
  local bins = opts.bins == nil and 256 or util.int(name, opts.bins, 'bins', 2)
  if bins > 2 ^ 24 then fail(name, 'bins must be at most 2^24, got %d', bins) end
  local t = ffi.new('double[1]')
  if C.lm_otsu(ctx, h, m, bins, t) ~= 0 then util.fail_c(name) end
  return t[0]
end

return morph
