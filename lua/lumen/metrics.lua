-- metrics.lua: segmentation metrics (src/ops/metrics.c).
--
--   local metrics = require 'lumen.metrics'
--   metrics.dice(pred, truth)                      -- 1 when both are empty
--   metrics.jaccard(pred, truth)                   -- 1 when both are empty
--   metrics.sensitivity(pred, truth)               -- TP / (TP + FN); nan when truth is empty
--   metrics.specificity(pred, truth)               -- TN / (TN + FP)
--   metrics.hd95(pred, truth, spacing)             -- mm
--   metrics.assd(pred, truth, spacing)             -- mm
--   metrics.surface_distances(pred, truth, spacing, {percentile = 95})  -- all of them, see below
--   metrics.volume_difference(pred, truth, spacing) -- ml (Vp - Vt), and (Vp - Vt) / Vt
--   metrics.lesion_f1(pred, truth, {connectivity =, min_overlap = 1})
--   metrics.evaluate(pred_labels, truth_labels, {spacing =, labels = {1, 2}})
--
-- pred and truth are masks of equal shapes: integer or bool tensors of 1 to
-- 3 dims, nonzero = in (label maps for evaluate). Spacing is a number or a
-- list with one value per dim (mm), default 1.
--
-- Surface distances follow medpy.metric.binary: the surface of a mask is
-- its voxels with a face neighbour (6 in 3-D, 4 in 2-D) outside the mask or
-- outside the volume; each surface voxel of one mask has a distance in mm to
-- the nearest surface voxel of the other (exact Euclidean distance
-- transforms, anisotropic spacing).
--   hd95  the 95th percentile (numpy's linear rule) of the union of both
--         directed sets: medpy's hd95. MONAI's compute_hausdorff_distance
--         (percentile=95) takes the larger of the two directed 95th
--         percentiles instead, which is never smaller (surface_distances
--         gives it as hd_monai).
--   assd  the mean of the two directed mean distances: medpy's assd.
-- Both are 0 when both masks are empty and math.huge when only one is.
--
-- Lesion-wise scores count connected components (default full
-- connectivity: 26 in 3-D, 8 in 2-D). A truth lesion is detected (tp) when
-- at least min_overlap of its voxels are predicted; a predicted lesion is a
-- false positive when it touches no truth voxel. recall = tp / n_truth,
-- precision = (n_pred - fp) / n_pred, each 1 when its count is 0; f1 =
-- 2 P R / (P + R), 0 when both are 0 (so 1 when neither map has a lesion,
-- 0 when only one has).
local ffi = require 'ffi'
local lumen = require 'lumen'
local core = require 'lumen.core'
local morph = require 'lumen.morph'
local C, ctx = core.C, core.ctx
local util = morph.util

local metrics = {}

-- tp, fp, fn, tn as Lua numbers
local function counts(name, pred, truth)
  local hp, ht = util.handle(name, pred, 'pred'), util.handle(name, truth, 'truth')
  local c = ffi.new('int64_t[4]')
  if C.lm_confusion_counts(ctx, hp, ht, c) ~= 0 then util.fail_c(name) end
  return tonumber(c[0]), tonumber(c[1]), tonumber(c[2]), tonumber(c[3])
end

local function dice_of(tp, fp, fn)
  local d = 2 * tp + fp + fn
  return d == 0 and 1 or 2 * tp / d
end
local function jaccard_of(tp, fp, fn)
  local d = tp + fp + fn
  return d == 0 and 1 or tp / d
end
local function ratio(a, b) return b == 0 and 0 / 0 or a / b end

function metrics.dice(pred, truth)
  local tp, fp, fn = counts('metrics.dice', pred, truth)
  return dice_of(tp, fp, fn)
end

function metrics.jaccard(pred, truth)
  local tp, fp, fn = counts('metrics.jaccard', pred, truth)
  return jaccard_of(tp, fp, fn)
end

function metrics.sensitivity(pred, truth)
  local tp, _, fn = counts('metrics.sensitivity', pred, truth)
  return ratio(tp, tp + fn)
end

function metrics.specificity(pred, truth)
  local _, fp, _, tn = counts('metrics.specificity', pred, truth)
  return ratio(tn, tn + fp)
end

local function surface(name, pred, truth, spacing, percentile)
  local hp, ht = util.handle(name, pred, 'pred'), util.handle(name, truth, 'truth')
  local sp = util.spacing(name, spacing, util.dim(pred))
  local r = ffi.new('double[6]')
  if C.lm_surface_distance(ctx, hp, ht, sp, percentile, r) ~= 0 then util.fail_c(name) end
  return r
end

function metrics.hd95(pred, truth, spacing)
  return surface('metrics.hd95', pred, truth, spacing, 95)[0]
end

function metrics.assd(pred, truth, spacing)
  return surface('metrics.assd', pred, truth, spacing, 95)[1]
end

-- Every surface distance at once: hd (the percentile of the union, medpy's
-- rule), assd, mean_pred_to_truth, mean_truth_to_pred, hd_pred_to_truth,
-- hd_truth_to_pred (directed percentiles) and hd_monai (their maximum).
-- percentile = 100 gives the Hausdorff distance.
function metrics.surface_distances(pred, truth, spacing, opts)
  local name = 'metrics.surface_distances'
  opts = util.options(name, opts, { 'percentile' })
  local q = opts.percentile == nil and 95 or opts.percentile
  if type(q) ~= 'number' or not (q >= 0 and q <= 100) then
    util.fail(name, 'percentile must be a number from 0 to 100, got %s', util.describe(q))
  end
  local r = surface(name, pred, truth, spacing, q)
  return {
    hd = r[0], assd = r[1], mean_pred_to_truth = r[2], mean_truth_to_pred = r[3],
    hd_pred_to_truth = r[4], hd_truth_to_pred = r[5], hd_monai = math.max(r[4], r[5]),
  }
end

local function voxel_ml(name, t, spacing)
  local nd = util.dim(t)
  local sp = util.spacing(name, spacing, nd)
  local v = 1
  for i = 0, nd - 1 do v = v * sp[i] end
  return v / 1000
end

-- (Vpred - Vtruth) in ml, and (Vpred - Vtruth) / Vtruth (inf or nan when
-- truth is empty).
function metrics.volume_difference(pred, truth, spacing)
  local name = 'metrics.volume_difference'
  local tp, fp, fn = counts(name, pred, truth)
  local ml = voxel_ml(name, pred, spacing)
  local vp, vt = (tp + fp) * ml, (tp + fn) * ml
  return vp - vt, (vp - vt) / vt
end

function metrics.lesion_f1(pred, truth, opts)
  local name = 'metrics.lesion_f1'
  opts = util.options(name, opts, { 'spacing', 'connectivity', 'min_overlap' })
  local hp, ht = util.handle(name, pred, 'pred'), util.handle(name, truth, 'truth')
  local min_overlap = opts.min_overlap == nil and 1 or util.int(name, opts.min_overlap, 'min_overlap', 1)
  if opts.spacing ~= nil then util.spacing(name, opts.spacing, util.dim(pred)) end -- checked; counts do not use it
  -- equal shapes first, with the message that names both
  local c = ffi.new('int64_t[4]')
  if C.lm_confusion_counts(ctx, hp, ht, c) ~= 0 then util.fail_c(name) end
  local plab, n_pred = util.components(name, pred, opts.connectivity)
  local tlab, n_truth = util.components(name, truth, opts.connectivity)
  local function overlap(labels, n, mask)
    core.out1[0] = nil
    if C.lm_label_overlap(ctx, labels.h, mask.h, n + 1, core.out1) ~= 0 then util.fail_c(name) end
    local t = core.wrap(core.out1[0])
    local p = ffi.cast('int64_t *', t:data_ptr())
    local list = {}
    for k = 1, n do list[k] = tonumber(p[k]) end
    return list
  end
  local detected, hit = overlap(tlab, n_truth, pred), overlap(plab, n_pred, truth)
  local tp, fp = 0, 0
  for k = 1, n_truth do
    if detected[k] >= min_overlap then tp = tp + 1 end
  end
  for k = 1, n_pred do
    if hit[k] == 0 then fp = fp + 1 end
  end
  local precision = n_pred == 0 and 1 or (n_pred - fp) / n_pred
  local recall = n_truth == 0 and 1 or tp / n_truth
  local f1 = (precision + recall) == 0 and 0 or 2 * precision * recall / (precision + recall)
  return {
    f1 = f1, precision = precision, recall = recall, tp = tp, fp = fp, fn = n_truth - tp,
    n_pred = n_pred, n_truth = n_truth,
  }
end

local KEYS = { 'dice', 'jaccard', 'hd95', 'assd', 'sensitivity', 'specificity', 'volume_ml', 'volume_truth_ml',
  'volume_difference_ml' }

-- Per label of two label maps: { [label] = {dice, jaccard, hd95, assd,
-- sensitivity, specificity, volume_ml, volume_truth_ml,
-- volume_difference_ml}, mean = {the same, averaged over the labels,
-- skipping nan values} }. labels default to every value > 0 in either map.
function metrics.evaluate(pred, truth, opts)
  local name = 'metrics.evaluate'
  opts = util.options(name, opts, { 'spacing', 'labels' })
  local hp, ht = util.handle(name, pred, 'pred'), util.handle(name, truth, 'truth')
  local c = ffi.new('int64_t[4]') -- checks dtypes and shapes, naming both
  if C.lm_confusion_counts(ctx, hp, ht, c) ~= 0 then util.fail_c(name) end
  local labels = opts.labels
  if labels == nil then
    -- voxel counts per label value (1 .. max) of each map, in C (a sort of
    -- every voxel, as unique does, takes seconds on a whole brain)
    local seen = {}
    for _, t in ipairs({ pred, truth }) do
      local top = t:numel() > 0 and t:max():item() or 0
      if (top > 0 and t:min():item() < 0) or top > 2 ^ 20 then
        util.fail(name, 'label values from %d to %d, expected 0 to 2^20 (pass labels = {...})', t:min():item(), top)
      end
      if top > 0 then
        core.out1[0] = nil
        if C.lm_label_overlap(ctx, t.h, t.h, top + 1, core.out1) ~= 0 then util.fail_c(name) end
        local n = core.wrap(core.out1[0])
        local p = ffi.cast('int64_t *', n:data_ptr())
        for k = 1, top do
          if p[k] > 0 then seen[k] = true end
        end
      end
    end
    labels = {}
    for k in pairs(seen) do labels[#labels + 1] = k end
    table.sort(labels)
  elseif type(labels) ~= 'table' or lumen.is_tensor(labels) then
    util.fail(name, 'labels must be a list of integers, got %s', util.describe(labels))
  else
    for i, v in ipairs(labels) do util.int(name, v, 'labels entry ' .. i, -2 ^ 52) end
  end
  local ml = voxel_ml(name, pred, opts.spacing)
  local sp = opts.spacing
  local result, sums, ns = {}, {}, {}
  for _, label in ipairs(labels) do
    local p, t = pred:eq(label), truth:eq(label)
    local tp, fp, fn, tn = counts(name, p, t)
    local r = surface(name, p, t, sp, 95)
    local m = {
      dice = dice_of(tp, fp, fn), jaccard = jaccard_of(tp, fp, fn), hd95 = r[0], assd = r[1],
      sensitivity = ratio(tp, tp + fn), specificity = ratio(tn, tn + fp),
      volume_ml = (tp + fp) * ml, volume_truth_ml = (tp + fn) * ml, volume_difference_ml = (fp - fn) * ml,
    }
    p:free()
    t:free()
    result[label] = m
    for _, k in ipairs(KEYS) do
      if m[k] == m[k] then sums[k], ns[k] = (sums[k] or 0) + m[k], (ns[k] or 0) + 1 end
    end
  end
  result.mean = {}
  for _, k in ipairs(KEYS) do result.mean[k] = ns[k] and sums[k] / ns[k] or 0 / 0 end
  return result
end

return metrics
