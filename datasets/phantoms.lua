-- phantoms.lua: piecewise-constant ellipse phantoms with exact label maps.
--   local ph = dofile('datasets/phantoms.lua')
--   local img, lab = ph.shepp_logan(n, {modified = true})
--     img: n x n f32 (dims x, y; y up in the picture), lab: n x n i64,
--     lab = index (1..10) of the last ellipse (in the table's order) that
--     holds the pixel centre, 0 outside; img = sum of the intensities of
--     every ellipse holding it.
--   local img, lab = ph.make{dim = 2 or 3, size = 64, n = 5, seed = 1}
--     random ellipses (2-D) or ellipsoids (3-D, rotated about z); label k
--     for the last one holding a voxel centre, intensity per label.
local lumen = require 'lumen'

local ph = { name = 'phantoms', synthetic = true,
  description = 'seeded 2-D/3-D ellipse phantoms and Shepp-Logan 2-D with exact labels' }

-- Shepp and Logan (1974): {intensity, semi-axis a (x), semi-axis b (y),
-- centre x, centre y, rotation in degrees}, on [-1, 1]^2. The modified
-- intensities (Toft) make the inner ellipses visible.
ph.shepp_logan_ellipses = {
  { 2.00, 0.6900, 0.9200, 0.00, 0.0000, 0 },
  { -0.98, 0.6624, 0.8740, 0.00, -0.0184, 0 },
  { -0.02, 0.1100, 0.3100, 0.22, 0.0000, -18 },
  { -0.02, 0.1600, 0.4100, -0.22, 0.0000, 18 },
  { 0.01, 0.2100, 0.2500, 0.00, 0.3500, 0 },
  { 0.01, 0.0460, 0.0460, 0.00, 0.1000, 0 },
  { 0.01, 0.0460, 0.0460, 0.00, -0.1000, 0 },
  { 0.01, 0.0460, 0.0230, -0.08, -0.6050, 0 },
  { 0.01, 0.0230, 0.0230, 0.00, -0.6060, 0 },
  { 0.01, 0.0230, 0.0460, 0.06, -0.6050, 0 },
}
ph.modified_intensities = { 1.0, -0.8, -0.2, -0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1 }

-- Pixel-centre coordinates on [-1, 1]: x = (2i + 1)/n - 1 along dim 0,
-- y = 1 - (2j + 1)/n along dim 1 (so row 0 of a PNG is the top).
local function grid2(n)
  local c = (lumen.arange(n):to('f64') * 2 + 1) / n - 1
  return c:reshape(n, 1), (c * -1):reshape(1, n)
end

-- Paints ellipses {value, a, b, x0, y0, degrees} onto a 2-D grid.
local function paint2(n, ellipses, values)
  local x, y = grid2(n)
  local img = lumen.zeros(n, n):to('f64')
  local lab = lumen.zeros(n, n):to('i64')
  for k, e in ipairs(ellipses) do
    local t = math.rad(e[6])
    local dx, dy = x - e[4], y - e[5]
    local u = dx * math.cos(t) + dy * math.sin(t)
    local v = dy * math.cos(t) - dx * math.sin(t)
    local inside = ((u / e[2]) ^ 2 + (v / e[3]) ^ 2):le(1)
    img = img + inside:to('f64') * (values and values[k] or e[1])
    lab = lumen.where(inside, lumen.full({ n, n }, k):to('i64'), lab)
  end
  return img:to('f32'), lab
end

function ph.shepp_logan(n, opts)
  opts = opts or {}
  n = n or 128
  if type(n) ~= 'number' or n < 8 or n ~= math.floor(n) then
    error('phantoms.shepp_logan: n must be an integer >= 8, got ' .. tostring(n), 2)
  end
  return paint2(n, ph.shepp_logan_ellipses, opts.modified ~= false and ph.modified_intensities or nil)
end

-- Random ellipses: returns the image, the label map and the parameters
-- ({intensity, axes..., centre..., degrees}) that drew them.
function ph.make(opts)
  opts = opts or {}
  local dim, size, count = opts.dim or 2, opts.size or 64, opts.n or 5
  if dim ~= 2 and dim ~= 3 then error('phantoms.make: dim must be 2 or 3, got ' .. tostring(dim), 2) end
  if size < 8 then error('phantoms.make: size must be at least 8, got ' .. tostring(size), 2) end
  lumen.manual_seed(opts.seed or 0)
  local r = lumen.rand(count, 8):to('f64'):totable()
  local params = {}
  for k = 1, count do
    local p = r[k]
    -- intensity in 0.2..1, semi-axes 0.1..0.5, centres keep most of it inside
    params[k] = { 0.2 + 0.8 * p[1], 0.1 + 0.4 * p[2], 0.1 + 0.4 * p[3], 0.1 + 0.4 * p[4],
      (p[5] - 0.5), (p[6] - 0.5), (p[7] - 0.5), 180 * p[8] }
  end
  local img, lab
  if dim == 2 then
    local e = {}
    for k, p in ipairs(params) do e[k] = { p[1], p[2], p[3], p[5], p[6], p[8] } end
    local x, y = grid2(size)
    lab = lumen.zeros(size, size):to('i64')
    for k, p in ipairs(e) do
      local t = math.rad(p[6])
      local dx, dy = x - p[4], y - p[5]
      local u = dx * math.cos(t) + dy * math.sin(t)
      local v = dy * math.cos(t) - dx * math.sin(t)
      lab = lumen.where(((u / p[2]) ^ 2 + (v / p[3]) ^ 2):le(1), lumen.full({ size, size }, k):to('i64'), lab)
    end
  else
    local c = (lumen.arange(size):to('f64') * 2 + 1) / size - 1
    local x, y, z = c:reshape(size, 1, 1), c:reshape(1, size, 1), c:reshape(1, 1, size)
    lab = lumen.zeros(size, size, size):to('i64')
    for k, p in ipairs(params) do
      local t = math.rad(p[8])
      local dx, dy, dz = x - p[5], y - p[6], z - p[7]
      local u = dx * math.cos(t) + dy * math.sin(t)
      local v = dy * math.cos(t) - dx * math.sin(t)
      local inside = ((u / p[2]) ^ 2 + (v / p[3]) ^ 2 + (dz / p[4]) ^ 2):le(1)
      lab = lumen.where(inside, lumen.full({ size, size, size }, k):to('i64'), lab)
    end
  end
  -- intensity by label: 0 outside, params[k][1] for label k
  local lut = { 0 }
  for k, p in ipairs(params) do lut[k + 1] = p[1] end
  img = lumen.index_select(lumen.tensor(lut):to('f32'), 0, lab:reshape(-1)):reshape(unpack(lab:size()))
  if (opts.noise or 0) > 0 then img = img + lumen.randn(unpack(lab:size())) * opts.noise end
  return img, lab, params
end

-- Cases for lumen.data: a Shepp-Logan slice and seeded random phantoms.
function ph.cases(opts)
  opts = opts or {}
  local image = require 'lumen.image'
  local size = opts.size or 64
  local img, lab = ph.shepp_logan(size)
  local cases = { { id = 'shepp_logan', image = image.new(img), label = image.new(lab) } }
  for i = 1, opts.n or 3 do
    local dim = (i % 2 == 1) and 2 or 3
    local im, lb = ph.make { dim = dim, size = dim == 2 and size or math.min(size, 32), seed = (opts.seed or 0) + i }
    cases[#cases + 1] = { id = string.format('ellipses%dd_%d', dim, i), image = image.new(im), label = image.new(lb) }
  end
  return cases
end

return ph
