-- pydicom_samples.lua: pydicom's test files (python3-pydicom, already
-- installed): CT_small and MR_small in many transfer syntaxes, truncated
-- and no-meta files. Some are meant to be refused (compressed syntaxes
-- lumen does not decode, broken files): a reader should say why.
local data = require 'lumen.data'

local dir = '/usr/lib/python3/dist-packages/pydicom/data/test_files'

return {
  name = 'pydicom_samples',
  description = "pydicom's test DICOM files (python3-pydicom)",
  packages = {},
  cases = function()
    local cases = {}
    for _, path in ipairs(data.files(dir, { '.dcm' })) do
      cases[#cases + 1] = { id = path:sub(#dir + 2), image = path }
    end
    return cases
  end,
}
