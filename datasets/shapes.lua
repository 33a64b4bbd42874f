-- shapes.lua: a synthetic two-class image task, disks (label 1) against
-- squares (label 0) of random size and position in Gaussian noise. The same
-- seed gives the same images.
--   local shapes = dofile('datasets/shapes.lua')
--   local x, y = shapes.make(n, {size = 32, noise = 0.3, seed = 1})
--     x: n x 1 x size x size f32, y: n i64 labels
local lumen = require 'lumen'

local shapes = { name = 'shapes', synthetic = true,
  description = 'disks (1) against squares (0) in Gaussian noise, 2-D classification' }

function shapes.make(n, opts)
  opts = opts or {}
  local size, noise = opts.size or 32, opts.noise or 0.3
  if type(n) ~= 'number' or n < 1 or n ~= math.floor(n) then
    error('shapes.make: n must be a positive integer, got ' .. tostring(n), 2)
  end
  if size < 12 then error('shapes.make: size must be at least 12, got ' .. tostring(size), 2) end
  lumen.manual_seed(opts.seed or 0)
  local coords = lumen.arange(size):to('f32')
  local xx, yy = coords:reshape(1, 1, size), coords:reshape(1, size, 1)
  -- radius (half side) between size/8 and size/4; centres keep the shape inside
  local r = lumen.rand(n, 1, 1) * (size / 8) + size / 8
  local cx = lumen.rand(n, 1, 1) * (size - 2 * r - 2) + r + 1
  local cy = lumen.rand(n, 1, 1) * (size - 2 * r - 2) + r + 1
  local dx, dy = xx - cx, yy - cy
  local disk = (dx * dx + dy * dy):le(r * r)
  -- a square of the disk's area, so brightness alone does not tell them apart
  local h = r * (math.sqrt(math.pi) / 2)
  local square = lumen.logical_and(dx:abs():le(h), dy:abs():le(h))
  local label = lumen.rand(n):lt(0.5)
  local img = lumen.where(label:reshape(n, 1, 1), disk, square):to('f32')
  img = img + lumen.randn(n, size, size) * noise
  return img:reshape(n, 1, size, size), label:to('i64')
end

-- Cases for lumen.data (the class is case.class; there is no label map).
function shapes.cases(opts)
  opts = opts or {}
  local image = require 'lumen.image'
  local x, y = shapes.make(opts.n or 4, opts)
  local classes = y:totable()
  local cases = {}
  for i = 1, x:size()[1] do
    cases[i] = { id = 'shapes_' .. i, class = classes[i],
      image = image.new(x:select(0, i - 1):select(0, 0):transpose(0, 1)) }
  end
  return cases
end

return shapes
