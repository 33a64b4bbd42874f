-- nibabel_samples.lua: nibabel's own test files (python3-nibabel, already
-- installed): NIfTI-1/2 edge cases (4-D, scaled, big-endian, NIfTI-2) and
-- Siemens/Philips DICOM. nibabel is the reference reader for them.
local data = require 'lumen.data'

local base = '/usr/lib/python3/dist-packages/nibabel'

return {
  name = 'nibabel_samples',
  description = "nibabel's test NIfTI and DICOM files (python3-nibabel)",
  packages = {},
  cases = function()
    local cases = {}
    for _, sub in ipairs { 'tests/data', 'nicom/tests/data' } do
      local dir = base .. '/' .. sub
      for _, path in ipairs(data.files(dir, { '.nii', '.nii.gz', '.dcm' })) do
        cases[#cases + 1] = { id = sub:match('^(%w+)') .. '/' .. path:sub(#dir + 2), image = path }
      end
    end
    return cases
  end,
}
