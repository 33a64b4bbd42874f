-- deepmedic.lua: lesion segmentation with DeepMedic, the dual-pathway
-- multi-scale 3D CNN of Kamnitsas et al. (Medical Image Analysis 2017),
-- on synthetic lesions inserted into a real scan (datasets/lesions.lua:
-- Colin27 T1, hyper- and hypo-intense lesions with exact masks).
--
--   build/lumen run recipes/segment/deepmedic.lua [--steps 300 --crf dense ...]
--
-- The network. Two pathways of `channels` valid 3x3x3 convolutions (each
-- BatchNorm + PReLU, as the 2017 paper) see the same centre: the normal
-- pathway a segment at the working resolution, the context pathway a
-- segment averaged 3x3x3 (1/3 resolution) that covers three times the
-- width. The context features are upsampled by 3 (nearest), concatenated
-- with the normal ones, and 1x1x1 convolutions (the fully connected
-- layers) classify each voxel. With L layers per pathway and an output of
-- `out` voxels per axis (a multiple of 3):
--   normal input   out + 2L   (the segment: 25 = 9 + 16 as the paper)
--   context input  out / 3 + 2L voxels of the 1/3 grid (19), covering
--   patch          out + 6L voxels of the working grid (57)
-- The model takes that one patch (N x 1 x patch^3), crops the normal
-- segment from its centre and average-pools it by 3 for the context, and
-- returns logits for the central out^3 voxels. The loader cuts the patches
-- (sampler 'balanced', foreground 0.5: half the segments centred on a
-- lesion voxel, as DeepMedic samples, the other half anywhere in the
-- volume padded by half a patch, so that the face and neck are seen too).
-- Inference goes over the volume in
-- tiles of `tile`^3 outputs, each from a (tile + 6L)^3 patch; nothing is
-- averaged or overlapped, the tiles abut (the network is fully
-- convolutional, so the result is the same as voxel-by-voxel).
-- Smaller than the paper's for a 2-core CPU (documented in the options):
-- 8 layers per pathway as the paper, but 8 to 16 channels instead of 30 to
-- 50, fully connected layers of 32 instead of 150, no residual
-- connections, Adam instead of RMSProp, 2 mm voxels.
--
-- Data: cases from lesions.make (seeded; each a deformed copy of Colin27
-- at the working spacing with 1 to 5 lesions): seeds 1000 seed + 1 ..
-- train_cases for training, 1000 seed + 501 .. test_cases for testing,
-- 1000 seed + 901 for validation (patches logged during training, and the
-- choice of post-processing).
-- Post-processing: lesion probability above a threshold, components of
-- fewer than m voxels removed, both chosen on the validation case (the
-- balanced sampling makes argmax find too much; metrics.json also gives
-- argmax alone). Test predictions are restricted to the brain mask (the
-- ROI, as DeepMedic uses one; --predict has none and segments the whole
-- volume); the classical baseline uses the same mask: |z| > t of the
-- intensity z-scored over the brain, components smaller than m voxels
-- removed, t and m chosen for the best mean Dice on the training cases.
--
-- --crf dense|grid|none refines the test predictions with lumen.crf
-- (plugins/crf): dense, a fully connected CRF (mean field, as DeepMedic's
-- pipeline); grid, a contrast-sensitive Potts MRF solved by graph cut.
-- metrics.json holds Dice and lesion-wise F1 of the network, the network
-- with the CRF, and the baseline, side by side.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local F = nn.F
local recipe = require 'lumen.recipe'
local segment = require 'lumen.segment'
local loader = require 'lumen.loader'
local augment = require 'lumen.augment'
local metrics = require 'lumen.metrics'
local morph = require 'lumen.morph'

-- ------------------------------------------------------------------
-- the network

