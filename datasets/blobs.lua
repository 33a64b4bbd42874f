-- blobs.lua: cell-like blobs in noise with instance masks.
--   local blobs = dofile('datasets/blobs.lua')
--   local img, inst, params = blobs.make{size = 64, n = 8, seed = 1, noise = 0.05}
--     img: size x size f32 (dims x, y), inst: size x size i64 (0 background,
--     k for blob k); params[k] = {cx, cy, a, b, degrees, brightness} in
--     pixels. Blobs do not overlap (their bounding circles are apart), so
--     every instance 1..#params is present and whole.
local lumen = require 'lumen'

local blobs = { name = 'blobs', synthetic = true,
  description = 'seeded cell-like blobs in noise with instance masks' }

function blobs.make(opts)
  opts = opts or {}
  local size, want, noise = opts.size or 64, opts.n or 8, opts.noise or 0.05
  if size < 16 then error('blobs.make: size must be at least 16, got ' .. tostring(size), 2) end
  lumen.manual_seed(opts.seed or 0)
  -- draw candidates, keep those that do not touch an earlier blob
  local r = lumen.rand(want * 20, 6):to('f64'):totable()
  local rmin, rmax = opts.rmin or size / 16, opts.rmax or size / 8
  local params = {}
  for _, p in ipairs(r) do
    if #params >= want then break end
    local a = rmin + (rmax - rmin) * p[1]
    local b = a * (0.6 + 0.4 * p[2])
    local cx = a + 1 + (size - 2 * a - 2) * p[3]
    local cy = a + 1 + (size - 2 * a - 2) * p[4]
    local ok = true
    for _, o in ipairs(params) do
      if (cx - o[1]) ^ 2 + (cy - o[2]) ^ 2 <= (a + o[3] + 2) ^ 2 then ok = false break end
    end
    if ok then params[#params + 1] = { cx, cy, a, b, 180 * p[5], 0.6 + 0.4 * p[6] } end
  end
  local c = lumen.arange(size):to('f64')
  local x, y = c:reshape(size, 1), c:reshape(1, size)
  local inst = lumen.zeros(size, size):to('i64')
  local img = lumen.zeros(size, size):to('f64')
  for k, p in ipairs(params) do
    local t = math.rad(p[5])
    local dx, dy = x - p[1], y - p[2]
    local u = dx * math.cos(t) + dy * math.sin(t)
    local v = dy * math.cos(t) - dx * math.sin(t)
    local d2 = (u / p[3]) ^ 2 + (v / p[4]) ^ 2
    local inside = d2:le(1)
    inst = lumen.where(inside, lumen.full({ size, size }, k):to('i64'), inst)
    -- brighter rim-to-centre profile, like a stained nucleus
    img = img + inside:to('f64') * (d2 * -0.4 + 1) * p[6]
  end
  img = img:to('f32') + lumen.randn(size, size) * noise
  return img, inst, params
end

function blobs.cases(opts)
  opts = opts or {}
  local image = require 'lumen.image'
  local cases = {}
  for i = 1, opts.n or 4 do
    local img, inst = blobs.make { size = opts.size or 64, seed = (opts.seed or 0) + i }
    cases[i] = { id = 'blobs_' .. i, image = image.new(img), label = image.new(inst) }
  end
  return cases
end

return blobs
