-- deformed_colin27.lua: Colin27 (datasets/colin27.lua) under smooth random
-- diffeomorphic deformations, with its brain mask and atlases warped the
-- same way (nearest neighbour, so label values stay). Registration and
-- segmentation test cases with exact ground truth: the displacement field
-- that made each case comes with it.
--   local dc = require('lumen.data').get('deformed_colin27')
--   local case = dc.make{seed = 1, magnitude_mm = 6, control_mm = 24,
--                        spacing = nil, atlases = true, rotate_deg = 0, shift_mm = 0}
--     case.image (T1, f32), case.label (brain mask, u8), case.atlases
--     {aal =, brodmann =} (i32), case.field (3 x I x J x K displacement in
--     voxels: case.image(x) = colin27(x + field(x)), see lumen.image.deform),
--     case.velocity, case.original (the undeformed T1).
--   dc.cases{n = 2, seed = 0, ...}: seeds seed + 1 .. seed + n.
--   dc.split{labels = fn, train = 2, seed = 0, spacing =, magnitude_mm =,
--            rotate_deg =, shift_mm =}: a training, validation and test
--     split for segmentation: train = Colin27 and `train` deformed copies
--     (seeds 1..train), val and test = copies deformed and moved (seeds
--     500 + seed, 1000 + seed); each {id, image, label = labels(aal data)
--     as an image}; with base (colin27.load's table) and trained_on /
--     tested_on (what the split is, in words).
-- spacing (mm) resamples Colin27 first (faster: 2 mm is 8x fewer voxels).
-- rotate_deg, shift_mm: a head motion after the deformation (a rotation
-- about a random axis through the centre, a shift in a random direction;
-- image.deform.rigid_field_for), so the case also sits in another pose.
-- Fetches mricron-data into the lumen cache when needed.
local lumen = require 'lumen'

local dc = { name = 'deformed_colin27', synthetic = true,
  description = 'Colin27 T1 under seeded random diffeomorphisms, with warped brain mask and atlases' }

local known = { seed = true, magnitude_mm = true, control_mm = true, steps = true, spacing = true, atlases = true,
  cache = true, deb_dir = true, base = true, n = true, rotate_deg = true, shift_mm = true }

-- `lumen data show` passes its own options (out, max) along to cases
local show_opts = { out = true, max = true }

local function check(opts, who)
  opts = opts or {}
  for k in pairs(opts) do
    if not known[k] and not (who:match('cases$') and show_opts[k]) then
      local names = {}
      for n in pairs(known) do names[#names + 1] = n end
      table.sort(names)
      error(string.format("%s: unknown option '%s' (expected %s)", who, tostring(k), table.concat(names, ', ')), 3)
    end
  end
  return opts
end

-- opts.base: an already loaded colin27 table (image, brain, atlases), to
-- make several cases from one read.
function dc.make(opts)
  opts = check(opts, 'deformed_colin27.make')
  local image = require 'lumen.image'
  local base = opts.base or require('lumen.data').get('colin27').load { spacing = opts.spacing,
    atlases = opts.atlases ~= false, cache = opts.cache, deb_dir = opts.deb_dir }
  local u, v = image.deform.random_field_for(base.image, { magnitude_mm = opts.magnitude_mm or 6,
    control_mm = opts.control_mm or 24, seed = opts.seed or 0, steps = opts.steps })
  if (opts.rotate_deg or 0) ~= 0 or (opts.shift_mm or 0) ~= 0 then
    u = image.deform.compose(u, image.deform.rigid_field_for(base.image, { rotate_deg = opts.rotate_deg,
      shift_mm = opts.shift_mm, seed = opts.seed }))
  end
  local case = { id = 'deformed_colin27_' .. (opts.seed or 0), field = u, velocity = v, original = base.image,
    image = image.deform.apply(base.image, u, { order = 1 }),
    label = image.deform.apply(base.brain, u, { order = 0 }) }
  if base.atlases then
    case.atlases = {}
    for name, a in pairs(base.atlases) do case.atlases[name] = image.deform.apply(a, u, { order = 0 }) end
  end
  return case
end

function dc.cases(opts)
  opts = check(opts, 'deformed_colin27.cases')
  local base = opts.base or require('lumen.data').get('colin27').load { spacing = opts.spacing,
    atlases = opts.atlases ~= false, cache = opts.cache, deb_dir = opts.deb_dir }
  local cases = {}
  for i = 1, opts.n or 2 do
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.n, o.out, o.max, o.base, o.seed = nil, nil, nil, base, (opts.seed or 0) + i
    cases[i] = dc.make(o)
  end
  return cases
end

function dc.split(opts)
  local image = require 'lumen.image'
  local seed, n = opts.seed or 0, opts.train or 2
  local base = require('lumen.data').get('colin27').load { spacing = opts.spacing, atlases = true, cache = opts.cache,
    deb_dir = opts.deb_dir }
  local function case(c, id)
    local aal = (c or base).atlases.aal
    return { id = id, image = (c or base).image, label = image.new(opts.labels(aal.data), { affine = aal.affine }) }
  end
  local function copy(s, moved)
    local c = dc.make { base = base, seed = s, magnitude_mm = opts.magnitude_mm, control_mm = 24,
      rotate_deg = moved and opts.rotate_deg or 0, shift_mm = moved and opts.shift_mm or 0 }
    return case(c, c.id .. (moved and '_moved' or ''))
  end
  local out = { base = base, train = { case(nil, 'colin27') } }
  for s = 1, n do out.train[#out.train + 1] = copy(s, false) end
  out.val, out.test = copy(500 + seed, true), copy(1000 + seed, true)
  local mag, sp = opts.magnitude_mm or 6, base.image:spacing()[1]
  out.trained_on = string.format('Colin27 (mricron-data) and %d deformed copies (seeds 1-%d, %g mm), %g mm grid', n, n,
    mag, sp)
  out.tested_on = string.format('%s: Colin27 deformed (%g mm) and moved (%g deg, %g mm)', out.test.id, mag,
    opts.rotate_deg or 0, opts.shift_mm or 0)
  return out
end

return dc
