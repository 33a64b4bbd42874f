-- lesions.lua: seeded synthetic lesions with exact masks, inserted into a
-- real scan (Colin27 T1 and its brain mask, datasets/colin27.lua), like MS
-- plaques or small tumours: a few per case, hyper- or hypo-intense.
--
--   local lesions = require('lumen.data').get('lesions')
--   local img, lab, info = lesions.make{seed = 1, n_lesions = {1, 4},
--     radius_mm = {3, 10}, contrast = {0.2, 0.6}, polarity = 'both',
--     roughness = 0.25, rim_mm = 1.5, instances = false,
--     deform = nil or {magnitude_mm = 6, control_mm = 24},
--     image = nil, brain = nil, spacing = nil}
--   img: lumen.image f32 on the base's grid (same affine); lab: u8 0/1
--   (instances = true: i32, k for lesion k); info.lesions[k] = {centre
--   (voxel, 0-based), centre_mm, semi_axes_mm, rotation, contrast,
--   local_mean, voxels}; info.base and info.brain: the scan and mask the
--   lesions went into (deformed when deform is given; info.field is then
--   the displacement, see lumen.image.deform).
--   lesions.cases{n = 2, seed = 0, spacing =, ...}: seeds seed + 1 .. seed + n.
--
-- The base is opts.image with opts.brain (an image or tensor, nonzero =
-- brain) or else Colin27 (fetched into the lumen cache; spacing in mm
-- resamples it first). Each lesion:
--   shape   an ellipsoid with semi-axes a (mm, through the affine, so
--           voxel spacing and orientation count) and a random rotation,
--           made irregular by smooth noise n (a cubic B-spline of random
--           coefficients, scaled to |n| <= 1): label = e(x) + roughness *
--           n(x) <= 1, e the ellipsoid's normalised radius. The semi-axes
--           are drawn in [rmin / (1 - roughness), rmax / (1 + roughness)],
--           so every label voxel is within rmax mm of the centre and every
--           voxel within rmin mm of it is in the label.
--   edge    partial volume: the label blurred by a Gaussian of sigma
--           rim_mm / 2 (truncated at rim_mm, ceil(rim_mm / spacing) voxels
--           per axis) is the weight w in 0..1. rim_mm = 0: a hard edge.
--   change  img = max(0, base + w * contrast * m), m the mean of the base
--           over the brain voxels the lesion touches (local tissue);
--           contrast is drawn in the contrast range, negative (hypo) or
--           positive (hyper) as polarity says.
--   place   a brain voxel whose ball of the lesion's full reach (label
--           extent plus blur) lies inside the brain mask and the volume,
--           and away from the other lesions' reach: lesions never touch,
--           and nothing outside the brain changes.
-- Outside the labels dilated by the blur radius the image equals the base
-- exactly. The same seed gives the same case.
local lumen = require 'lumen'

local lesions = { name = 'lesions', synthetic = true,
  description = 'Colin27 T1 with seeded synthetic lesions (hyper/hypo, soft edges) and exact masks' }

local known = { image = true, brain = true, seed = true, n_lesions = true, radius_mm = true, contrast = true,
  polarity = true, roughness = true, rim_mm = true, instances = true, deform = true, spacing = true, cache = true,
  deb_dir = true, max_tries = true }

local floor, ceil, sqrt, max = math.floor, math.ceil, math.sqrt, math.max

local function fail(fmt, ...) error(string.format('lesions.make: ' .. fmt, ...), 3) end

local function range(v, name, lo_ok)
  if type(v) ~= 'table' or #v ~= 2 or type(v[1]) ~= 'number' or type(v[2]) ~= 'number' or not (v[1] <= v[2])
    or not lo_ok(v[1]) then
    fail('%s must be {lo, hi} with lo <= hi, got %s', name, type(v) == 'table' and
      ('{' .. table.concat(v, ', ') .. '}') or tostring(v))
  end
  return v[1], v[2]
end

-- Uniform draws on [0, 1) from lumen's generator, 64 at a time.
local function uniform_stream()
  local buf, at = nil, 65
  return function()
    if at > 64 then buf, at = lumen.rand(64):to('f64'):totable(), 1 end
    at = at + 1
    return buf[at - 1]
  end
end

