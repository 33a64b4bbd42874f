-- augment.lua: random augmentation of image patches and their labels, 2-D
-- and 3-D, and the loops it is made of.
--
--   local augment = require 'lumen.augment'
--   local t = {
--     augment.flip{axes = {0, 1, 2}},                 -- each axis with p = 0.5
--     augment.rot90{planes = {{0, 1}}},              -- k * 90 degrees, k = 1..3
--     augment.affine{rotate = 15, scale = {0.85, 1.25}, shear = 0.1, p = 0.2},
--     augment.elastic{magnitude = 3, spacing = 16, p = 0.2},
--     augment.gamma{range = {0.7, 1.5}, p = 0.3},
--     augment.noise{std = {0, 0.1}, p = 0.1},
--     augment.blur{sigma = {0.5, 1.0}, p = 0.2},
--     augment.brightness{range = {0.75, 1.25}, p = 0.15},
--     augment.contrast{range = {0.75, 1.25}, p = 0.15},
--     augment.lowres{zoom = {0.5, 1.0}, p = 0.25},
--   }
--   local img2, lab2 = augment.apply(t, img, lab, {seed = 1})
--
-- Images are "channels x spatial" f32 tensors (a tensor with only the
-- spatial dims is one channel); labels are spatial integer tensors. Every
-- spatial transform (flip, rot90, affine, elastic) folds into one map from
-- output to input voxels, sampled once: linearly for images, nearest for
-- labels, so labels keep their values. Intensity transforms follow, in the
-- order given, on the images only. Angles are in degrees about the patch
-- centre, in physical space when a spacing is given (anisotropic voxels
-- rotate correctly); scale is the zoom of the content (2 shows it twice as
-- large); elastic displaces voxels by a smooth random field: normal values
-- with standard deviation `magnitude` voxels on a control grid every
-- `spacing` voxels, blended by cubic B-splines.
--
-- Randomness comes from augment.rng(seed, ...), a counter-based generator:
-- the same seed and counters give the same draws whatever thread runs them.
local ffi = require 'ffi'
local bit = require 'bit'
local lumen = require 'lumen'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

local augment = {}

-- ------------------------------------------------------------------
-- the C loops

local function nsp_of(x, n, op)
  local d = x:dim()
  if d == n then return x:unsqueeze(0), true end
  if d == n + 1 then return x, false end
  error(string.format('lumen.%s: input is %d-D, expected %d spatial dims with or without a channel dim first', op, d, n), 3)
end

