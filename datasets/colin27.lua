-- colin27.lua: the Colin27 T1 head (one healthy adult, 27 scans averaged;
-- 181x217x181, 1 mm) from Debian's mricron-data, with its BET brain mask
-- (ch2bet > 0) as the label and the AAL (116 labels) and Brodmann (41)
-- atlases on the same grid. One subject: split slices or regions honestly.
return {
  name = 'colin27',
  description = 'Colin27 T1 head, brain mask (ch2bet > 0), AAL and Brodmann atlases',
  packages = { 'mricron-data' },
  cases = function(root, dirs)
    local t = dirs['mricron-data'] .. '/usr/share/mricron/templates/'
    return { {
      id = 'colin27',
      image = t .. 'ch2.nii.gz',
      label = t .. 'ch2bet.nii.gz',
      label_from = 'nonzero', -- ch2bet is ch2 masked: the mask is ch2bet > 0
      atlases = { aal = t .. 'aal.nii.gz', brodmann = t .. 'brodmann.nii.gz' },
    } }
  end,
}
