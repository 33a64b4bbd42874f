-- atlas_unet3d.lua: a multi-class 3D U-Net that labels the brain's lobes
-- and deep structures on a T1 scan.
--
--   build/lumen run recipes/segment/atlas_unet3d.lua            (about 6 min on 2 cores)
--   build/lumen run recipes/segment/atlas_unet3d.lua --predict runs/atlas_unet3d/<run> \
--     --input scan.nii.gz --output out/
--
-- Data. Colin27 (mricron-data) with its AAL atlas, whose 116 regions are
-- merged into 7 classes (0 is everything AAL leaves unlabelled: white
-- matter, CSF, outside the brain):
--   1 frontal      AAL 1-28 (precentral to rectus), 69-70 (paracentral lobule)
--   2 parietal     AAL 57-68 (postcentral, parietal, supramarginal, angular, precuneus)
--   3 temporal     AAL 79-90 (Heschl, temporal gyri and poles)
--   4 occipital    AAL 43-56 (calcarine, cuneus, lingual, occipital, fusiform)
--   5 limbic       AAL 29-42 (insula, cingulum, hippocampus, parahippocampal, amygdala)
--   6 deep grey    AAL 71-78 (caudate, putamen, pallidum, thalamus)
--   7 cerebellum   AAL 91-116 (hemispheres and vermis)
-- Left and right are merged (so a left-right flip is a fair augmentation).
--
-- Split. There is one subject, so the test scan is Colin27 made into
-- another head: a smooth random diffeomorphism (datasets/deformed_colin27,
-- --test_magnitude mm) and a different head pose (a rotation of
-- --test_rotate degrees about a random axis and a shift of --test_shift
-- mm), with the AAL labels warped the same way (nearest neighbour): exact
-- ground truth. Training sees Colin27 itself and --train_deformed other
-- deformed copies (seeds 1..n; validation and test use seeds 500 + seed
-- and 1000 + seed), with flips and rotations as augmentation.
--
-- Reference. The atlas placed on the test scan without registration (the
-- identity map): the labels a user gets by assuming the scan is aligned
-- with the template. Registration would do better; the network has to
-- beat the unregistered atlas on mean Dice and HD95 to be worth anything.
-- Both are measured on the test scan's own 3 mm grid.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local recipe = require 'lumen.recipe'
local segment = require 'lumen.segment'
local models = require 'lumen.models'
local loader = require 'lumen.loader'
local augment = require 'lumen.augment'
local data = require 'lumen.data'
local F = nn.F

local CLASSES = { 'frontal', 'parietal', 'temporal', 'occipital', 'limbic', 'deep_grey', 'cerebellum' }
local AAL_GROUPS = { -- {first, last AAL value, class}
  { 1, 28, 1 }, { 69, 70, 1 }, { 57, 68, 2 }, { 79, 90, 3 }, { 43, 56, 4 }, { 29, 42, 5 }, { 71, 78, 6 },
  { 91, 116, 7 } }
local COLOURS = { { 230, 60, 60 }, { 60, 200, 60 }, { 70, 110, 255 }, { 240, 220, 40 }, { 230, 80, 230 },
  { 40, 220, 230 }, { 255, 150, 40 } }

-- AAL values (i32 tensor) -> class labels (u8 tensor)
local function merge_aal(t)
  local lut = {}
  for v = 0, 116 do lut[v + 1] = 0 end
  for _, g in ipairs(AAL_GROUPS) do for v = g[1], g[2] do lut[v + 1] = g[3] end end
  local shape = t:size()
  local idx = t:contiguous():reshape(-1):clamp(0, 116):to('i64')
  return lumen.index_select(lumen.tensor(lut):to('u8'), 0, idx):reshape(shape)
end

