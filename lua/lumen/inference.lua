-- inference.lua: sliding-window inference over a whole volume.
--
--   local inference = require 'lumen.inference'
--   local y = inference.sliding_window(model, x, {roi = {96, 96, 96}, overlap = 0.5, batch = 4})
--
-- x is C x spatial, or N x C x spatial (1 to 3 spatial dims; the length of
-- roi says how many). model(windows) takes B x C x roi (B <= batch) and
-- returns B x K x roi: logits or probabilities, averaged as given. The
-- result is K x spatial (N x K x spatial when x had the batch dim), f32
-- unless `out` is given.
--
-- Options:
--   roi          window size per spatial axis (required)
--   overlap      0.5; the step is floor(roi * (1 - overlap)), at least 1
--   batch        1; windows per model call
--   weighting    'gaussian' (default) or 'constant'
--   sigma_scale  0.125; the Gaussian's sigma is sigma_scale * roi per axis
--   mirror       spatial axes (0-based) to mirror for test-time augmentation:
--                every subset of them (the empty one too) is predicted,
--                flipped back and averaged, as nnU-Net does
--   num_classes  K, checked against the model's output (else taken from it)
--   pad_value    0; what a window reads outside a volume smaller than roi
--   progress     progress(done, total), in windows, after each model call
--   out          a K x spatial (N x K x spatial) f32 or f64 tensor to fill
--
-- The grid (as MONAI): along an axis of size n, window starts are 0, step,
-- 2 step, ... and the last one is moved back to n - roi so that it ends
-- flush with the volume. An axis shorter than roi gets one window, as if the
-- volume were padded with pad_value (floor of the difference before, the
-- rest after) and the result cropped back; no padded copy is made.
--
-- Weighting: each window's prediction is multiplied by an importance map
-- and the sum is divided by the summed maps. The Gaussian map is
-- exp(-d^2 / (2 sigma^2)) with d the distance to the window's centre,
-- (roi - 1) / 2 per axis, as a product of 1-D Gaussians, each scaled to a
-- peak of 1 and floored at 1e-6 (a weight beyond about 5.3 sigma; with the
-- default sigma_scale the window's edge is within 4 sigma, so the floor
-- changes nothing). nnU-Net instead raises the zeros of the whole map to its
-- smallest nonzero value; a floor per axis keeps the map separable, and
-- keeps the products (>= 1e-18 in 3-D) inside f32's range, so that a voxel
-- reached only by window corners is not lost to underflow. Because the map
-- is separable and the windows form a grid, the summed weight at a voxel is
-- a product of per-axis sums: only the output has the volume's size (one
-- value per class and voxel), plus the batch of windows. src/ops/window.c
-- holds the loops.
--
-- The model runs with grad mode off and in whatever mode (train/eval) the
-- caller set. The window batch handed to it is reused: a model must not
-- keep it.
local ffi = require 'ffi'
local lumen = require 'lumen'
local core = lumen.core
local C, ctx = core.C, core.ctx

local inference = {}

local NAME = 'lumen.inference.sliding_window'
local OPTIONS = { 'roi', 'overlap', 'batch', 'weighting', 'sigma_scale', 'mirror', 'num_classes', 'pad_value',
  'progress', 'out' }

-- "file:line: " of the stack level that called sliding_window, so that
-- errors raised deep inside the window loop still blame the user's line.
local function where(level)
  local info = debug.getinfo(level + 1, 'Sl')
  if info and info.currentline and info.currentline > 0 then
    return string.format('%s:%d: ', info.short_src, info.currentline)
  end
  return ''
end

local function shape_str(t) return table.concat(t:size(), 'x') end
local function is_int(v) return type(v) == 'number' and v == math.floor(v) and math.abs(v) < 2 ^ 53 end
local function is_callable(f)
  if type(f) == 'function' then return true end
  local mt = (type(f) == 'table' or type(f) == 'userdata') and getmetatable(f)
  return type(mt) == 'table' and mt.__call ~= nil
end
local function describe(v)
  if core.is_tensor(v) then return 'a tensor' end
  if type(v) == 'table' then return 'a table' end
  return tostring(v)
end

-- Window starts along one axis of size n (0-based, in the volume's
-- coordinates; negative when the axis is shorter than the window).
local function window_starts(n, roi, step)
  local len = math.max(n, roi)
  local before = math.floor((len - n) / 2) -- padding of a short axis
  local count = math.ceil((len - roi) / step) + 1
  local starts = {}
  for k = 0, count - 1 do starts[k + 1] = math.min(k * step, len - roi) - before end
  return starts