-- A rotation matrix from a random unit quaternion (4 normal draws).
local function random_rotation(u)
  local q, n = {}, 0
  for i = 1, 4 do
    -- Box-Muller from two uniforms
    local a, b = max(u(), 1e-300), u()
    q[i] = sqrt(-2 * math.log(a)) * math.cos(2 * math.pi * b)
    n = n + q[i] ^ 2
  end
  n = sqrt(n)
  local w, x, y, z = q[1] / n, q[2] / n, q[3] / n, q[4] / n
  return {
    { 1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y) },
    { 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x) },
    { 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y) },
  }
end

local function inverse3(m)
  local a, b, c = m[1][1], m[1][2], m[1][3]
  local d, e, f = m[2][1], m[2][2], m[2][3]
  local g, h, i = m[3][1], m[3][2], m[3][3]
  local det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
  if det == 0 then return nil end
  return {
    { (e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det },
    { (f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det },
    { (d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det },
  }
end

-- Index offsets of a box (2h + 1 voxels per axis) as three broadcastable
-- f64 tensors, and their world offsets (mm) through the 3x3 M.
local function box_coords(h, M)
  local d = {}
  for a = 1, 3 do
    local view = { 1, 1, 1 }
    view[a] = 2 * h[a] + 1
    d[a] = lumen.arange(-h[a], h[a] + 1):to('f64'):reshape(unpack(view))
  end
  local w = {}
  for r = 1, 3 do w[r] = d[1] * M[r][1] + d[2] * M[r][2] + d[3] * M[r][3] end
  return w
end

local function narrow3(t, lo, n)
  return t:narrow(0, lo[1], n[1]):narrow(1, lo[2], n[2]):narrow(2, lo[3], n[3])
end

-- Separable Gaussian blur of a 3-D f32 tensor with zero padding: sigma in
-- mm, truncated at r[a] voxels along axis a of spacing sp[a].
local function blur(x, sigma, r, sp)
  local F = require('lumen.nn').F
  local t = x:reshape(1, 1, unpack(x:size()))
  for a = 1, 3 do
    if r[a] > 0 then
      local g, sum = {}, 0
      for i = -r[a], r[a] do
        g[#g + 1] = math.exp(-(i * sp[a]) ^ 2 / (2 * sigma ^ 2))
        sum = sum + g[#g]
      end
      for i = 1, #g do g[i] = g[i] / sum end
      local shape, pad = { 1, 1, 1, 1, 1 }, { 0, 0, 0 }
      shape[a + 2], pad[a] = #g, r[a]
      t = F.conv3d(t, lumen.tensor(g):to('f32'):reshape(unpack(shape)), nil, { padding = pad })
    end
  end
  return t:reshape(unpack(x:size()))
end

local function check_opts(opts)
  opts = opts or {}
  if type(opts) ~= 'table' then fail('options must be a table, got %s', type(opts)) end
  for k in pairs(opts) do
    if not known[k] then
      local names = {}
      for n in pairs(known) do names[#names + 1] = n end
      table.sort(names)
      fail("unknown option '%s' (expected %s)", tostring(k), table.concat(names, ', '))
    end
  end
  return opts
end

function lesions.make(opts)
  opts = check_opts(opts)
  local image = require 'lumen.image'
  local seed = opts.seed or 0
  if type(seed) ~= 'number' or seed ~= floor(seed) or seed < 0 then fail('seed must be an integer >= 0, got %s', tostring(seed)) end
  local nlo, nhi = range(opts.n_lesions or { 1, 4 }, 'n_lesions', function(v) return v >= 1 and v == floor(v) end)
  if nhi ~= floor(nhi) then fail('n_lesions must be whole numbers, got {%s, %s}', nlo, nhi) end
  local rmin, rmax = range(opts.radius_mm or { 3, 10 }, 'radius_mm', function(v) return v > 0 end)
  local clo, chi = range(opts.contrast or { 0.2, 0.6 }, 'contrast', function(v) return v >= 0 end)
  local rough = opts.roughness or 0.25
  if type(rough) ~= 'number' or not (rough >= 0 and rough < 1) then fail('roughness must be in [0, 1), got %s', tostring(rough)) end
  local alo, ahi = rmin / (1 - rough), rmax / (1 + rough)
  if alo > ahi then
    fail('radius_mm {%g, %g} is too narrow for roughness %g: rmax / rmin must be at least (1 + r) / (1 - r) = %.3g',
      rmin, rmax, rough, (1 + rough) / (1 - rough))
  end
  local polarity = opts.polarity or 'both'
  if polarity ~= 'both' and polarity ~= 'hyper' and polarity ~= 'hypo' then
    fail("polarity must be 'both', 'hyper' or 'hypo', got %s", tostring(polarity))
  end
  if polarity ~= 'hyper' and chi > 1 then fail('contrast above 1 would make hypo-intense lesions negative: {%g, %g}', clo, chi) end
  local rim = opts.rim_mm or 1.5
  if type(rim) ~= 'number' or not (rim >= 0) then fail('rim_mm must be a number >= 0, got %s', tostring(rim)) end

  -- the base scan and its brain mask
  local base, brain = opts.image, opts.brain
  if base == nil then
    local c = require('lumen.data').get('colin27').load { spacing = opts.spacing, cache = opts.cache, deb_dir = opts.deb_dir }
    base, brain = c.image, c.brain
  end
  if getmetatable(base) ~= image.Image or base.data:dim() ~= 3 then
    fail('image must be a 3-D lumen.image, got %s', getmetatable(base) == image.Image and (base.data:dim() .. '-D') or type(base))
  end
  if brain == nil then fail('image was given without brain (the mask lesions must lie in)') end
  local brain_data = getmetatable(brain) == image.Image and brain.data or brain
  if not lumen.is_tensor(brain_data) or table.concat(brain_data:size(), 'x') ~= table.concat(base.data:size(), 'x') then
    fail('brain must be an image or tensor of the image shape %s', table.concat(base.data:size(), 'x'))
  end
  brain = image.new(brain_data:ne(0):to('u8'), { affine = base.affine })

  local field
  if opts.deform then
    local d = opts.deform
    if type(d) ~= 'table' then fail('deform must be a table {magnitude_mm =, control_mm =, steps =}, got %s', type(d)) end
    field = image.deform.random_field_for(base, { magnitude_mm = d.magnitude_mm or 6, control_mm = d.control_mm or 24,
      steps = d.steps, seed = seed })
    base = image.deform.apply(base, field, { order = 1 })
    brain = image.deform.apply(brain, field, { order = 0 })
  end

  local shape = base.data:size()
  local sp = base:spacing()
  local M = {}
  for r = 1, 3 do M[r] = { base.affine[r][1], base.affine[r][2], base.affine[r][3] } end
  local Minv = inverse3(M)
  if not Minv then fail('the image affine is singular') end
  local function to_mm(v)
    local w = {}
    for r = 1, 3 do w[r] = base.affine[r][1] * v[1] + base.affine[r][2] * v[2] + base.affine[r][3] * v[3] + base.affine[r][4] end
    return w
  end
  -- blur radius in voxels per axis, and its reach in mm
  local sigma = rim / 2
  local br, breach = {}, 0
  for a = 1, 3 do
    br[a] = rim > 0 and ceil(rim / sp[a] - 1e-9) or 0
    breach = breach + (br[a] * sp[a]) ^ 2
  end
  breach = sqrt(breach)

  local saved = lumen.get_rng_state()
  lumen.manual_seed(seed)
  local ok, res = pcall(function()
    local u = uniform_stream()
    local base_f = base.data:to('f32'):contiguous() -- may be base.data itself: read only
    local out = base_f:clone()
    local lab = lumen.zeros(shape, opts.instances and 'i32' or 'u8')
    local candidates = lumen.nonzero(brain.data)
    local ncand = candidates:size()[1]
    if ncand == 0 then fail('the brain mask is empty') end
    local count = nlo + floor(u() * (nhi - nlo + 1))
    local placed = {}
    for k = 1, count do
      local a = {}
      for i = 1, 3 do a[i] = alo + (ahi - alo) * u() end
      local R = random_rotation(u)
      local sign = polarity == 'hyper' and 1 or polarity == 'hypo' and -1 or (u() < 0.5 and -1 or 1)
      local contrast = sign * (clo + (chi - clo) * u())
      local extent = max(a[1], a[2], a[3]) * (1 + rough) -- farthest label voxel (mm)
      local reach = extent + breach                       -- farthest changed voxel (mm)
      local h = {}
      for d = 1, 3 do
        h[d] = ceil(extent * sqrt(Minv[d][1] ^ 2 + Minv[d][2] ^ 2 + Minv[d][3] ^ 2)) + br[d] + 1
      end
      local n = { 2 * h[1] + 1, 2 * h[2] + 1, 2 * h[3] + 1 }
      local wx = box_coords(h, M)
      local dist2 = wx[1] ^ 2 + wx[2] ^ 2 + wx[3] ^ 2
      -- a centre: a brain voxel whose box fits the volume and whose reach
      -- lies in the brain, away from the lesions placed before
      local centre, lo, cmm
      for _ = 1, opts.max_tries or 200 do
        local c = candidates:select(0, floor(u() * ncand)):totable()
        local fits = true
        for d = 1, 3 do fits = fits and c[d] - h[d] >= 0 and c[d] + h[d] <= shape[d] - 1 end
        if fits then
          local m = to_mm(c)
          for _, p in ipairs(placed) do
            local dd = sqrt((m[1] - p.centre_mm[1]) ^ 2 + (m[2] - p.centre_mm[2]) ^ 2 + (m[3] - p.centre_mm[3]) ^ 2)
            if dd <= reach + p.reach_mm then fits = false break end
          end
          if fits then
            local l = { c[1] - h[1], c[2] - h[2], c[3] - h[3] }
            local outside = dist2:le(reach ^ 2):logical_and(narrow3(brain.data, l, n):eq(0))
            if lumen.count_nonzero(outside):item() == 0 then centre, lo, cmm = c, l, m break end
          end
        end
      end
      if not centre then
        fail('could not place lesion %d of %d (reach %.1f mm) inside the brain mask in %d tries: ' ..
          'use a smaller radius_mm or fewer lesions', k, count, reach, opts.max_tries or 200)
      end
      -- the shape: ellipsoid radius in the lesion's rotated frame, plus noise
      local e2 = 0
      for i = 1, 3 do
        local q = wx[1] * R[1][i] + wx[2] * R[2][i] + wx[3] * R[3][i]
        e2 = e2 + (q / a[i]) ^ 2
      end
      local f = lumen.sqrt(e2)
      if rough > 0 then
        local ageo = (a[1] * a[2] * a[3]) ^ (1 / 3)
        local hn = {}
        for d = 1, 3 do hn[d] = max(1, 0.7 * ageo / sp[d]) end
        local cs = image.deform.control_shape(n, hn)
        local noise = image.deform.bspline(lumen.randn({ 1, unpack(cs) }, 'f64'), n, hn):select(0, 0)
        local top = lumen.amax(lumen.abs(noise)):item()
        if top > 0 then f = f + noise * (rough / top) end
      end
      local inside = f:le(1):logical_and(narrow3(brain.data, lo, n):ne(0))
      local w = inside:to('f32')
      if rim > 0 then w = blur(w, sigma, br, sp) end
      local touched = w:gt(0):logical_and(narrow3(brain.data, lo, n):ne(0))
      local bbox = narrow3(base_f, lo, n)
      local local_mean = lumen.sum(lumen.where(touched, bbox, bbox * 0)):item() /
        max(1, lumen.count_nonzero(touched):item())
      -- boxes may overlap other lesions (their reaches do not): write
      -- only where this lesion reaches
      local obox = narrow3(out, lo, n)
      local changed = lumen.clamp_min(bbox + w * (contrast * local_mean), 0)
      obox:copy_(lumen.where(touched, changed, obox))
      local lbox = narrow3(lab, lo, n)
      lbox:copy_(lumen.where(inside, lumen.full(n, opts.instances and k or 1, lab:dtype()), lbox))
      placed[k] = { centre = centre, centre_mm = cmm, semi_axes_mm = a, rotation = R, contrast = contrast,
        local_mean = local_mean, voxels = lumen.count_nonzero(inside):item(), extent_mm = extent, reach_mm = reach }
    end
    return { out = out, lab = lab, placed = placed }
  end)
  lumen.set_rng_state(saved)
  if not ok then error(res, 0) end

  local img = image.new(res.out, { affine = base.affine, meta = { lesions = res.placed, seed = seed } })
  local lab = image.new(res.lab, { affine = base.affine, meta = { lesions = res.placed, seed = seed } })
  return img, lab, { lesions = res.placed, base = base, brain = brain, field = field }
end

function lesions.cases(opts)
  opts = opts or {}
  local c
  if not opts.image then
    c = require('lumen.data').get('colin27').load { spacing = opts.spacing, cache = opts.cache, deb_dir = opts.deb_dir }
  end
  local cases = {}
  for i = 1, opts.n or 2 do
    local o = {}
    for k, v in pairs(opts) do if known[k] then o[k] = v end end -- `lumen data show` adds out, max, n
    o.spacing, o.cache, o.deb_dir = nil, nil, nil
    o.image, o.brain = o.image or c.image, o.brain or c.brain
    o.seed = (opts.seed or 0) + i
    local img, lab, info = lesions.make(o)
    cases[i] = { id = 'lesions_' .. o.seed, image = img, label = lab, brain = info.brain, lesions = info.lesions }
  end
  return cases
end

return lesions
