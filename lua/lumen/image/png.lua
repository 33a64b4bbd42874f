-- image/png.lua: PNG images (src/io/png.c, through libpng).
--
-- A PNG stores rows top to bottom, x fastest. img.data puts the index
-- order first as for every image, (i, j) = (x, y): the H x W C-order buffer
-- is seen as a W x H view with strides {1, W}; colour channels (grey+alpha,
-- RGB, RGBA) stay the last dim. 8-bit files read as u8, 16-bit ones as i32
-- (lumen has no u16; meta.file_dtype says 'uint16'). PNG has no geometry
-- worth keeping (pHYs is ignored): the affine is the identity.
local core = require 'lumen.core'
local C = core.C

return function(image, lumen)
  local function read(path, opts)
    local out = core.out1
    out[0] = nil
    if C.lm_png_read(core.ctx, path, out) ~= 0 then core.fail_as('image.read', 0) end
    local t = core.wrap(out[0])
    local file_dtype = t:dtype() == 'u8' and 'uint8' or 'uint16'
    local data = t:dim() == 2 and t:permute(1, 0) or t:permute(1, 0, 2)
    return image.new(data, { meta = { format = 'png', file_dtype = file_dtype,
      channels = t:dim() == 2 and 1 or t:size()[3] } })
  end

  local function write(img, path, opts)
    local d = img.data
    if d:dim() ~= 2 and d:dim() ~= 3 then
      error(string.format("lumen.image.write: '%s': PNG holds 2-D images (x, y[, channel]), data is %d-D",
        path, d:dim()), 0)
    end
    local rows = d:dim() == 2 and d:permute(1, 0) or d:permute(1, 0, 2)
    if C.lm_png_write(core.ctx, path, core.handle(rows, 'image.write', 'data')) ~= 0 then
      core.fail_as('image.write', 0)
    end
  end

  image.formats['.png'] = { read = read, write = write }
end
