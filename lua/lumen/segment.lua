-- segment.lua: what the segmentation recipes share.
--
--   local segment = require 'lumen.segment'
--   local x = segment.prepare(img, {spacing = {2, 2, 2}})   -- RAS, resampled, normalised f32
--   local finished = segment.fit(run, {model =, optimizer =, scheduler =, steps =,
--     loader = function(first_batch) return loader.new{..., first_batch = first_batch} end,
--     loss = function(batch) return loss_tensor end,
--     validate = function(step) return {val_dice = ...} end, validate_every = 100, log_every = 10})
--   local probs = segment.probabilities(model, x, {roi = {32, 32, 32}, overlap = 0.5, device =})
--   local lab = segment.to_grid(probs, x, img)   -- K x spatial probabilities on x's grid
--                                                -- -> argmax labels on img's grid
local lumen = require 'lumen'
local image = require 'lumen.image'

local segment = {}

-- Robust intensity normalisation for MR: the head is the voxels brighter
-- than the volume's mean; its 0.5 and 99.5 percentiles clip the image and
-- its mean and deviation z-score it. Every statistic is the head's, so the
-- field of view (how much background surrounds it) does not change them.
-- clip = false keeps the extremes (lesions are outliers by nature), or
-- {lo, hi} sets other percentiles.
function segment.normalize(img, clip)
  local d = img.data:to('f64')
  local head = d:masked_select(d:gt(d:mean():item())):sort()
  local n = head:numel()
  if n == 0 then return image.new(lumen.zeros(d:size(), 'f32'), { affine = img.affine, meta = img.meta }) end
  local function percentile(p) -- linear between ranks, as numpy's default
    local pos = p / 100 * (n - 1)
    local i = math.floor(pos)
    local lo, hi = head[i], head[math.min(i + 1, n - 1)]
    return lo + (hi - lo) * (pos - i)
  end
  local lo, hi = -math.huge, math.huge
  if clip ~= false then lo, hi = percentile(clip and clip[1] or 0.5), percentile(clip and clip[2] or 99.5) end
  local clipped = head:clamp(lo, hi)
  local mean, std = clipped:mean():item(), clipped:std():item()
  local z = (d:clamp(lo, hi) - mean) / math.max(std, 1e-12)
  return image.new(z:to('f32'), { affine = img.affine, meta = img.meta })
end

-- prepare(img, {spacing =, orientation = 'RAS', clip =}): the working grid
-- every recipe trains and predicts on (clip as for normalize).
function segment.prepare(img, opts)
  opts = opts or {}
  local x = img:reorient(opts.orientation or 'RAS')
  if x.data:dtype() ~= 'f32' then x = image.new(x.data:to('f32'), { affine = x.affine, meta = x.meta }) end
  if opts.spacing then
    local sp = type(opts.spacing) == 'number' and { opts.spacing, opts.spacing, opts.spacing } or opts.spacing
    x = x:resample { spacing = sp, order = 1 }
  end
  return segment.normalize(x, opts.clip)
end

-- The same grid for a label image (nearest neighbour).
function segment.prepare_label(lab, opts)
  opts = opts or {}
  local y = lab:reorient(opts.orientation or 'RAS')
  if opts.spacing then
    local sp = type(opts.spacing) == 'number' and { opts.spacing, opts.spacing, opts.spacing } or opts.spacing
    y = y:resample { spacing = sp, order = 0 }
  end
  return y
end

-- to_grid(probs, work, target): probs K x spatial on work's grid (a
-- lumen.image's), interpolated linearly onto target's grid, argmax -> an
-- u8 label image with target's affine.
function segment.to_grid(probs, work, target)
  local k = probs:size()[1]
  local shape = { unpack(target.data:size(), 1, 3) }
  local best, arg = nil, nil
  for c = 0, k - 1 do
    local p = image.new(probs[c]:contiguous(), { affine = work.affine }):resample_to(
      image.new(lumen.zeros(shape, 'u8'), { affine = target.affine }), { order = 1 }).data
    if not best then
      best, arg = p, lumen.zeros(shape, 'u8')
    else
      local better = p:gt(best)
      best = lumen.where(better, p, best)
      arg = lumen.where(better, lumen.full(shape, c, 'u8'), arg)
    end
  end
  return image.new(arg, { affine = target.affine })
end

-- on_device(model, device): a callable for lumen.inference that runs the
-- model on the device (windows go there, logits come back to the CPU).
function segment.on_device(model, device)
  if device == 'cpu' then return model end
  return function(x) return model(x:to(device)):cpu() end
end

-- probabilities(model, x, {roi =, overlap = 0.5, batch = 2, device = 'cpu'}):
-- softmax class probabilities K x spatial of a prepared image (or a
-- spatial tensor), by sliding windows, in eval mode.
function segment.probabilities(model, x, o)
  model:eval()
  local data = lumen.is_tensor(x) and x or x.data
  return lumen.no_grad(function()
    local F = require('lumen.nn').F
    local run = segment.on_device(function(w) return F.softmax(model(w), 1) end, o.device or 'cpu')
    return require('lumen.inference').sliding_window(run, data:unsqueeze(0),
      { roi = o.roi, overlap = o.overlap or 0.5, batch = o.batch or 2 })
  end)
end

-- labels(model, x, target, o): probabilities on x's grid, then labels on
-- target's grid (to_grid); o as for probabilities.
function segment.labels(model, x, target, o)
  return segment.to_grid(segment.probabilities(model, x, o), x, target)
end

-- fit(run, o): the training loop every recipe shares, resumable (see
-- lumen.recipe). Batches move to run.device; the model must be there
-- already (before its optimizer is made). The loss is averaged over each window of log_every steps
-- (the partial window travels in the checkpoint, so a resumed run logs the
-- same numbers). Returns false when the run stopped early (--stop_at).
function segment.fit(run, o)
  local state = { model = o.model, optimizer = o.optimizer, scheduler = o.scheduler }
  local start, extra = run:resume(state)
  local acc = (extra and extra.user) or { sum = 0, n = 0 }
  local log_every, val_every = o.log_every or 10, o.validate_every or 0
  local dl = o.loader(start)
  for step = start + 1, o.steps do
    o.model:train()
    local batch = dl:next()
    if run.device ~= 'cpu' then
      batch.image, batch.label = batch.image:to(run.device), batch.label:to(run.device)
    end
    o.optimizer:zero_grad()
    local loss = o.loss(batch)
    loss:backward()
    o.optimizer:step()
    if o.scheduler then o.scheduler:step() end
    local lv = loss:item()
    acc.sum, acc.n = acc.sum + lv, acc.n + 1
    run:progress(step, o.steps, { loss = lv })
    local values
    if step % log_every == 0 or step == o.steps then
      values = { loss = acc.sum / acc.n }
      acc.sum, acc.n = 0, 0
    end
    if o.validate and val_every > 0 and (step % val_every == 0 or step == o.steps) then
      o.model:eval()
      values = values or {}
      for k, v in pairs(lumen.no_grad(o.validate, step)) do values[k] = v end
    end
    if values then run:log(step, values) end
    if run:checkpoint(step, state, acc, step == o.steps) then
      dl:close()
      return false
    end
  end
  dl:close()
  o.model:eval()
  return true
end

return segment