end

-- Importance weights of one axis of a window of size roi.
local WEIGHT_FLOOR = 1e-6
local function axis_weights(roi, weighting, sigma_scale)
  local w = {}
  if weighting == 'constant' then
    for r = 1, roi do w[r] = 1 end
    return w
  end
  local centre, sigma = (roi - 1) / 2, sigma_scale * roi
  local peak = 0
  for r = 1, roi do
    local d = (r - 1 - centre) / sigma
    w[r] = math.exp(-0.5 * d * d)
    peak = math.max(peak, w[r])
  end
  for r = 1, roi do w[r] = peak > 0 and math.max(w[r] / peak, WEIGHT_FLOOR) or 1 end
  return w
end

-- Checks the options; returns the settings of a run.
local function parse(model, x, opts, pos)
  local function fail(fmt, ...) error(pos .. NAME .. ': ' .. string.format(fmt, ...), 0) end
  if not is_callable(model) then fail('model must be a function or a callable module, got %s', type(model)) end
  if not core.is_tensor(x) then fail('x must be a tensor, got %s', type(x)) end
  if x.h == nil then fail('x was freed') end
  if opts == nil then fail("options must be a table with at least 'roi'") end
  if type(opts) ~= 'table' or core.is_tensor(opts) then
    fail('options must be a table {%s}, got %s', table.concat(OPTIONS, ', '), describe(opts))
  end
  for k in pairs(opts) do
    local known = false
    for _, n in ipairs(OPTIONS) do known = known or n == k end
    if not known then fail("unknown option '%s' (expected %s)", tostring(k), table.concat(OPTIONS, ', ')) end
  end

  local s = { model = model, x = x }
  local roi = opts.roi
  if type(roi) ~= 'table' or core.is_tensor(roi) or #roi < 1 or #roi > 3 then
    fail("option 'roi' must be a list of 1 to 3 window sizes (one per spatial axis), got %s",
      type(roi) == 'table' and not core.is_tensor(roi) and ('a list of ' .. #roi) or describe(roi))
  end
  for i, r in ipairs(roi) do
    if not is_int(r) or r < 1 then fail("option 'roi' entry %d is %s, expected a positive integer", i, describe(r)) end
  end
  local nd = #roi
  s.nd, s.roi = nd, { unpack(roi) }

  local xd = x:dim()
  if xd ~= nd + 1 and xd ~= nd + 2 then
    fail("x is %d-D (%s), but option 'roi' has %d sizes: expected C x spatial (%d-D) or N x C x spatial (%d-D)",
      xd, shape_str(x), nd, nd + 1, nd + 2)
  end
  s.batched = xd == nd + 2
  local size = x:size()
  if not s.batched then table.insert(size, 1, 1) end
  s.samples, s.channels = size[1], size[2]
  if s.samples < 1 then fail('x (%s) has no samples', shape_str(x)) end
  s.spatial = {}
  for a = 1, nd do s.spatial[a] = size[a + 2] end

  local overlap = opts.overlap == nil and 0.5 or opts.overlap
  if type(overlap) ~= 'number' or not (overlap >= 0 and overlap < 1) then
    fail("option 'overlap' is %s, expected a number in [0, 1)", describe(overlap))
  end
  s.batch = opts.batch == nil and 1 or opts.batch
  if not is_int(s.batch) or s.batch < 1 then fail("option 'batch' is %s, expected a positive integer", describe(s.batch)) end
  s.weighting = opts.weighting == nil and 'gaussian' or opts.weighting
  if s.weighting ~= 'gaussian' and s.weighting ~= 'constant' then
    fail("option 'weighting' is %s, expected 'gaussian' or 'constant'", describe(s.weighting))
  end
  local sigma_scale = opts.sigma_scale == nil and 0.125 or opts.sigma_scale
  if type(sigma_scale) ~= 'number' or not (sigma_scale > 0 and sigma_scale < math.huge) then
    fail("option 'sigma_scale' is %s, expected a positive number", describe(sigma_scale))
  end
  s.pad_value = opts.pad_value == nil and 0 or opts.pad_value
  if type(s.pad_value) ~= 'number' then fail("option 'pad_value' is %s, expected a number", describe(s.pad_value)) end
  if opts.progress ~= nil and not is_callable(opts.progress) then
    fail("option 'progress' must be a function, got %s", type(opts.progress))
  end
  s.progress = opts.progress

  s.mirror = {}
  if opts.mirror ~= nil then
    if type(opts.mirror) ~= 'table' or core.is_tensor(opts.mirror) then
      fail("option 'mirror' must be a list of spatial axes (0 to %d), got %s", nd - 1, describe(opts.mirror))
    end
    local seen = {}
    for i, a in ipairs(opts.mirror) do
      if not is_int(a) or a < 0 or a >= nd then
        fail("option 'mirror' entry %d is %s, expected a spatial axis 0 to %d", i, describe(a), nd - 1)
      end
      if seen[a] then fail("option 'mirror' lists axis %d twice", a) end
      seen[a] = true
      s.mirror[i] = a
    end
  end

  s.classes, s.classes_from = opts.num_classes, "option 'num_classes' is"
  if s.classes ~= nil and (not is_int(s.classes) or s.classes < 1) then
    fail("option 'num_classes' is %s, expected a positive integer", describe(s.classes))
  end
  if opts.out ~= nil then
    local out = opts.out
    if not core.is_tensor(out) then fail("option 'out' must be a tensor, got %s", type(out)) end
    if out.h == nil then fail("option 'out' was freed") end
    if out:dtype() ~= 'f32' and out:dtype() ~= 'f64' then
      fail("option 'out' is %s, expected f32 or f64", out:dtype())
    end
    local osz = out:size()
    local ok = #osz == xd
    if not s.batched then table.insert(osz, 1, 1) end
    ok = ok and osz[1] == s.samples and (s.classes == nil or osz[2] == s.classes)
    for a = 1, nd do ok = ok and osz[a + 2] == s.spatial[a] end
    if not ok then
      local want = {}
      if s.batched then want[1] = tostring(s.samples) end
      want[#want + 1] = s.classes and tostring(s.classes) or 'K'
      for a = 1, nd do want[#want + 1] = tostring(s.spatial[a]) end
      fail("option 'out' is %s, expected %s", shape_str(out), table.concat(want, ' x '))
    end
    s.out, s.classes, s.classes_from = out, osz[2], "option 'out' has"
  end
  s.dtype = s.out and s.out:dtype() or 'f32'

  -- the grid, the per-axis weights and the per-axis sums of the weights
  s.starts, s.weights = {}, {}
  local nw, nsum = 0, 0
  for a = 1, nd do
    local step = math.max(1, math.floor(s.roi[a] * (1 - overlap)))
    s.starts[a] = window_starts(s.spatial[a], s.roi[a], step)
    s.weights[a] = axis_weights(s.roi[a], s.weighting, sigma_scale)
    nw, nsum = nw + s.roi[a], nsum + s.spatial[a]
  end
  s.weight_buf = ffi.new('double[?]', nw)
  s.sum_buf = ffi.new('double[?]', math.max(nsum, 1))
  local wo, so = 0, 0
  for a = 1, nd do
    local w, n = s.weights[a], s.spatial[a]
    for r = 1, s.roi[a] do s.weight_buf[wo + r - 1] = w[r] end
    for _, start in ipairs(s.starts[a]) do
      for r = 1, s.roi[a] do
        local p = start + r - 1
        if p >= 0 and p < n then s.sum_buf[so + p] = s.sum_buf[so + p] + w[r] end
      end
    end
    wo, so = wo + s.roi[a], so + n
  end
  s.windows = 1
  for a = 1, nd do s.windows = s.windows * #s.starts[a] end
  return s
end

-- The start (per axis) of window number i (0-based; last axis fastest).
local function window_start(s, i)
  local start = {}
  for a = s.nd, 1, -1 do
    local n = #s.starts[a]
    start[a] = s.starts[a][i % n + 1]
    i = math.floor(i / n)
  end
  return start
end

-- Copies the window at start of xs (C x spatial) into dst (C x roi),
-- padding what lies outside the volume.
local function fill_window(s, dst, xs, start)
  local src, inside = xs, dst
  local whole = true
  for a = 1, s.nd do
    local lo, hi = math.max(0, start[a]), math.min(s.spatial[a], start[a] + s.roi[a])
    if lo ~= start[a] or hi - lo ~= s.roi[a] then whole = false end
    src = src:narrow(a, lo, hi - lo)
    inside = inside:narrow(a, lo - start[a], hi - lo)
  end
  if not whole then dst:fill_(s.pad_value) end
  inside:copy_(src)
end

local function run(s, pos)
  local function fail(fmt, ...) error(pos .. NAME .. ': ' .. string.format(fmt, ...), 0) end
  local nd, B = s.nd, s.batch
  local start_buf = ffi.new('int64_t[3]')
  local shape = { B, s.channels, unpack(s.roi) }
  local buf = lumen.empty(shape, s.x:dtype())

  -- every subset of the mirrored axes: tensor dims to flip and the flip bits
  local subsets = {}
  for mask = 0, 2 ^ #s.mirror - 1 do
    local dims, bits = {}, 0
    for i, a in ipairs(s.mirror) do
      if math.floor(mask / 2 ^ (i - 1)) % 2 == 1 then
        dims[#dims + 1] = a + 2
        bits = bits + 2 ^ a
      end
    end
    subsets[#subsets + 1] = { dims = dims, bits = bits }
  end
  local scale = 1 / #subsets

  local out = s.out
  if out then out:zero_() end
  local total, done = s.samples * s.windows, 0
  local live_start = lumen.memory().live
  local budget -- garbage allowed before collecting, once the output exists

  local function expected(nb)
    local e = { tostring(nb), s.classes and tostring(s.classes) or 'K' }
    for a = 1, nd do e[#e + 1] = tostring(s.roi[a]) end
    return table.concat(e, ' x ')
  end

  for n = 0, s.samples - 1 do
    local xs = s.batched and s.x:select(0, n) or s.x
    for first = 0, s.windows - 1, B do
      local nb = math.min(B, s.windows - first)
      local inp = nb == B and buf or buf:narrow(0, 0, nb)
      local starts = {}
      for j = 0, nb - 1 do
        starts[j] = window_start(s, first + j)
        fill_window(s, buf:select(0, j), xs, starts[j])
      end
      for _, sub in ipairs(subsets) do
        local flipped = #sub.dims > 0 and lumen.flip(inp, sub.dims) or inp
        local pred = s.model(flipped)
        if not core.is_tensor(pred) then fail('model returned %s, expected a tensor', describe(pred)) end
        if pred.h == nil then fail('model returned a freed tensor') end
        local psz = pred:size()
        local ok = #psz == nd + 2 and psz[1] == nb
        for a = 1, nd do ok = ok and psz[a + 2] == s.roi[a] end
        if ok and s.classes and psz[2] ~= s.classes then
          fail('model returned %d classes (%s), but %s %d', psz[2], shape_str(pred), s.classes_from, s.classes)
        end
        if not ok then
          fail('model returned %s for a batch of %s windows, expected %s (windows x classes x roi)',
            shape_str(pred), shape_str(inp), expected(nb))
        end
        if not out then
          s.classes, s.classes_from = psz[2], 'its first output had'
          local oshape = { s.classes, unpack(s.spatial) }
          if s.batched then table.insert(oshape, 1, s.samples) end
          out = lumen.zeros(oshape, s.dtype)
        end
        local out_n = s.batched and out:select(0, n) or out
        local p = pred:to(s.dtype)
        for j = 0, nb - 1 do
          for a = 1, nd do start_buf[a - 1] = starts[j][a] end
          core.check(C.lm_window_accumulate(ctx, out_n.h, p:select(0, j).h, start_buf, s.weight_buf, sub.bits, scale))
        end
        if not rawequal(p, pred) then p:free() end
        if not rawequal(flipped, inp) then flipped:free() end
      end
      done = done + nb
      if s.progress then s.progress(done, total) end
      -- Tensors the model made for earlier batches are garbage the collector
      -- has not seen (their memory is outside its heap): collect when they
      -- pass about two batches' worth (inputs and outputs of every mirrored
      -- pass, at 8 bytes a value) or a byte per voxel, whichever is more, so
      -- that they never add up to another float per voxel.
      if not budget then
        local roi_voxels, voxels = 1, 1
        for a = 1, nd do roi_voxels, voxels = roi_voxels * s.roi[a], voxels * s.spatial[a] end
        budget = (s.out and 0 or out:numel() * (s.dtype == 'f64' and 8 or 4))
          + math.max(2 * #subsets * B * roi_voxels * (s.channels + s.classes) * 8, voxels)
      end
      if lumen.memory().live > live_start + budget then collectgarbage() end
    end
    if out then core.check(C.lm_window_normalize(ctx, (s.batched and out:select(0, n) or out).h, s.sum_buf)) end
  end
  buf:free()
  return out
end

-- sliding_window(model, x, opts) -> the whole-volume prediction (see the top).
function inference.sliding_window(model, x, opts)
  local pos = where(2)
  local s = parse(model, x, opts, pos)
  local was = lumen.is_grad_enabled()
  lumen.set_grad_enabled(false)
  local ok, res = pcall(run, s, pos)
  lumen.set_grad_enabled(was)
  if not ok then error(res, 0) end
  return res
end

return inference