local function build_model(o)
  return models.UNet(3, o.channels, 1, #CLASSES + 1):to(o.device)
end

-- ------------------------------------------------------------------
-- data

-- ------------------------------------------------------------------
-- inference and evaluation

-- sliding-window settings for segment.labels
local function window(o) return { roi = o.patch, overlap = o.overlap, device = o.device } end

local function num(v) return type(v) == 'number' and v or math.huge end

-- Per-class metrics keyed by class name (JSON-friendly), and the means.
local function evaluate(pred, truth, spacing)
  local metrics = require 'lumen.metrics'
  local labels = {}
  for l = 1, #CLASSES do labels[l] = l end
  local r = metrics.evaluate(pred, truth, { spacing = spacing, labels = labels })
  local out = { mean = r.mean }
  for l, name in ipairs(CLASSES) do out[name] = r[l] end
  return out
end

local function overlay(run, name, x, lab, title)
  local plot = require 'lumen.plot'
  local outlines = {}
  for l, cname in ipairs(CLASSES) do
    outlines[#outlines + 1] = { mask = lab:eq(l), color = COLOURS[l], name = cname }
  end
  plot.overlay(run:figure(name), x, { outlines = outlines, axis = 2, slices = 6, columns = 3, zoom = 3, title = title })
end

-- ------------------------------------------------------------------
-- train

local function train(run)
  local o = run.opts
  local sp = { o.spacing, o.spacing, o.spacing }
  local split = data.get('deformed_colin27').split { labels = merge_aal, train = o.train_deformed, seed = o.seed,
    spacing = sp, magnitude_mm = o.test_magnitude, rotate_deg = o.test_rotate, shift_mm = o.test_shift }
  local base, val, test = split.base, split.val, split.test
  -- training cases on the RAS working grid
  local cases = {}
  for _, c in ipairs(split.train) do
    cases[#cases + 1] = { image = segment.prepare(c.image, { spacing = sp }).data,
      label = segment.prepare_label(c.label, { spacing = sp }).data, spacing = sp, id = c.id }
  end
  local trained_on = split.trained_on
  local tested_on = string.format('%s, AAL merged into %d classes', split.tested_on, #CLASSES)
  run:say('trained on: ' .. trained_on)
  run:say('tested on:  ' .. tested_on)

  local model = build_model(o)
  local opt = require('lumen.optim').AdamW(model:parameters(), { lr = o.lr, weight_decay = 1e-4 })
  local sched = require('lumen.lr_scheduler').CosineAnnealingLR(opt, o.steps)
  local transforms = {
    augment.flip { axes = { 0 } },
    augment.affine { rotate = 15, scale = { 0.9, 1.1 }, p = 0.5 },
    augment.gamma { range = { 0.8, 1.25 }, p = 0.3 },
  }
  local xval = segment.prepare(val.image, { spacing = sp })
  local yval = val.label.data
  local metrics = require 'lumen.metrics'
  local finished = segment.fit(run, {
    model = model, optimizer = opt, scheduler = sched, steps = o.steps, log_every = 10,
    validate_every = o.validate_every,
    loader = function(first)
      return loader.new { cases = cases, patch = o.patch, batch = o.batch, sampler = 'balanced', foreground = 0.5,
        transforms = transforms, workers = o.workers, seed = o.seed, first_batch = first }
    end,
    loss = function(b)
      return F.dice_ce_loss(model(b.image), b.label:unsqueeze(1), { softmax = true, to_onehot_y = true,
        include_background = false, batch = true })
    end,
    validate = function()
      local pred = segment.labels(model, xval, val.image, window(o)).data
      local d = 0
      for l = 1, #CLASSES do d = d + metrics.dice(pred:eq(l), yval:eq(l)) end
      return { val_dice = d / #CLASSES }
    end,
  })
  if not finished then return end

  -- test: the network against the unregistered atlas, on the test grid
  local xt = segment.prepare(test.image, { spacing = sp })
  local pred = segment.labels(model, xt, test.image, window(o)).data
  local truth = test.label.data
  local atlas = merge_aal(base.atlases.aal.data)
  local tsp = test.image:spacing()
  local m_test, m_base = evaluate(pred, truth, tsp), evaluate(atlas, truth, tsp)
  run:metrics {
    test = m_test,
    baseline = m_base,
    baseline_is = 'the merged AAL atlas of Colin27 placed on the test scan without registration (identity)',
    classes = CLASSES,
    class_values = 'class k (1..7) in the order of classes; 0 is unlabelled (white matter, CSF, outside)',
    trained_on = trained_on,
    tested_on = tested_on,
    beats_baseline = { dice = m_test.mean.dice > m_base.mean.dice, hd95 = num(m_test.mean.hd95) < num(m_base.mean.hd95) },
  }
  run:say(string.format('test mean Dice %.3f (unregistered atlas %.3f), mean HD95 %.1f mm (atlas %.1f mm)',
    m_test.mean.dice, m_base.mean.dice, m_test.mean.hd95, m_base.mean.hd95))
  for _, name in ipairs(CLASSES) do
    run:say(string.format('  %-11s Dice %.3f (atlas %.3f)  HD95 %5.1f mm (atlas %5.1f mm)', name, m_test[name].dice,
      m_base[name].dice, m_test[name].hd95, m_base[name].hd95))
  end
  local timg = test.image.data
  overlay(run, 'test_prediction.png', timg, pred, 'atlas_unet3d: prediction on the test scan')
  overlay(run, 'test_truth.png', timg, truth, 'atlas_unet3d: ground truth (warped AAL classes)')
  overlay(run, 'test_baseline.png', timg, atlas, 'atlas_unet3d: unregistered atlas (baseline)')
end

-- ------------------------------------------------------------------
-- predict: any T1 scan -> class labels on its own grid

local function predict(run, img)
  local o = run.opts
  local model = build_model(o)
  run:restore { model = model }
  local x = segment.prepare(img, { spacing = { o.spacing, o.spacing, o.spacing } })
  return segment.labels(model, x, img, window(o))
end

return recipe.define {
  name = 'atlas_unet3d',
  description = 'multi-class 3D U-Net: AAL merged into 7 lobes/structures on Colin27, tested on a deformed, moved copy',
  options = {
    { 'steps', 800, 'training steps' },
    { 'lr', 1e-2, 'learning rate (AdamW, cosine decay)' },
    { 'batch', 2, 'patches per step' },
    { 'patch', { 32, 32, 32 }, 'patch and sliding-window size (voxels)' },
    { 'spacing', 3, 'working grid spacing (mm, isotropic)' },
    { 'channels', { 8, 16, 32 }, 'U-Net channels per level' },
    { 'overlap', 0.5, 'sliding-window overlap' },
    { 'train_deformed', 2, 'deformed copies of Colin27 added to the training cases' },
    { 'test_magnitude', 8, 'largest displacement (mm) of the random deformations' },
    { 'test_rotate', 10, 'head rotation (degrees) of the validation and test scans' },
    { 'test_shift', 8, 'head shift (mm) of the validation and test scans' },
    { 'validate_every', 100, 'steps between validation Dice (a different deformed copy)' },
    { 'workers', 1, 'loader threads' },
  },
  quick = { steps = 60, patch = { 16, 16, 16 }, spacing = 6, channels = { 4, 8 }, train_deformed = 0,
    validate_every = 30, lr = 1e-2, workers = 0 },
  train = train,
  predict = predict,
}