local function doubles(list) return ffi.new('double[?]', #list, list) end
local function int64s(list) return ffi.new('int64_t[?]', #list, list) end

-- warp(x, {size =, matrix =, displacement =, order = 1, cval = 0}):
-- x channels x spatial (or spatial), matrix nsp rows of nsp + 1 from output
-- to input voxel indices.
function augment.warp(x, opts)
  local op = 'augment.warp'
  core.options(opts, op, { 'size', 'matrix', 'displacement', 'order', 'cval' }, 2)
  local size = opts.size
  if type(size) ~= 'table' or (#size ~= 2 and #size ~= 3) then
    error('lumen.' .. op .. ': size must be a list of 2 or 3 sizes', 2)
  end
  local n = #size
  local xc, added = nsp_of(x, n, op)
  local m = {}
  if type(opts.matrix) ~= 'table' or #opts.matrix ~= n then
    error(string.format('lumen.%s: matrix must have %d rows of %d numbers', op, n, n + 1), 2)
  end
  for a = 1, n do
    local row = opts.matrix[a]
    if type(row) ~= 'table' or #row ~= n + 1 then
      error(string.format('lumen.%s: matrix must have %d rows of %d numbers', op, n, n + 1), 2)
    end
    for b = 1, n + 1 do m[#m + 1] = row[b] end
  end
  local disp = opts.displacement and core.handle(opts.displacement, op, 'displacement') or nil
  local y = core.call(C.lm_warp, core.handle(xc:contiguous(), op, 'input'), n, doubles(m), disp,
    opts.order or 1, opts.cval or 0, int64s(size), core.out1)
  return added and y:squeeze(0) or y
end

-- gaussian_filter(x, sigma): sigma a number (every spatial dim; a 2-D
-- tensor is one image, a 3-D one a volume, 4-D channels x volume) or a
-- list (its length is the number of spatial dims, the last ones of x).
function augment.gaussian_filter(x, sigma)
  local op = 'augment.gaussian_filter'
  local sig = sigma
  if type(sigma) == 'number' then
    local n = math.min(x:dim(), 3)
    sig = {}
    for a = 1, n do sig[a] = sigma end
  elseif type(sigma) ~= 'table' or (#sigma ~= 2 and #sigma ~= 3) then
    error('lumen.' .. op .. ': sigma must be a number or a list of 2 or 3 numbers', 2)
  end
  local n = #sig
  local shape = x:size()
  if #shape < n then error(string.format('lumen.%s: input is %d-D, sigma has %d entries', op, #shape, n), 2) end
  local flat = { -1 }
  for a = #shape - n + 1, #shape do flat[#flat + 1] = shape[a] end
  local y = core.call(C.lm_gaussian_filter, core.handle(x:contiguous():reshape(flat), op, 'input'), n, doubles(sig), core.out1)
  return y:reshape(shape)
end

-- bspline_upsample(grid, size): channels x coarse grid -> channels x size.
function augment.bspline_upsample(grid, size)
  return core.call(C.lm_bspline_upsample, core.handle(grid:contiguous(), 'augment.bspline_upsample', 'control grid'),
    #size, int64s(size), core.out1)
end

-- class_locations(label, limit, seed) -> list (by class 0..max) of i64
-- tensors of flat voxel indices, at most limit each.
function augment.class_locations(label, limit, seed)
  local op = 'augment.class_locations'
  local locs, offs = ffi.new('lm_tensor*[1]'), ffi.new('lm_tensor*[1]')
  core.check(C.lm_class_locations(ctx, core.handle(label:contiguous(), op, 'label'), limit or 10000, seed or 0, locs, offs), 2)
  local loc, off = core.wrap(locs[0]), core.wrap(offs[0])
  local o, out = off:totable(), {}
  for c = 1, #o - 1 do out[c] = loc:narrow(0, o[c], o[c + 1] - o[c]) end
  return out
end

-- ------------------------------------------------------------------
-- random numbers: splitmix64 over (seed, counters)

local Rng = {}
Rng.__index = Rng
local U64 = ffi.typeof('uint64_t')

local function mix(z)
  z = bit.bxor(z, bit.rshift(z, 30)) * 0xBF58476D1CE4E5B9ULL
  z = bit.bxor(z, bit.rshift(z, 27)) * 0x94D049BB133111EBULL
  return bit.bxor(z, bit.rshift(z, 31))
end

-- rng(seed, ...): a generator for this seed and these counters (integers).
function augment.rng(seed, ...)
  local s = mix(U64(seed or 0) + 0x9E3779B97F4A7C15ULL)
  for i = 1, select('#', ...) do s = mix(s + U64((select(i, ...))) * 0x9E3779B97F4A7C15ULL + 1) end
  return setmetatable({ state = s }, Rng)
end

function Rng:next64()
  self.state = self.state + 0x9E3779B97F4A7C15ULL
  return mix(self.state)
end
function Rng:uniform(lo, hi) -- in [lo, hi), default [0, 1)
  local u = tonumber(bit.rshift(self:next64(), 11)) * 2 ^ -53
  if lo == nil then return u end
  return lo + (hi - lo) * u
end
function Rng:int(lo, hi) return lo + math.floor(self:uniform() * (hi - lo + 1)) end -- lo..hi
function Rng:chance(p) return self:uniform() < p end
function Rng:normal()
  local u1, u2 = self:uniform(), self:uniform()
  return math.sqrt(-2 * math.log(1 - u1)) * math.cos(2 * math.pi * u2)
end
-- a seed for lumen's own generator (tensor-sized draws)
function Rng:seed() return tonumber(bit.rshift(self:next64(), 12)) end

-- ------------------------------------------------------------------
-- transforms: plain tables (they travel to worker threads as data)

local function range_opt(v, op, what, default)
  if v == nil then v = default end
  if type(v) == 'number' then return { v, v } end
  if type(v) ~= 'table' or type(v[1]) ~= 'number' or type(v[2]) ~= 'number' or v[1] > v[2] then
    error(string.format('lumen.augment.%s: %s must be a number or a range {lo, hi} with lo <= hi', op, what), 3)
  end
  return { v[1], v[2] }
end

local function prob(v, op, default)
  v = v == nil and default or v
  if type(v) ~= 'number' or v < 0 or v > 1 then error(string.format('lumen.augment.%s: p must be in [0, 1]', op), 3) end
  return v
end

local function axes_opt(v, op, what, default)
  v = v == nil and default or v
  if type(v) ~= 'table' then error(string.format('lumen.augment.%s: %s must be a list of spatial axes (0-based)', op, what), 3) end
  for _, a in ipairs(v) do
    if not core.is_int(a) or a < 0 or a > 2 then
      error(string.format('lumen.augment.%s: %s: axis %s, expected 0, 1 or 2', op, what, tostring(a)), 3)
    end
  end
  return v
end

local make = {}
function make.flip(o)
  return { kind = 'flip', spatial = true, axes = axes_opt(o.axes, 'flip', 'axes', { 0, 1, 2 }), p = prob(o.p, 'flip', 0.5) }, { 'axes', 'p' }
end
function make.rot90(o)
  local planes = o.planes or { { 0, 1 } }
  if type(planes) ~= 'table' then error('lumen.augment.rot90: planes must be a list of axis pairs', 3) end
  for _, pl in ipairs(planes) do
    axes_opt(pl, 'rot90', 'planes', nil)
    if #pl ~= 2 or pl[1] == pl[2] then error('lumen.augment.rot90: each plane must be two different axes', 3) end
  end
  return { kind = 'rot90', spatial = true, planes = planes, p = prob(o.p, 'rot90', 0.5) }, { 'planes', 'p' }
end
function make.affine(o)
  local rot = o.rotate or 0
  if type(rot) == 'number' then rot = { rot, rot, rot } end
  if type(rot) ~= 'table' then error('lumen.augment.affine: rotate must be degrees, or one maximum per axis', 3) end
  return { kind = 'affine', spatial = true, rotate = rot, scale = range_opt(o.scale, 'affine', 'scale', 1),
    isotropic = o.isotropic ~= false, shear = range_opt(o.shear, 'affine', 'shear', 0)[2],
    translate = range_opt(o.translate, 'affine', 'translate', 0)[2], p = prob(o.p, 'affine', 1) },
    { 'rotate', 'scale', 'isotropic', 'shear', 'translate', 'p' }
end
function make.elastic(o)
  local mag, sp = o.magnitude or 2, o.spacing or 16
  if type(mag) ~= 'number' or mag < 0 then error('lumen.augment.elastic: magnitude must be a number of voxels >= 0', 3) end
  if type(sp) ~= 'number' or sp < 2 then error('lumen.augment.elastic: spacing must be at least 2 voxels', 3) end
  return { kind = 'elastic', spatial = true, magnitude = mag, spacing = sp, p = prob(o.p, 'elastic', 1) },
    { 'magnitude', 'spacing', 'p' }
end
-- transforms with one range option and p
local function ranged(kind, field, default)
  make[kind] = function(o)
    return { kind = kind, [field] = range_opt(o[field], kind, field, default), p = prob(o.p, kind, 1) }, { field, 'p' }
  end
end
ranged('gamma', 'range', { 0.7, 1.5 })
ranged('noise', 'std', { 0, 0.1 })
ranged('blur', 'sigma', { 0.5, 1 })
ranged('brightness', 'range', { 0.75, 1.25 })
ranged('contrast', 'range', { 0.75, 1.25 })
function make.lowres(o)
  local z = range_opt(o.zoom, 'lowres', 'zoom', { 0.5, 1 })
  if z[1] <= 0 or z[2] > 1 then error('lumen.augment.lowres: zoom must lie in (0, 1]', 3) end
  return { kind = 'lowres', zoom = z, p = prob(o.p, 'lowres', 1) }, { 'zoom', 'p' }
end

for name, fn in pairs(make) do
  augment[name] = function(opts)
    opts = opts or {}
    if type(opts) ~= 'table' then error('lumen.augment.' .. name .. ': expected an options table', 2) end
    local t, known = fn(opts)
    core.options(opts, 'augment.' .. name, known, 2)
    return t
  end
end

-- ------------------------------------------------------------------
-- the spatial map: output voxel p -> input voxel centre + A (p + d - cp)

local function identity(n)
  local m = {}
  for a = 1, n do
    m[a] = {}
    for b = 1, n do m[a][b] = a == b and 1 or 0 end
  end
  return m
end

local function matmul(a, b)
  local n, m = #a, identity(#a)
  for i = 1, n do
    for j = 1, n do
      local s = 0
      for k = 1, n do s = s + a[i][k] * b[k][j] end
      m[i][j] = s
    end
  end
  return m
end

-- rotation by angle (radians) in the plane of axes i, j (1-based)
local function plane_rotation(n, i, j, angle)
  local m = identity(n)
  local c, s = math.cos(angle), math.sin(angle)
  m[i][i], m[i][j], m[j][i], m[j][j] = c, -s, s, c
  return m
end

-- The linear part (physical space) and the displacement field for one
-- sample, drawn from rng; nil field when there is no elastic transform.
local function spatial_draw(transforms, n, patch, rng)
  local A, field, shift = identity(n), nil, nil
  for _, t in ipairs(transforms) do
    if t.kind == 'flip' then
      for _, ax in ipairs(t.axes) do
        if ax < n and rng:chance(t.p) then
          local f = identity(n)
          f[ax + 1][ax + 1] = -1
          A = matmul(A, f)
        end
      end
    elseif t.kind == 'rot90' and rng:chance(t.p) then
      local usable = {}
      for _, pl in ipairs(t.planes) do if pl[1] < n and pl[2] < n then usable[#usable + 1] = pl end end
      if #usable > 0 then
        local pl = usable[rng:int(1, #usable)]
        A = matmul(A, plane_rotation(n, pl[1] + 1, pl[2] + 1, rng:int(1, 3) * math.pi / 2))
      end
    elseif t.kind == 'affine' and rng:chance(t.p) then
      local planes = n == 2 and { { 1, 2 } } or { { 2, 3 }, { 1, 3 }, { 1, 2 } } -- about axes 0, 1, 2
      for k, pl in ipairs(planes) do
        local lim = math.rad(t.rotate[k] or 0)
        if lim ~= 0 then A = matmul(A, plane_rotation(n, pl[1], pl[2], rng:uniform(-lim, lim))) end
      end
      local s, S = rng:uniform(t.scale[1], t.scale[2]), identity(n)
      for a = 1, n do
        if not t.isotropic and a > 1 then s = rng:uniform(t.scale[1], t.scale[2]) end
        S[a][a] = 1 / s
      end
      A = matmul(A, S)
      if t.shear ~= 0 then
        local H = identity(n)
        for a = 1, n do
          for b = 1, n do if a ~= b then H[a][b] = rng:uniform(-t.shear, t.shear) end end
        end
        A = matmul(A, H)
      end
      shift = shift or {}
      for a = 1, n do shift[a] = (shift[a] or 0) + rng:uniform(-t.translate, t.translate) end
    elseif t.kind == 'elastic' and rng:chance(t.p) and t.magnitude > 0 then
      local grid = { n }
      for a = 1, n do grid[a + 1] = math.max(4, math.ceil((patch[a] - 1) / t.spacing) + 3) end
      lumen.manual_seed(rng:seed())
      local coarse = lumen.randn(grid) * t.magnitude
      local f = augment.bspline_upsample(coarse, patch)
      -- a patch one voxel thick (2-D slices of a volume) stays in its plane
      for a = 1, n do if patch[a] == 1 then f:select(0, a - 1):fill_(0) end end
      field = field and field + f or f
    end
  end
  return A, field, shift
end

-- The matrix for warp: input voxel = centre + D^-1 A D (p - cp), with D
-- the voxel spacing (so A acts in physical space).
local function warp_matrix(A, shift, n, patch, centre, spacing)
  local m = {}
  for a = 1, n do
    m[a] = {}
    local off = centre[a] + (shift and shift[a] or 0)
    for b = 1, n do
      local v = A[a][b] * (spacing and spacing[b] / spacing[a] or 1)
      m[a][b] = v
      off = off - v * (patch[b] - 1) / 2
    end
    m[a][n + 1] = off
  end
  return m
end

-- ------------------------------------------------------------------
-- intensity transforms on one channels x spatial f32 patch

local function channel_views(x)
  local out = {}
  for c = 0, x:size(0) - 1 do out[#out + 1] = x:select(0, c) end
  return out
end

local intensity = {}
function intensity.gamma(x, t, rng)
  -- per channel: to [0, 1] by its range, power, back
  local parts = {}
  for i, ch in ipairs(channel_views(x)) do
    local lo, hi = ch:min():item(), ch:max():item()
    local g = rng:uniform(t.range[1], t.range[2])
    if hi > lo then ch = ((ch - lo) / (hi - lo)):pow(g) * (hi - lo) + lo end
    parts[i] = ch
  end
  return lumen.stack(parts, 0)
end
function intensity.noise(x, t, rng)
  local std = rng:uniform(t.std[1], t.std[2])
  lumen.manual_seed(rng:seed())
  return x + lumen.randn(x:size()) * std
end
function intensity.blur(x, t, rng)
  local n, sig = x:dim() - 1, {}
  local s = rng:uniform(t.sigma[1], t.sigma[2])
  for a = 1, n do sig[a] = s end
  return augment.gaussian_filter(x, sig)
end
function intensity.brightness(x, t, rng) return x * rng:uniform(t.range[1], t.range[2]) end
function intensity.contrast(x, t, rng)
  local parts = {}
  for i, ch in ipairs(channel_views(x)) do
    local mean, lo, hi = ch:mean():item(), ch:min():item(), ch:max():item()
    parts[i] = ((ch - mean) * rng:uniform(t.range[1], t.range[2]) + mean):clamp(lo, hi)
  end
  return lumen.stack(parts, 0)
end
function intensity.lowres(x, t, rng)
  local F = require('lumen.nn').F
  local n, small = x:dim() - 1, {}
  local z = rng:uniform(t.zoom[1], t.zoom[2])
  for a = 1, n do small[a] = math.max(1, math.floor(x:size(a) * z + 0.5)) end
  local full = x:size()
  table.remove(full, 1)
  local down = F.interpolate(x:unsqueeze(0), { size = small, mode = 'nearest' })
  return F.interpolate(down, { size = full, mode = n == 2 and 'bilinear' or 'trilinear', align_corners = false }):squeeze(0)
end

-- ------------------------------------------------------------------
-- one sample

-- sample(transforms, image, label, {patch =, centre =, spacing =, rng =,
-- cval = 0, label_cval = 0}): image channels x spatial f32, label spatial
-- (or nil); the patch (default the image's size) is cut around centre
-- (input voxel coordinates; default the image's centre). Returns the
-- augmented image and label patches. lumen's generator is used for the
-- tensor-sized draws (reseeded from rng).
function augment.sample(transforms, image, label, o)
  local n = #o.patch
  local patch, rng = o.patch, o.rng
  local A, field, shift = spatial_draw(transforms, n, patch, rng)
  local m = warp_matrix(A, shift, n, patch, o.centre, o.spacing)
  local img = augment.warp(image, { size = patch, matrix = m, displacement = field, order = 1, cval = o.cval or 0 })
  local lab = label and augment.warp(label, { size = patch, matrix = m, displacement = field, order = 0, cval = o.label_cval or 0 })
  for _, t in ipairs(transforms) do
    if not t.spatial and rng:chance(t.p) then img = intensity[t.kind](img, t, rng) end
  end
  return img, lab
end

-- apply(transforms, image, label, {seed =, spacing =}): augments a whole
-- image (channels x spatial or spatial) and its label; lumen's own random
-- state is left as it was.
function augment.apply(transforms, image, label, opts)
  opts = opts or {}
  core.options(opts, 'augment.apply', { 'seed', 'spacing', 'cval', 'label_cval' }, 2)
  if type(transforms) ~= 'table' then error('lumen.augment.apply: transforms must be a list', 2) end
  local n = label and label:dim() or (image:dim() == 4 and 3 or image:dim() == 3 and 3 or 2)
  local img = image:dim() == n and image:unsqueeze(0) or image
  if img:dim() ~= n + 1 then error('lumen.augment.apply: image and label shapes do not match', 2) end
  local patch, centre = {}, {}
  for a = 1, n do
    patch[a] = img:size(a)
    centre[a] = (patch[a] - 1) / 2
    if label and label:size(a - 1) ~= patch[a] then error('lumen.augment.apply: image and label shapes do not match', 2) end
  end
  local state = lumen.get_rng_state()
  local ok, a, b = pcall(augment.sample, transforms, img:to('f32'), label,
    { patch = patch, centre = centre, spacing = opts.spacing, rng = augment.rng(opts.seed or 0),
      cval = opts.cval, label_cval = opts.label_cval })
  lumen.set_rng_state(state)
  if not ok then error(a, 2) end
  if image:dim() == n then a = a:squeeze(0) end
  return a, b
end

return augment
