-- Inputs on which `make fuzz` (tests/fuzz/) caught a reader misbehaving,
-- kept in tests/data/fuzz/<reader>/ (small files; tests/data/fuzz/README.md
-- says what each one is). Each must now give a clear error that names the
-- file and the problem.
local image = require 'lumen.image'

local DIR = 'tests/data/fuzz/'
local cases = {
  ['nifti/nan_payload_in_quatern.nii'] = 'the qform %(quatern_b/c/d, qoffset, pixdim%) gives the affine a non%-finite entry %(nan',
  ['nifti/nan_in_sform.nii'] = 'the sform %(srow_x, srow_y, srow_z%) gives the affine a non%-finite entry %(nan at row 1, column 2%)',
  ['nifti/empty_huge_dims.nii'] = 'header says 0x8725724261253152x562949953421312 float64: impossibly large dimensions',
  ['nifti/vox_offset_1e30.nii.gz'] = 'vox_offset 1e%+30 is impossibly large',
  ['dicom/nan_in_position.dcm'] = 'ImagePositionPatient, ImageOrientationPatient, PixelSpacing or the slice spacing is not finite',
  ['mha/compressed_claims_80gb.mha'] = 'header says 100000x100000 MET_DOUBLE %(80000000000 bytes%) but 12 bytes of compressed data cannot hold that much',
  ['png/chunk_claims_800mb.png'] = 'the file is truncated: chunk sCAL at byte 33 says 822083622 bytes but only 67 follow',
}

local function escape(s) return (s:gsub('%p', '%%%0')) end

describe('image readers on inputs found by fuzzing', function()
  it('give a clear error naming the file and the problem', function()
    for name, expected in pairs(cases) do
      local path = DIR .. name
      local ok, err = pcall(image.read, path)
      assert.is_false(ok, name .. ' was read')
      assert.matches("^lumen%.image%.read: '" .. escape(path) .. "': " .. expected, err)
    end
  end)

  it('cover every file kept in ' .. DIR, function()
    local p = io.popen('ls ' .. DIR .. '*/*')
    for path in p:lines() do
      assert.is_not_nil(cases[path:sub(#DIR + 1)], path .. ' has no expected error in this spec')
    end
    p:close()
  end)
end)
