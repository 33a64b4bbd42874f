-- vnet_dice.lua: a V-Net (Milletari et al. 2016) trained with the soft
-- Dice loss, against the same network trained with cross-entropy, in one
-- run, on the same batches.
--
--   build/lumen run recipes/segment/vnet_dice.lua            (about 4 min on 2 cores)
--   build/lumen run recipes/segment/vnet_dice.lua --predict runs/vnet_dice/<run> \
--     --input scan.nii.gz --output out/
--
-- Task. The deep grey nuclei (caudate, putamen, pallidum and thalamus,
-- both sides: AAL 71-78) of Colin27 (mricron-data), a small structure
-- (under 1% of the volume): the class imbalance the soft Dice loss was
-- proposed for. Patches are sampled uniformly (no foreground
-- oversampling), so the imbalance reaches the losses as it is.
--
-- Split. One subject: training sees Colin27 and --train_deformed smoothly
-- deformed copies (datasets/deformed_colin27, seeds 1..n); validation and
-- test are other deformed copies (seeds 500 + seed and 1000 + seed) in a
-- different head pose (--test_rotate degrees about a random axis,
-- --test_shift mm), with the atlas warped the same way: exact ground truth.
--
-- Network (V-Net, scaled down for a CPU): an input stage and
-- #channels - 1 down stages, each a residual block (its input added to
-- the output of `convs` 3x3x3 convolutions; the paper uses 5x5x5) with
-- PReLU activations; downsampling by 2x2x2 convolutions of stride 2 that
-- double the channels, no pooling; up stages by 2x2x2 transposed
-- convolutions, concatenating the skip of the same level, residual again;
-- a 1x1x1 head with 2 outputs and a softmax. BatchNorm follows each
-- convolution (the paper had none; it makes 300 steps enough).
--
-- Losses. soft Dice (the paper's): 1 - 2 sum(p g) / (sum(p^2) + sum(g^2))
-- on the foreground probability over the whole batch; cross-entropy:
-- mean over voxels. Both networks start from the same weights and see the
-- same batches: their parameters are disjoint, so one AdamW over both with
-- the summed loss is two independent trainings.
--
-- metrics.json: test = the Dice-trained network, baseline = the
-- cross-entropy one, on the test scan's grid; atlas = the unregistered atlas
-- (the labels without any registration) for scale. predict uses the
-- Dice-trained network.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local recipe = require 'lumen.recipe'
local segment = require 'lumen.segment'
local loader = require 'lumen.loader'
local augment = require 'lumen.augment'
local data = require 'lumen.data'
local F = nn.F

local STRUCTURE = { 71, 78 } -- AAL caudate .. thalamus, left and right

local function structure_mask(aal)
  return aal:ge(STRUCTURE[1]):logical_and(aal:le(STRUCTURE[2])):to('u8')
end

-- ------------------------------------------------------------------
-- the network

-- n convolutions (3x3x3, BatchNorm, PReLU), the input added before the
-- last PReLU. cin ~= c: the first convolution changes the channels and
-- the shortcut is `short` (given by the caller).
local Residual = nn.Module:extend('Residual')
function Residual:__init(cin, c, n)
  self.convs, self.norms, self.acts = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
  for i = 1, n do
    self.convs:append(nn.Conv3d(i == 1 and cin or c, c, 3, { padding = 1, bias = false }))
    self.norms:append(nn.BatchNorm3d(c))
    self.acts:append(nn.PReLU(c))
  end
  self.n = n
end
function Residual:forward(x, short)
  local y = x
  for i = 1, self.n do
    y = self.norms:get(i - 1)(self.convs:get(i - 1)(y))
    if i == self.n then y = y + short end
    y = self.acts:get(i - 1)(y)
  end
  return y
end

-- a 2x2x2 strided (or transposed) convolution, BatchNorm, PReLU
local function resize(cin, cout, up)
  local Conv = up and nn.ConvTranspose3d or nn.Conv3d
  return nn.Sequential(Conv(cin, cout, 2, { stride = 2, bias = false }), nn.BatchNorm3d(cout), nn.PReLU(cout))
end

local VNet = nn.Module:extend('VNet')
function VNet:__init(chans, convs)
  local L = #chans
  self.L = L
  self.inp = Residual(1, chans[1], convs[1])
  self.downs, self.enc = nn.ModuleList(), nn.ModuleList()
  for i = 2, L do
    self.downs:append(resize(chans[i - 1], chans[i], false))
    self.enc:append(Residual(chans[i], chans[i], convs[i]))
  end
  self.ups, self.dec = nn.ModuleList(), nn.ModuleList()
  for i = L - 1, 1, -1 do
    self.ups:append(resize(chans[i + 1], chans[i], true))
    self.dec:append(Residual(2 * chans[i], chans[i], convs[i + 1]))
  end
  self.head = nn.Conv3d(chans[1], 2, 1)
  self.c1 = chans[1]
end
function VNet:forward(x)
  -- the input stage's shortcut: the one input channel repeated
  local s = { x:size(0), self.c1, x:size(2), x:size(3), x:size(4) }
  x = self.inp(x, x:expand(s))
  local skips = { x }
  for i = 1, self.L - 1 do
    local d = self.downs:get(i - 1)(x)
    x = self.enc:get(i - 1)(d, d)
    skips[i + 1] = x
  end
  for i = 1, self.L - 1 do
    local u = self.ups:get(i - 1)(x)
    x = self.dec:get(i - 1)(lumen.cat({ u, skips[self.L - i] }, 1), u)
  end
  return self.head(x)
end

-- the two networks of a run, as one module (one checkpoint)
local Pair = nn.Module:extend('Pair')
function Pair:__init(chans, convs)
  self.dice = VNet(chans, convs)
  self.ce = VNet(chans, convs)
  self.ce:load_state_dict(self.dice:state_dict()) -- the same start
end

local function build_model(o)
  local convs = {}
  for i = 1, #o.channels do convs[i] = math.min(i, o.convs) end
  return Pair(o.channels, convs):to(o.device)
end

-- the paper's soft Dice on the foreground, over the batch
local function soft_dice_loss(logits, target)
  return F.dice_loss(logits, target, { softmax = true, to_onehot_y = true, include_background = false,
    squared_pred = true, batch = true })
end

-- ------------------------------------------------------------------
-- data

-- ------------------------------------------------------------------
-- inference and evaluation

-- sliding-window settings for segment.labels
local function window(o) return { roi = o.patch, overlap = o.overlap, device = o.device } end

local function evaluate(pred, truth, spacing)
  local r = require('lumen.metrics').evaluate(pred, truth, { spacing = spacing, labels = { 1 } })
  return r[1]
end

-- ------------------------------------------------------------------
-- train

local function train(run)
  local o = run.opts
  local sp = { o.spacing, o.spacing, o.spacing }
  local split = data.get('deformed_colin27').split { labels = structure_mask, train = o.train_deformed, seed = o.seed,
    spacing = sp, magnitude_mm = o.magnitude, rotate_deg = o.test_rotate, shift_mm = o.test_shift }
  local val, test = split.val, split.test
  local cases = {}
  for _, c in ipairs(split.train) do
    cases[#cases + 1] = { image = segment.prepare(c.image, { spacing = sp }).data,
      label = segment.prepare_label(c.label, { spacing = sp }).data, spacing = sp, id = c.id }
  end
  local truth0 = split.train[1].label.data
  local fraction = truth0:to('f64'):mean():item()
  local trained_on = split.trained_on
  local tested_on = string.format('%s; deep grey nuclei (AAL 71-78), %.2f%% of the volume', split.tested_on,
    100 * fraction)
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
  local metrics = require 'lumen.metrics'
  local function val_dice(net)
    return metrics.dice(segment.labels(net, xval, val.image, window(o)).data, val.label.data)
  end
  local finished = segment.fit(run, {
    model = model, optimizer = opt, scheduler = sched, steps = o.steps, log_every = 10,
    validate_every = o.validate_every,
    loader = function(first)
      return loader.new { cases = cases, patch = o.patch, batch = o.batch, sampler = o.sampler, foreground = 0.33,
        transforms = transforms, workers = o.workers, seed = o.seed, first_batch = first }
    end,
    loss = function(b)
      -- the sum trains both: the two networks share no parameter
      return soft_dice_loss(model.dice(b.image), b.label) + F.cross_entropy(model.ce(b.image), b.label)
    end,
    validate = function()
      return { val_dice_softdice = val_dice(model.dice), val_dice_crossentropy = val_dice(model.ce) }
    end,
  })
  if not finished then return end

  local xt = segment.prepare(test.image, { spacing = sp })
  local truth = test.label.data
  local tsp = test.image:spacing()
  local pred_dice = segment.labels(model.dice, xt, test.image, window(o)).data
  local pred_ce = segment.labels(model.ce, xt, test.image, window(o)).data
  local m_dice, m_ce = evaluate(pred_dice, truth, tsp), evaluate(pred_ce, truth, tsp)
  local m_atlas = evaluate(truth0, truth, tsp)
  run:metrics {
    test = m_dice,
    baseline = m_ce,
    test_is = 'the V-Net trained with the soft Dice loss',
    baseline_is = 'the same V-Net (same initial weights, same batches) trained with cross-entropy',
    atlas = m_atlas,
    atlas_is = 'the structure of the Colin27 atlas placed on the test scan without registration (for scale)',
    structure = 'deep grey nuclei: caudate, putamen, pallidum, thalamus (AAL 71-78), left and right',
    trained_on = trained_on,
    tested_on = tested_on,
  }
  run:say(string.format('test Dice: soft-Dice loss %.3f, cross-entropy %.3f (unregistered atlas %.3f)',
    m_dice.dice, m_ce.dice, m_atlas.dice))
  run:say(string.format('test HD95: soft-Dice loss %.1f mm, cross-entropy %.1f mm (unregistered atlas %.1f mm)',
    m_dice.hd95, m_ce.hd95, m_atlas.hd95))
  local plot = require 'lumen.plot'
  plot.overlay(run:figure('test_overlay.png'), test.image.data, {
    outlines = { { mask = truth, color = { 40, 220, 40 }, name = 'truth' },
      { mask = pred_dice, color = { 230, 50, 50 }, name = 'soft Dice' },
      { mask = pred_ce, color = { 60, 120, 255 }, name = 'cross-entropy' } },
    axis = 2, slices = 6, columns = 3, zoom = 3, title = 'vnet_dice: test scan, deep grey nuclei' })
end

-- ------------------------------------------------------------------
-- predict: any T1 scan -> the structure's mask on its own grid

local function predict(run, img)
  local o = run.opts
  local model = build_model(o)
  run:restore { model = model }
  local x = segment.prepare(img, { spacing = { o.spacing, o.spacing, o.spacing } })
  return segment.labels(model.dice, x, img, window(o))
end

return recipe.define {
  name = 'vnet_dice',
  description = 'V-Net on the deep grey nuclei of Colin27: soft Dice loss against cross-entropy, side by side',
  options = {
    { 'steps', 400, 'training steps (each trains both networks)' },
    { 'lr', 3e-3, 'learning rate (AdamW, cosine decay)' },
    { 'batch', 2, 'patches per step' },
    { 'patch', { 32, 32, 32 }, 'patch and sliding-window size (voxels, multiples of 2^(levels-1))' },
    { 'spacing', 3, 'working grid spacing (mm, isotropic)' },
    { 'channels', { 8, 16, 32 }, 'V-Net channels per level' },
    { 'convs', 3, 'most convolutions in a stage (stage i has min(i, convs))' },
    { 'sampler', 'uniform', "patch sampler: 'uniform' (the imbalance as it is) or 'balanced'" },
    { 'overlap', 0.5, 'sliding-window overlap' },
    { 'train_deformed', 2, 'deformed copies of Colin27 added to the training cases' },
    { 'magnitude', 8, 'largest displacement (mm) of the random deformations' },
    { 'test_rotate', 10, 'head rotation (degrees) of the validation and test scans' },
    { 'test_shift', 8, 'head shift (mm) of the validation and test scans' },
    { 'validate_every', 100, 'steps between validation Dice (a different deformed copy)' },
    { 'workers', 1, 'loader threads' },
  },
  quick = { steps = 50, patch = { 16, 16, 16 }, spacing = 6, channels = { 4, 8 }, train_deformed = 0,
    validate_every = 25, lr = 1e-2, workers = 0 },
  train = train,
  predict = predict,
}
