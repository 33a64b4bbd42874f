-- seeds.lua OUT: seed inputs written by lumen itself (img:write) for the
-- fuzz targets of the formats it writes: OUT/nifti, OUT/mha, OUT/png. Run
-- with the plain library (make fuzz sets LUMEN_LIB to build/liblumen.so).
local lumen = require 'lumen'
local image = require 'lumen.image'

local out = assert(arg[1], 'usage: seeds.lua OUT')
lumen.manual_seed(5)

local function vol(dtype, ...)
  return (lumen.rand(...) * 200):to(dtype)
end
local affine = { { -1.5, 0, 0.2, 10 }, { 0, 2, 0, -20 }, { 0.1, 0, 3, 5 }, { 0, 0, 0, 1 } }

for _, dtype in ipairs { 'u8', 'i32', 'i64', 'f32', 'f64' } do
  local img = image.new(vol(dtype, 6, 5, 4), { affine = affine })
  img:write(out .. '/nifti/lumen_' .. dtype .. '.nii')
  img:write(out .. '/nifti/lumen_' .. dtype .. '.nii.gz')
  img:write(out .. '/mha/lumen_' .. dtype .. '.mha')
end
image.new(vol('f32', 3, 4, 2, 3), { affine = affine }):write(out .. '/nifti/lumen_4d.nii')
image.new(vol('u8', 40000, 1, 1)):write(out .. '/nifti/lumen_nifti2.nii') -- a dim past 32767
image.new(vol('i32', 7, 5)):write(out .. '/mha/lumen_2d.mha')
image.new(vol('u8', 4, 3, 2, 3), { meta = { channels = 3 } }):write(out .. '/mha/lumen_rgb.mha')

image.new(vol('u8', 9, 7)):write(out .. '/png/lumen_grey.png')
image.new(vol('u8', 6, 5, 2)):write(out .. '/png/lumen_ga.png')
image.new(vol('u8', 5, 8, 3)):write(out .. '/png/lumen_rgb.png')
image.new(vol('u8', 4, 4, 4)):write(out .. '/png/lumen_rgba.png')
image.new((lumen.rand(7, 6) * 65535):to('i32')):write(out .. '/png/lumen_grey16.png')
