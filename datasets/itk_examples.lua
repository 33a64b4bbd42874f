-- itk_examples.lua: ITK's example data from Debian's insighttoolkit5-examples:
-- 2-D MR slices (PNG, MHA), small MR volumes, lung and fat slices. Every
-- file with an image suffix lumen reads is a case (no labels).
local data = require 'lumen.data'

return {
  name = 'itk_examples',
  description = "ITK example data: 2-D MR/CT slices (PNG, MHA) and small volumes",
  packages = { 'insighttoolkit5-examples' },
  cases = function(root, dirs)
    local dir = dirs['insighttoolkit5-examples'] .. '/usr/share/doc/insighttoolkit5-examples/examples/Data'
    local cases = {}
    for _, path in ipairs(data.files(dir, { '.png', '.mha', '.mhd', '.nii', '.nii.gz' })) do
      cases[#cases + 1] = { id = path:sub(#dir + 2), image = path }
    end
    return cases
  end,
}
