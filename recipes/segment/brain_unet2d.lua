-- brain_unet2d.lua: brain extraction on Colin27 with a 2-D U-Net on slices.
--
--   lumen run recipes/segment/brain_unet2d.lua [--steps 600 --spacing 2 ...]
--   lumen run recipes/segment/brain_unet2d.lua --predict RUN_DIR --input t1.nii.gz --output out/
--
-- Data: the Colin27 T1 and its brain mask (ch2bet > 0), reoriented to RAS,
-- resampled to --spacing mm and normalised (lumen.segment.prepare). Slices
-- along --axis are split into training and test ranges (indices on the
-- scan's own grid, [lo, hi) pairs), with a gap between them so that
-- neighbouring slices do not leak. Training patches are whole slices,
-- augmented in-plane (rotation, scaling, elastic, flips, gamma, noise,
-- contrast), so that the model meets other scans' orientations, sizes and
-- intensities; loss: cross-entropy + soft Dice.
--
-- Test: the test slices of the scan as read (1 mm), predicted through the
-- same path as --predict (prepare, slice-wise sliding window, probabilities
-- back onto the input grid, largest component, holes filled). Baseline on
-- the same slices: Otsu threshold + largest component + hole filling +
-- opening. A second check predicts the scan resliced to anisotropic voxels
-- in LPS order (another size, spacing and orientation), on the same test
-- slices.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local recipe = require 'lumen.recipe'
local segment = require 'lumen.segment'
local models = require 'lumen.models'
local augment = require 'lumen.augment'
local loader = require 'lumen.loader'
local inference = require 'lumen.inference'
local image = require 'lumen.image'
local metrics = require 'lumen.metrics'
local morph = require 'lumen.morph'
local data = require 'lumen.data'
local optim = require 'lumen.optim'
local F = nn.F

-- ------------------------------------------------------------------
-- model and prediction (training, test and --predict share them)

local function build(o)
  return models.UNet(2, o.channels, 1, 2):to(o.device)
end

-- Slices of a prepared volume along `axis` as N x 1 x H x W.
local function as_slices(vol, axis)
  local others = {}
  for a = 0, 2 do if a ~= axis then others[#others + 1] = a end end
  return vol:permute(axis, others[1], others[2]):unsqueeze(1):contiguous(), others
end

-- Class probabilities (background, brain) of a prepared image, 2 x spatial, on its grid.
local function predict_probs(model, x, o)
  local slices, others = as_slices(x.data, o.axis)
  model:eval()
  local out = lumen.no_grad(function()
    local logits = inference.sliding_window(segment.on_device(model, o.device), slices,
      { roi = o.patch, overlap = 0.25, batch = o.batch })
    return F.softmax(logits, 1)
  end)
  -- N x 2 x H x W -> 2 x spatial (axes back in place)
  local perm = {}
  perm[o.axis + 1], perm[others[1] + 1], perm[others[2] + 1] = 1, 2, 3
  return out:permute(1, 0, 2, 3):permute(0, perm[1], perm[2], perm[3]):contiguous()
end

-- A brain mask on img's own grid.
local function predict_mask(model, img, o)
  local x = segment.prepare(img, { spacing = o.spacing })
  local lab = segment.to_grid(predict_probs(model, x, o), x, img)
  local m = morph.fill_holes(morph.keep_largest(lab.data))
  return image.new(m, { affine = img.affine })
end

-- The baseline of the issue: Otsu, largest component, holes, opening.
local function baseline(img, radius)
  local t = morph.otsu(img.data)
  local m = morph.keep_largest(img.data:gt(t))
  m = morph.fill_holes(m)
  m = morph.keep_largest(morph.open(m, radius))
  return m
end

-- ------------------------------------------------------------------
-- slice ranges

local function ranges(list, what, n)
  if #list == 0 or #list % 2 ~= 0 then
    error(string.format('lumen.recipe: --%s needs pairs lo,hi of slice indices, got %d numbers', what, #list), 0)
  end
  local out = {}
  for i = 1, #list, 2 do
    local lo, hi = math.max(0, list[i]), math.min(n, list[i + 1])
    if lo >= hi then error(string.format('lumen.recipe: --%s: range %d,%d is empty (the axis has %d slices)', what,
      list[i], list[i + 1], n), 0) end
    out[#out + 1] = { lo, hi }
  end
  return out
end

local function in_ranges(k, rs)
  for _, r in ipairs(rs) do if k >= r[1] and k < r[2] then return true end end
  return false
end

-- The slab [lo, hi) of a tensor along axis.
local function slab(t, axis, r)
  local idx = { {}, {}, {} }
  idx[axis + 1] = { r[1], r[2] }
  return t[idx]
end

-- Masks keeping only the given slices (the rest zeroed), for metrics.
local function keep_slices(t, axis, rs)
  local out = lumen.zeros(t:size(), t:dtype())
  for _, r in ipairs(rs) do slab(out, axis, r):copy_(slab(t, axis, r)) end
  return out
end

local function evaluate(pred, truth, spacing, axis, rs)
  local r = metrics.evaluate(keep_slices(pred, axis, rs), keep_slices(truth, axis, rs), { spacing = spacing, labels = { 1 } })
  return r[1]
end

-- ------------------------------------------------------------------

local function train(run)
  local o = run.opts
  local c27 = data.get('colin27').load {}
  local img, brain = c27.image, c27.brain
  local n_axis = img.data:size()[o.axis + 1]
  local train_r, test_r = ranges(o.train_slices, 'train_slices', n_axis), ranges(o.test_slices, 'test_slices', n_axis)
  for k = 0, n_axis - 1 do
    if in_ranges(k, train_r) and in_ranges(k, test_r) then
      error(string.format('lumen.recipe: slice %d is in both --train_slices and --test_slices', k), 0)
    end
  end
  local trained_on = string.format('Colin27 slices %s along axis %d', table.concat(o.train_slices, ','), o.axis)
  local tested_on = string.format('Colin27 slices %s along axis %d (1 mm grid as read)', table.concat(o.test_slices, ','), o.axis)
  run:say('train: ' .. trained_on .. '; test: ' .. tested_on)

  -- training cases: the training slabs of the prepared volume (the ranges
  -- scaled onto the working grid)
  local x = segment.prepare(img, { spacing = o.spacing })
  local y = segment.prepare_label(brain, { spacing = o.spacing })
  local scale = img:spacing()[o.axis + 1] / x:spacing()[o.axis + 1]
  local cases = {}
  for i, r in ipairs(train_r) do
    local wr = { math.floor(r[1] * scale + 0.5), math.min(x.data:size()[o.axis + 1], math.floor(r[2] * scale + 0.5)) }
    if wr[2] > wr[1] then
      cases[#cases + 1] = { image = slab(x.data, o.axis, wr):contiguous(), label = slab(y.data, o.axis, wr):contiguous(),
        spacing = x:spacing(), id = 'train' .. i }
    end
  end
  local air = x.data:min():item()
  local patch3 = { o.patch[1], o.patch[2] }
  table.insert(patch3, o.axis + 1, 1)
  local rot = { 0, 0, 0 }
  rot[o.axis + 1] = o.rotate
  local transforms = {
    augment.affine { rotate = rot, scale = { 0.8, 1.2 }, p = 0.8 },
    augment.elastic { magnitude = 2, spacing = 16, p = 0.3 },
    augment.flip { axes = { 0 }, p = 0.5 },
    augment.gamma { range = { 0.7, 1.5 }, p = 0.3 },
    augment.contrast { range = { 0.75, 1.25 }, p = 0.3 },
    augment.noise { std = { 0, 0.1 }, p = 0.2 },
  }

  local model = build(o)
  local opt = optim.AdamW(model:parameters(), { lr = o.lr, weight_decay = 1e-4 })
  local sched = optim.lr_scheduler.CosineAnnealingLR(opt, o.steps)
  local squeeze = o.axis + 2 -- the size-1 slice axis in N x C x spatial

  local finished = segment.fit(run, {
    model = model, optimizer = opt, scheduler = sched, steps = o.steps, log_every = 10,
    loader = function(first)
      return loader.new { cases = cases, patch = patch3, batch = o.batch, sampler = 'uniform', transforms = transforms,
        workers = o.workers, seed = o.seed, cval = air, first_batch = first }
    end,
    loss = function(b)
      local xb, yb = b.image:squeeze(squeeze), b.label:squeeze(squeeze - 1)
      return models.ce_plus_soft_dice(model(xb), yb)
    end,
    validate_every = o.validate_every,
    validate = function()
      local m = predict_mask(model, img, o)
      return { test_dice = evaluate(m.data, brain.data, img:spacing(), o.axis, test_r).dice }
    end,
  })
  if not finished then return end

  -- test: the network against the baseline on the same slices
  local t0 = lumen.clock()
  local pred = predict_mask(model, img, o)
  local seconds = lumen.clock() - t0
  local base = baseline(img, o.opening)
  local net_m = evaluate(pred.data, brain.data, img:spacing(), o.axis, test_r)
  local base_m = evaluate(base, brain.data, img:spacing(), o.axis, test_r)
  local result = { trained_on = trained_on, tested_on = tested_on, test = net_m,
    baseline = base_m, baseline_method = string.format('Otsu threshold + largest component + hole filling + opening (radius %d)', o.opening),
    predict_seconds = seconds,
    beats_baseline = { dice = net_m.dice > base_m.dice, hd95 = net_m.hd95 < base_m.hd95 } }
  run:say(string.format('test slices: Dice %.4f (baseline %.4f), HD95 %.2f mm (baseline %.2f mm)', net_m.dice, base_m.dice,
    net_m.hd95, base_m.hd95))

  -- another grid: the scan resliced to anisotropic voxels and flipped to
  -- LPS, scored on the test slices only (their world positions carried over)
  if o.other_grid then
    local other = img:reorient('LPS'):resample { spacing = { 1.2, 0.9, 1.5 }, order = 1 }
    local on_other = function(t) return image.new(t, { affine = img.affine }):resample_to(other, { order = 0 }).data end
    local slab_mask = on_other(keep_slices(lumen.ones(img.data:size(), 'u8'), o.axis, test_r))
    local m = predict_mask(model, other, o).data
    local r = metrics.evaluate(m * slab_mask, on_other(brain.data) * slab_mask,
      { spacing = other:spacing(), labels = { 1 } })[1]
    result.other_grid = { scan = 'Colin27 resliced to 1.2 x 0.9 x 1.5 mm (' .. table.concat(other.data:size(), 'x') ..
      ') in LPS order, predicted through --predict\'s path; test slices only', dice = r.dice, hd95 = r.hd95 }
    run:say(string.format('resliced LPS copy, test slices: Dice %.4f, HD95 %.2f mm', r.dice, r.hd95))
  end
  run:metrics(result)

  -- figures: axial test slices, network and baseline
  local function overlay(name, mask, title)
    local sl = {}
    local tr = test_r[1]
    for i = 0, 5 do sl[#sl + 1] = math.floor(tr[1] + (tr[2] - 1 - tr[1]) * i / 5 + 0.5) end
    require('lumen.plot').overlay(run:figure(name), img.data, {
      outlines = { { mask = mask, color = { 255, 70, 70 }, name = 'prediction' },
        { mask = brain.data, color = { 70, 255, 70 }, name = 'truth' } },
      axis = o.axis, slices = sl, columns = 3, zoom = 2, title = title })
  end
  overlay('overlay.png', pred.data, string.format('U-Net, test slices: Dice %.3f', net_m.dice))
  overlay('baseline.png', base, string.format('baseline, test slices: Dice %.3f', base_m.dice))
end

local function predict(run, img)
  local model = build(run.opts)
  run:restore { model = model }
  return predict_mask(model, img, run.opts)
end

return recipe.define {
  name = 'brain_unet2d',
  description = 'brain extraction on Colin27 with a 2-D U-Net on slices, against Otsu + morphology',
  options = {
    { 'steps', 400, 'training steps' },
    { 'batch', 8, 'slices per step' },
    { 'lr', 2e-3, 'AdamW learning rate (cosine schedule to 0)' },
    { 'spacing', { 2, 2, 2 }, 'working grid spacing (mm)' },
    { 'axis', 2, 'slice axis of the RAS volume (2: axial)' },
    { 'train_slices', { 0, 90, 150, 181 }, 'training slice ranges lo,hi[,lo,hi...] on the scan grid' },
    { 'test_slices', { 100, 140 }, 'test slice ranges lo,hi[,...]' },
    { 'patch', { 96, 112 }, 'in-plane patch on the working grid (multiples of 8)' },
    { 'channels', { 16, 32, 64, 128 }, 'U-Net channels per level' },
    { 'rotate', 20, 'in-plane rotation range (degrees)' },
    { 'opening', 3, 'baseline opening radius (voxels)' },
    { 'workers', 1, 'data loader threads' },
    { 'validate_every', 100, 'steps between test-slice Dice in the log (0: never)' },
    { 'other_grid', true, 'also predict the scan resliced to 1.2 x 0.9 x 1.5 mm in LPS order' },
  },
  quick = { steps = 40, batch = 4, spacing = { 6, 6, 6 }, patch = { 32, 40 }, channels = { 8, 16 }, validate_every = 20,
    other_grid = false, opening = 1, test_slices = { 100, 130 } },
  train = train,
  predict = predict,
}