local function pathway(chans)
  local layers, prev = {}, 1
  for _, c in ipairs(chans) do
    layers[#layers + 1] = nn.Conv3d(prev, c, 3, { bias = false })
    layers[#layers + 1] = nn.BatchNorm3d(c)
    layers[#layers + 1] = nn.PReLU(c)
    prev = c
  end
  return nn.Sequential(layers)
end

local DeepMedic = nn.Module:extend('DeepMedic')

function DeepMedic:__init(chans, fc, n_classes)
  self.L = #chans
  self.normal = pathway(chans)
  self.context = pathway(chans)
  self.fc1 = nn.Conv3d(2 * chans[#chans], fc, 1)
  self.fc1_act = nn.PReLU(fc)
  self.fc2 = nn.Conv3d(fc, fc, 1)
  self.fc2_act = nn.PReLU(fc)
  self.out = nn.Conv3d(fc, n_classes or 2, 1)
end

-- p: N x 1 x P^3 with P = out + 6L -> N x K x out^3 logits.
function DeepMedic:forward(p)
  local L, size = self.L, p:size()
  local crop = p
  for a = 2, 4 do crop = crop:narrow(a, 2 * L, size[a + 1] - 4 * L) end
  local a = self.normal(crop)
  local b = F.interpolate(self.context(F.avg_pool3d(p, 3)), { scale_factor = 3, mode = 'nearest' })
  local x = lumen.cat({ a, b }, 1)
  x = self.fc1_act(self.fc1(x))
  x = self.fc2_act(self.fc2(x))
  return self.out(x)
end

local function build(o)
  local model = DeepMedic(o.channels, o.fc):to(o.device)
  local L = #o.channels
  local out = o.segment - 2 * L
  if out < 3 or out % 3 ~= 0 then
    error(string.format('deepmedic: --segment %d with %d layers gives %d output voxels per axis; ' ..
      'segment - 2 x layers must be a positive multiple of 3 (e.g. 25 for 8 layers)', o.segment, L, out), 0)
  end
  if o.tile < 3 or o.tile % 3 ~= 0 then error('deepmedic: --tile must be a positive multiple of 3, got ' .. o.tile, 0) end
  return model, out, out + 6 * L
end

-- ------------------------------------------------------------------
-- inference in tiles

-- probabilities(model, x, opts) -> 2 x spatial f32 (softmax) over the box
-- lo..hi (0-based, exclusive; default the whole volume), background 1
-- elsewhere. x: spatial f32; bg: what the network reads outside x.
local function probabilities(model, x, o)
  local L, tile = model.L, o.tile
  local shape = x:size()
  local lo, hi = o.lo or { 0, 0, 0 }, o.hi or shape
  local starts, ext = {}, {}
  for a = 1, 3 do
    local n = hi[a] - lo[a]
    local k = math.max(1, math.ceil(n / tile))
    local t = 3 * math.ceil(math.ceil(n / k) / 3)
    starts[a], ext[a] = {}, t
    for i = 0, k - 1 do starts[a][#starts[a] + 1] = lo[a] + i * t end
  end
  -- x inside a margin of bg wide enough for every tile's patch
  local m = 3 * L
  local padded = lumen.full({ shape[1] + 2 * m + ext[1], shape[2] + 2 * m + ext[2], shape[3] + 2 * m + ext[3] },
    o.bg, 'f32')
  padded:narrow(0, m, shape[1]):narrow(1, m, shape[2]):narrow(2, m, shape[3]):copy_(x)
  local probs = lumen.zeros({ 2, shape[1], shape[2], shape[3] }, 'f32')
  probs[0]:fill_(1)
  model:eval()
  lumen.no_grad(function()
    for _, s1 in ipairs(starts[1]) do
      for _, s2 in ipairs(starts[2]) do
        for _, s3 in ipairs(starts[3]) do
          local s = { s1, s2, s3 }
          -- patch of volume voxels s - 3L .. s + t + 3L = padded s .. s + t + 6L
          local p = padded
          for a = 1, 3 do p = p:narrow(a - 1, s[a], ext[a] + 2 * m) end
          p = p:contiguous():reshape(1, 1, unpack(p:size()))
          if o.device and o.device ~= 'cpu' then p = p:to(o.device) end
          local y = F.softmax(model(p), 1):cpu()[0]
          local dst, src = probs, y
          for a = 1, 3 do
            local n = math.min(ext[a], hi[a] - s[a])
            dst = dst:narrow(a, s[a], n)
            src = src:narrow(a, 0, n)
          end
          dst:copy_(src)
        end
      end
    end
  end)
  return probs
end

-- The brain's bounding box (0-based lo, exclusive hi), grown by `margin`.
local function bbox(mask, margin)
  local nz = lumen.nonzero(mask)
  local lo, hi = nz:amin(0):totable(), nz:amax(0):totable()
  local shape = mask:size()
  for a = 1, 3 do
    lo[a] = math.max(0, lo[a] - margin)
    hi[a] = math.min(shape[a], hi[a] + 1 + margin)
  end
  return lo, hi
end

local function crop(t, lo, hi)
  local lead = t:dim() - 3
  for a = 1, 3 do t = t:narrow(lead + a - 1, lo[a], hi[a] - lo[a]) end
  return t:contiguous()
end

-- refine(probs, x, spacing, how) -> 2 x spatial probabilities
local function refine(probs, x, spacing, how)
  if how == 'none' then return probs end
  local crf = require 'lumen.crf'
  if how == 'dense' then
    return crf.dense { probs = probs, image = x, spacing = spacing, iterations = 5,
      smooth = { sigma_mm = spacing[1], weight = 1 },
      bilateral = { sigma_mm = 3 * spacing[1], sigma_int = 0.5, weight = 3 } }
  elseif how == 'grid' then
    local lab = crf.grid { probs = probs, image = x, spacing = spacing, lambda = 1, neighbours = 6 }
    local fg = lab:to('f32')
    return lumen.stack({ 1 - fg, fg }, 0)
  end
  error("deepmedic: --crf must be 'dense', 'grid' or 'none', got '" .. tostring(how) .. "'", 0)
end

-- ------------------------------------------------------------------
-- data

local function deform(o)
  if o.deform_mm <= 0 then return nil end
  return { magnitude_mm = o.deform_mm, control_mm = 24 }
end

-- cases(o, n, seed) -> list of {id, x (image on the working grid,
-- normalised), label (u8 tensor), brain (u8 tensor), lesions}
local function make_cases(o, base, n, seed)
  local lesions = require('lumen.data').get('lesions')
  local out = {}
  for i = 1, n do
    local img, lab, info = lesions.make { image = base.image, brain = base.brain, seed = seed + i,
      n_lesions = o.lesions, radius_mm = o.radius_mm, contrast = o.contrast, polarity = o.polarity, deform = deform(o) }
    -- RAS and normalised as predict prepares its inputs (the grid is
    -- already the working one)
    local x = segment.prepare(img, { clip = false })
    local label = segment.prepare_label(lab).data:ne(0):to('u8'):contiguous()
    local brain = segment.prepare_label(info.brain).data:ne(0):to('u8'):contiguous()
    out[i] = { id = 'lesions_' .. (seed + i), x = x, label = label, brain = brain, n_lesions = #info.lesions }
  end
  return out
end

local function binary(p) return p:ne(0):to('u8') end

local function score(pred, truth, spacing)
  local f = metrics.lesion_f1(pred, truth, { spacing = spacing, min_overlap = 1 })
  return { dice = metrics.dice(pred, truth), f1 = f.f1, precision = f.precision, recall = f.recall,
    tp = f.tp, fp = f.fp, fn = f.fn, sensitivity = metrics.sensitivity(pred, truth) }
end

local function mean_of(list)
  local m = {}
  for _, s in ipairs(list) do
    for k, v in pairs(s) do m[k] = (m[k] or 0) + v / #list end
  end
  return m
end

-- The baseline: |z| > t inside the brain, then components of m voxels or
-- more; z over the brain mask.
local function baseline_mask(c, t, m)
  local x, brain = c.x.data, c.brain
  local bx = x:masked_select(brain:ne(0))
  local mu, sd = bx:to('f64'):mean():item(), bx:to('f64'):std():item()
  local z = lumen.abs((x - mu) / sd)
  local mask = z:gt(t):logical_and(brain:ne(0)):to('u8')
  if m > 1 then mask = binary(morph.remove_small(mask, m)) end
  return mask
end

-- The (t, m) of two grids with the best mean Dice of score(t, m) over a
-- list of cases.
local function grid_search(ts, ms, list, score)
  local best = { dice = -1 }
  for _, t in ipairs(ts) do
    for _, m in ipairs(ms) do
      local scores = {}
      for i, c in ipairs(list) do scores[i] = { dice = score(c, t, m) } end
      local d = mean_of(scores).dice
      if d > best.dice then best = { dice = d, t = t, m = m } end
    end
  end
  return best
end

local function tune_baseline(cases)
  return grid_search({ 1.5, 2, 2.5, 3, 3.5, 4 }, { 1, 4, 8, 16 }, cases,
    function(c, t, m) return metrics.dice(baseline_mask(c, t, m), c.label) end)
end

-- The network's post-processing: lesion probability above `threshold`,
-- inside the brain when a mask is given, components of fewer than
-- `min_size` voxels removed. Balanced sampling trains the network on a
-- far higher share of lesion than a whole scan holds, so 0.5 finds too
-- much; both numbers are chosen on the validation case.
local function postprocess(probs, brain, threshold, min_size)
  local mask = probs[1]:gt(threshold)
  if brain then mask = mask:logical_and(brain:ne(0)) end
  mask = mask:to('u8')
  if min_size > 1 then mask = binary(morph.remove_small(mask, min_size)) end
  return mask
end

local function tune_postprocess(list)
  local best = grid_search({ 0.5, 0.7, 0.8, 0.9, 0.95, 0.98 }, { 1, 4, 8, 16 }, list,
    function(c, t, m) return metrics.dice(postprocess(c.probs, c.brain, t, m), c.truth) end)
  best.threshold, best.min_size = best.t, best.m
  return best
end

-- ------------------------------------------------------------------

local function seeds_text(seed, n) return string.format('%d..%d', seed + 1, seed + n) end

local function train(run)
  local o = run.opts
  local model, out, patch = build(o)
  local L = #o.channels
  local data = require('lumen.data')
  local base = data.get('colin27').load { spacing = o.spacing }
  local sp = { o.spacing, o.spacing, o.spacing }
  local t0 = lumen.clock()
  local train_seed, test_seed, val_seed = 1000 * o.seed, 1000 * o.seed + 500, 1000 * o.seed + 900
  local train_cases = make_cases(o, base, o.train_cases, train_seed)
  local val_cases = make_cases(o, base, 1, val_seed)
  local trained_on = string.format('%d synthetic-lesion cases (lesions seeds %s) built on Colin27 T1 at %g mm%s',
    o.train_cases, seeds_text(train_seed, o.train_cases), o.spacing,
    o.deform_mm > 0 and string.format(', each deformed (%g mm)', o.deform_mm) or '')
  run:say(string.format('trained on %s; made in %.1f s', trained_on, lumen.clock() - t0))
  -- what the network reads outside a volume: the background of the
  -- normalised scans
  local bg = math.huge
  for _, c in ipairs(train_cases) do bg = math.min(bg, c.x.data:amin():item()) end

  -- The volumes padded by half a patch (bg, label 0): the uniform sampler
  -- places patches inside a volume, so without it the outputs at its
  -- centre never reach the voxels near its faces (the neck, the face),
  -- where the network would then be free to see lesions.
  local half = math.floor(patch / 2)
  local function pad(t, value)
    local s = t:size()
    local out = lumen.full({ s[1] + 2 * half, s[2] + 2 * half, s[3] + 2 * half }, value, t:dtype())
    out:narrow(0, half, s[1]):narrow(1, half, s[2]):narrow(2, half, s[3]):copy_(t)
    return out
  end
  local function loader_cases(list)
    local l = {}
    for i, c in ipairs(list) do l[i] = { image = pad(c.x.data, bg), label = pad(c.label, 0), spacing = sp, id = c.id } end
    return l
  end
  local transforms = o.flip and { augment.flip { axes = { 0 } } } or {}
  local function make_loader(first)
    return loader.new { cases = loader_cases(train_cases), patch = { patch, patch, patch }, batch = o.batch,
      sampler = 'balanced', foreground = 0.5, transforms = transforms, cval = bg, workers = o.workers,
      seed = o.seed, first_batch = first }
  end
  -- fixed validation patches (balanced) from a case of its own
  local vl = loader.new { cases = loader_cases(val_cases), patch = { patch, patch, patch }, batch = o.batch,
    sampler = 'balanced', foreground = 0.5, cval = bg, seed = o.seed + 1 }
  local val = {}
  for i = 1, o.val_batches do
    val[i] = vl:next()
    if o.device ~= 'cpu' then val[i].image, val[i].label = val[i].image:to(o.device), val[i].label:to(o.device) end
  end
  vl:close()

  local function centre(label)
    local t = label
    for a = 1, 3 do t = t:narrow(a, 3 * L, out) end
    return t
  end
  local optim = require 'lumen.optim'
  local opt = optim.Adam(model:parameters(), { lr = o.lr })
  local sched = optim.lr_scheduler.CosineAnnealingLR(opt, o.steps)
  local n_params = 0
  for _, p in ipairs(model:parameters()) do n_params = n_params + p:numel() end
  run:say(string.format('DeepMedic: %d layers per pathway (%s channels), fc %d, %d parameters; ' ..
    'segments %d^3 normal, %d^3 context (1/3), %d^3 outputs, patches %d^3 at %g mm',
    L, table.concat(o.channels, ','), o.fc, n_params, o.segment, out / 3 + 2 * L, out, patch, o.spacing))

  local finished = segment.fit(run, {
    model = model, optimizer = opt, scheduler = sched, steps = o.steps,
    loader = make_loader,
    loss = function(b) return F.cross_entropy(model(b.image), centre(b.label)) end,
    validate_every = o.validate_every, log_every = o.log_every,
    validate = function()
      local inter, sum, loss = 0, 0, 0
      for _, b in ipairs(val) do
        local y = model(b.image)
        local t = centre(b.label)
        loss = loss + F.cross_entropy(y, t):item() / #val
        local p = y:argmax(1):eq(1)
        local tt = t:eq(1)
        inter = inter + lumen.count_nonzero(p:logical_and(tt)):item()
        sum = sum + lumen.count_nonzero(p):item() + lumen.count_nonzero(tt):item()
      end
      return { val_loss = loss, val_dice = sum > 0 and 2 * inter / sum or 1 }
    end,
  })
  if not finished then return end

  -- the test set
  t0 = lumen.clock()
  local test_cases = make_cases(o, base, o.test_cases, test_seed)
  local tested_on = string.format('%d other cases (lesions seeds %s, %d lesions in all), same base scan and spacing',
    o.test_cases, seeds_text(test_seed, o.test_cases), (function()
      local n = 0
      for _, c in ipairs(test_cases) do n = n + c.n_lesions end
      return n
    end)())
  local tuned = tune_baseline(train_cases)
  -- probabilities over the brain's box, without and with the CRF
  local function infer(c)
    local lo, hi = bbox(c.brain, 2)
    local probs = crop(probabilities(model, c.x.data, { tile = o.tile, bg = bg, lo = lo, hi = hi, device = o.device }),
      lo, hi)
    local x = crop(c.x.data, lo, hi)
    local r = { probs = probs, x = x, brain = crop(c.brain, lo, hi), truth = crop(c.label, lo, hi), id = c.id,
      n_lesions = c.n_lesions, lo = lo, hi = hi }
    if o.crf ~= 'none' then
      r.refined = { probs = refine(probs, x, sp, o.crf), brain = r.brain, truth = r.truth }
    end
    return r
  end
  local val_probs = {}
  for i, c in ipairs(val_cases) do val_probs[i] = infer(c) end
  local post = tune_postprocess(val_probs)
  local post_crf
  if o.crf ~= 'none' then
    local list = {}
    for i, v in ipairs(val_probs) do list[i] = v.refined end
    post_crf = tune_postprocess(list)
  end
  run:say(string.format('post-processing chosen on the validation case: probability > %g, components >= %d voxels ' ..
    '(Dice %.3f)%s', post.threshold, post.min_size, post.dice, post_crf and string.format('; after the %s CRF: > %g, ' ..
    '>= %d voxels (Dice %.3f)', o.crf, post_crf.threshold, post_crf.min_size, post_crf.dice) or ''))

  local res = { net = {}, raw = {}, crf = {}, baseline = {} }
  local figure_case
  for i, c in ipairs(test_cases) do
    local r = infer(c)
    local raw = postprocess(r.probs, r.brain, 0.5, 1)
    res.raw[i] = score(raw, r.truth, sp)
    local pred = postprocess(r.probs, r.brain, post.threshold, post.min_size)
    res.net[i] = score(pred, r.truth, sp)
    local refined = pred
    if o.crf ~= 'none' then
      refined = postprocess(r.refined.probs, r.brain, post_crf.threshold, post_crf.min_size)
      res.crf[i] = score(refined, r.truth, sp)
    end
    local basel = crop(baseline_mask(c, tuned.t, tuned.m), r.lo, r.hi)
    res.baseline[i] = score(basel, r.truth, sp)
    if i == 1 then figure_case = { x = r.x, truth = r.truth, pred = pred, refined = refined, base = basel, id = c.id } end
    run:say(string.format('%s: %d lesions  Dice net %.3f%s  baseline %.3f   F1 net %.3f%s  baseline %.3f', c.id,
      c.n_lesions, res.net[i].dice, o.crf ~= 'none' and string.format(' +crf %.3f', res.crf[i].dice) or '',
      res.baseline[i].dice, res.net[i].f1, o.crf ~= 'none' and string.format(' +crf %.3f', res.crf[i].f1) or '',
      res.baseline[i].f1))
  end
  local m = {
    test = mean_of(res.net),
    test_argmax = mean_of(res.raw),
    baseline = mean_of(res.baseline),
    per_case = { test = res.net, test_argmax = res.raw, baseline = res.baseline },
    postprocess = { threshold = post.threshold, min_size = post.min_size, validation_dice = post.dice },
    baseline_method = string.format('|z| > %g of the intensity z-scored over the brain mask, components of fewer ' ..
      'than %d voxels removed (t and size chosen on the training cases, mean Dice %.3f there)', tuned.t, tuned.m,
      tuned.dice),
    crf = o.crf,
    trained_on = trained_on, tested_on = tested_on,
    validated_on = string.format('lesions seed %s: post-processing (threshold, smallest component) chosen there',
      seeds_text(val_seed, 1)),
    network = string.format('DeepMedic, %d layers per pathway, channels %s, fc %d', L, table.concat(o.channels, ','), o.fc),
    note = 'means over the test cases; Dice of the lesion masks, lesion-wise detection F1 (a lesion found when ' ..
      'one voxel overlaps); predictions restricted to the brain mask. test: probability threshold and smallest ' ..
      'component chosen on the validation case; test_crf: the same after the CRF; test_argmax: probability > 0.5, ' ..
      'nothing removed',
  }
  if o.crf ~= 'none' then
    m.test_crf = mean_of(res.crf)
    m.per_case.test_crf = res.crf
    m.postprocess_crf = { threshold = post_crf.threshold, min_size = post_crf.min_size, validation_dice = post_crf.dice }
  end
  run:metrics(m)
  run:say(string.format('tested on %s (%.1f s)', tested_on, lumen.clock() - t0))
  run:say(string.format('mean Dice: DeepMedic %.3f%s (argmax alone %.3f), baseline %.3f;  ' ..
    'lesion F1: DeepMedic %.3f%s (argmax alone %.3f), baseline %.3f',
    m.test.dice, m.test_crf and string.format(', +%s CRF %.3f', o.crf, m.test_crf.dice) or '', m.test_argmax.dice,
    m.baseline.dice, m.test.f1, m.test_crf and string.format(', +CRF %.3f', m.test_crf.f1) or '', m.test_argmax.f1,
    m.baseline.f1))

  local plot = require 'lumen.plot'
  local fc = figure_case
  local outlines = {
    { mask = fc.truth, color = { 0, 255, 0 }, name = 'truth' },
    { mask = fc.pred, color = { 255, 0, 0 }, name = 'DeepMedic' },
  }
  if o.crf ~= 'none' then outlines[#outlines + 1] = { mask = fc.refined, color = { 255, 200, 0 }, name = 'DeepMedic + ' .. o.crf .. ' CRF' } end
  outlines[#outlines + 1] = { mask = fc.base, color = { 0, 128, 255 }, name = 'baseline' }
  -- axial slices through the truth lesions, spread over them
  local zs, seen = {}, {}
  for _, row in ipairs(lumen.nonzero(fc.truth):totable()) do
    if not seen[row[3]] then seen[row[3]] = true zs[#zs + 1] = row[3] end
  end
  table.sort(zs)
  local slices = {}
  for k = 1, math.min(6, #zs) do slices[k] = zs[1 + math.floor((k - 0.5) * #zs / math.min(6, #zs))] end
  plot.overlay(run:figure('test_overlay.png'), fc.x, { outlines = outlines, axis = 2, slices = #slices > 0 and slices or 6,
    columns = 3, zoom = 3, flip = true,
    title = string.format('%s (test): truth, DeepMedic%s, baseline', fc.id, o.crf ~= 'none' and ', +CRF' or '') })
end

-- The post-processing the run chose (metrics.json), or argmax.
local function chosen(run)
  local f = io.open(run.dir .. '/metrics.json', 'rb')
  local m = f and require('lumen.json').decode(f:read('*a'))
  if f then f:close() end
  local p = m and (run.opts.crf ~= 'none' and m.postprocess_crf or m.postprocess)
  return p and p.threshold or 0.5, p and p.min_size or 1
end

local function predict(run, img)
  local o = run.opts
  local model = build(o)
  run:restore { model = model }
  local x = segment.prepare(img, { spacing = o.spacing, clip = false })
  local bg = x.data:amin():item()
  local probs = probabilities(model, x.data, { tile = o.tile, bg = bg, device = o.device })
  probs = refine(probs, x.data, { o.spacing, o.spacing, o.spacing }, o.crf)
  local threshold, min_size = chosen(run)
  local fg = postprocess(probs, nil, threshold, min_size):to('f32')
  return segment.to_grid(lumen.stack({ 1 - fg, fg }, 0), x, img)
end

return recipe.define {
  name = 'deepmedic',
  description = 'DeepMedic (dual-pathway 3D CNN) for synthetic lesions in Colin27, vs a z-score threshold; optional CRF',
  options = {
    { 'steps', 300, 'training steps' },
    { 'batch', 8, 'segments per step (half centred on lesions)' },
    { 'lr', 2e-3, 'learning rate (Adam, cosine decay)' },
    { 'spacing', 2, 'working voxel size (mm)' },
    { 'segment', 25, 'normal-pathway segment per axis (segment - 2 x layers: outputs, a multiple of 3)' },
    { 'channels', { 8, 8, 12, 12, 12, 12, 16, 16 }, 'feature maps of each pathway layer (the paper: 30,30,40,40,40,40,50,50)' },
    { 'fc', 32, 'feature maps of the two 1x1x1 fully connected layers (the paper: 150)' },
    { 'tile', 45, 'inference output tile per axis (a multiple of 3)' },
    { 'train_cases', 6, 'training cases (lesions seeds 1000 seed + 1 ..)' },
    { 'test_cases', 3, 'test cases (lesions seeds 1000 seed + 501 ..)' },
    { 'lesions', { 1, 5 }, 'lesions per case (lo,hi)' },
    { 'radius_mm', { 3, 10 }, 'lesion radius range (mm)' },
    { 'contrast', { 0.2, 0.6 }, 'lesion contrast range (fraction of the local tissue mean)' },
    { 'polarity', 'both', "lesions brighter ('hyper'), darker ('hypo') or 'both'" },
    { 'deform_mm', 4, 'random deformation of each case (mm; 0: every case on the same anatomy)' },
    { 'flip', true, 'augment with left-right flips' },
    { 'crf', 'dense', "refine the test predictions: 'dense' (fully connected CRF), 'grid' (graph cut) or 'none'" },
    { 'val_batches', 2, 'batches of fixed validation segments' },
    { 'validate_every', 50, 'steps between validations' },
    { 'log_every', 10, 'steps between log lines' },
    { 'workers', 1, 'loader threads' },
  },
  -- quick: few, large, bright lesions at 3 mm, so that 40 steps of a tiny
  -- network find them
  quick = { steps = 40, batch = 4, spacing = 3, channels = { 4, 4, 6, 6, 6, 6, 8, 8 }, fc = 12, tile = 30,
    train_cases = 2, test_cases = 1, lesions = { 3, 4 }, radius_mm = { 6, 12 }, contrast = { 0.8, 1 },
    polarity = 'hyper', deform_mm = 0, val_batches = 1, validate_every = 10, log_every = 5, workers = 0 },
  train = train,
  predict = predict,
}
