-- colin27.lua: the Colin27 T1 head (one healthy adult, 27 scans averaged;
-- 181x217x181, 1 mm) from Debian's mricron-data, with its BET brain mask
-- (ch2bet > 0) as the label and the AAL (116 labels) and Brodmann (41)
-- atlases on the same grid. One subject: split slices or regions honestly.
--
--   local c = require('lumen.data').get('colin27')
--   local t = c.load{spacing = 2, atlases = true}
--     t.image (T1, u8; f32 when resampled), t.brain (u8 0/1),
--     t.atlases = {aal =, brodmann =} (labels, i32) when asked for;
--     spacing (mm) resamples all of them (linear for the T1, nearest for
--     the labels). Fetches mricron-data first (opts.cache, opts.deb_dir
--     as for lumen.data.fetch).
local colin27 = {
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

function colin27.load(opts)
  opts = opts or {}
  local data = require 'lumen.data'
  local image = require 'lumen.image'
  local case = data.cases('colin27', { cache = opts.cache, deb_dir = opts.deb_dir })[1]
  local img, brain = data.load(case)
  local out = { image = img, brain = brain }
  if opts.atlases then
    out.atlases = {}
    for name, path in pairs(case.atlases) do
      local a = image.read(path)
      out.atlases[name] = image.new(a.data:to('i32'), { affine = a.affine, meta = a.meta })
    end
  end
  if opts.spacing then
    local sp = type(opts.spacing) == 'number' and { opts.spacing, opts.spacing, opts.spacing } or opts.spacing
    out.image = img:resample { spacing = sp, order = 1 }
    out.brain = brain:resample { spacing = sp, order = 0 }
    for name, a in pairs(out.atlases or {}) do out.atlases[name] = a:resample { spacing = sp, order = 0 } end
  end
  return out
end

return colin27
