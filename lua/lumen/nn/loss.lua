-- loss.lua: loss functions (nn.F.*) and their module forms (nn.*Loss).
--
-- Fused in C, with their own backward (src/ops/loss.c), PyTorch's semantics:
--   F.cross_entropy(logits, target, {weight=, ignore_index=-100, label_smoothing=0, reduction='mean'})
--     logits C, N x C or N x C x d1 x ...; target class indices (i64, i32 or
--     u8) of shape N x d1 x ..., or probabilities of the logits' shape.
--   F.nll_loss(logp, target, {weight=, ignore_index=-100, reduction='mean'})
--   F.binary_cross_entropy_with_logits(x, t, {weight=, pos_weight=, reduction='mean'})
--     weight and pos_weight broadcast to x's shape as in torch (so a
--     per-class pos_weight for N x C x H x W is C x 1 x 1).
-- Composed from tensor ops (autograd of the primitives gives the gradients):
--   F.mse_loss, F.l1_loss (x, t, {reduction=}), F.smooth_l1_loss (+ beta=1),
--   F.kl_div(logp, t, {reduction='mean'|'batchmean'|'sum'|'none', log_target=false})
--   F.one_hot(labels, num_classes, {dim=1, dtype='f32'}): labels N x d1 x ...
--     -> N x C x d1 x ... (classes in dimension 1, as MONAI)
-- Segmentation losses, as MONAI defines them (input N x C x d1 x ..., logits
-- or probabilities; target of the same shape, or N x 1 x d1 x ... labels
-- with to_onehot_y):
--   F.dice_loss(x, t, {include_background=true, to_onehot_y=false, sigmoid=false,
--     softmax=false, other_act=nil, squared_pred=false, jaccard=false,
--     reduction='mean', smooth_nr=1e-5, smooth_dr=1e-5, batch=false, weight=nil})
--   F.generalized_dice_loss(x, t, {... w_type='square'|'simple'|'uniform'})
--   F.tversky_loss(x, t, {... alpha=0.5, beta=0.5})
--   F.focal_loss(x, t, {include_background=true, to_onehot_y=false, gamma=2,
--     alpha=nil, weight=nil, reduction='mean', use_softmax=false})
--   F.dice_ce_loss(x, t, {dice options, weight= (cross-entropy class weights),
--     label_smoothing=0, lambda_dice=1, lambda_ce=1, reduction='mean'|'sum'})
-- MONAI's own quirks are kept: focal 'sum' averages the spatial dims
-- first, its softmax variant applies softmax after dropping the background
-- channel, and with one channel softmax / to_onehot_y /
-- include_background=false are ignored. Where MONAI would sum every
-- dimension of an N x C input (no spatial dims), here each (n, c) stands alone.
local core = require 'lumen.core'
local C = core.C

return function(nn, lumen)
  local F = nn.F
  local is_tensor = core.is_tensor

  ---------------------------------------------------------------------------
  -- option checks

  -- Every option each function takes (module forms check theirs when made).
  local dice_common = { 'include_background', 'to_onehot_y', 'sigmoid', 'softmax', 'other_act', 'reduction',
    'smooth_nr', 'smooth_dr', 'batch' }
  local function list(base, ...)
    local l = {}
    for _, k in ipairs(base) do l[#l + 1] = k end
    for _, k in ipairs { ... } do l[#l + 1] = k end
    return l
  end
  local allowed = {
    cross_entropy = { 'weight', 'ignore_index', 'label_smoothing', 'reduction' },
    nll_loss = { 'weight', 'ignore_index', 'reduction' },
    binary_cross_entropy_with_logits = { 'weight', 'pos_weight', 'reduction' },
    mse_loss = { 'reduction' },
    l1_loss = { 'reduction' },
    smooth_l1_loss = { 'reduction', 'beta' },
    kl_div = { 'reduction', 'log_target' },
    one_hot = { 'dim', 'dtype' },
    dice_loss = list(dice_common, 'squared_pred', 'jaccard', 'weight'),
    generalized_dice_loss = list(dice_common, 'w_type'),
    tversky_loss = list(dice_common, 'alpha', 'beta'),
    focal_loss = { 'include_background', 'to_onehot_y', 'gamma', 'alpha', 'weight', 'reduction', 'use_softmax' },
    dice_ce_loss = list(dice_common, 'squared_pred', 'jaccard', 'weight', 'ce_weight', 'label_smoothing',
      'lambda_dice', 'lambda_ce'),
  }

  -- Errors point at the first caller outside this file, lumen.core (the
  -- option checkers call user_level on failure) and the module class
  -- (constructors): the user's line. Returns the level for error() in the
  -- function calling user_level.
  local lumen_files = { [debug.getinfo(1, 'S').source] = true, [debug.getinfo(core.options, 'S').source] = true }
  if nn.Module then lumen_files[debug.getinfo(nn.Module.extend, 'S').source] = true end
  local function user_level()
    local k = 3
    while true do
      local info = debug.getinfo(k, 'S')
      if not info or not lumen_files[info.source] then return k - 1 end
      k = k + 1
    end
  end
  local function fail(fname, fmt, ...)
    error(string.format('lumen.%s: ' .. fmt, fname, ...), user_level())
  end

  -- fn(...), its errors reported under fname (losses built on other losses).
  local function as(fname, fn, ...)
    local ok, res = pcall(fn, ...)
    if not ok then error((tostring(res):gsub('^.-lumen%.[%w_]+: ', 'lumen.' .. fname .. ': ', 1)), user_level()) end
    return res
  end

  local reduction_codes = { none = C.LM_REDUCTION_NONE, mean = C.LM_REDUCTION_MEAN, sum = C.LM_REDUCTION_SUM }
  -- names: the reductions this function takes, in the order to list them
  local function reduction_opt(fname, o, names)
    names = names or { 'none', 'mean', 'sum' }
    local r = o.reduction
    if r == nil then return 'mean' end
    for _, n in ipairs(names) do
      if r == n then return r end
    end
    fail(fname, "reduction must be one of '%s', got %s", table.concat(names, "', '"),
      type(r) == 'string' and ("'" .. r .. "'") or tostring(r))
  end

  local function tensor_arg(fname, t, what)
    if not is_tensor(t) then fail(fname, '%s must be a tensor, got %s', what, type(t)) end
    if t.h == nil then fail(fname, '%s was freed', what) end
    return t
  end

  local function float_arg(fname, t, what)
    tensor_arg(fname, t, what)
    local d = t:dtype()
    if d ~= 'f32' and d ~= 'f64' then fail(fname, '%s has dtype %s, expected f32 or f64', what, d) end
    return t
  end

  -- A tensor option, or a list of numbers (or one number repeated n times
  -- when n is given) made into a 1-D tensor of dtype.
  local function weights_opt(fname, o, key, dtype, n)
    local v = o[key]
    if v == nil then return nil end
    if is_tensor(v) then return v:to(dtype) end
    if type(v) == 'number' and n then
      local l = {}
      for i = 1, n do l[i] = v end
      v = l
    end
    if type(v) ~= 'table' or #v == 0 then
      fail(fname, '%s must be a tensor or a list of numbers, got %s', key, type(v))
    end
    for i = 1, #v do
      if type(v[i]) ~= 'number' then fail(fname, '%s[%d] is %s, expected a number', key, i, type(v[i])) end
    end
    return lumen.tensor(v, dtype)
  end

  ---------------------------------------------------------------------------
  -- fused ops

  local function handle_or_nil(t) return t and t.h or nil end

  function F.cross_entropy(input, target, opts)
    local fname = 'cross_entropy'
    local o = core.options(opts, fname, allowed[fname], user_level)
    tensor_arg(fname, input, 'input')
    tensor_arg(fname, target, 'target')
    local w = o.weight
    if w ~= nil and not is_tensor(w) then w = weights_opt(fname, o, 'weight', input:dtype()):to(input:device()) end
    local ignore = o.ignore_index == nil and -100 or core.int_arg(o.ignore_index, fname, 'ignore_index')
    local eps = core.number(o.label_smoothing, fname, 'label_smoothing', 0, user_level)
    local red = reduction_codes[reduction_opt(fname, o)]
    return core.call(C.lm_cross_entropy, input.h, target.h, handle_or_nil(w), ignore, eps, red, core.out1)
  end

  function F.nll_loss(input, target, opts)
    local fname = 'nll_loss'
    local o = core.options(opts, fname, allowed[fname], user_level)
    tensor_arg(fname, input, 'input')
    tensor_arg(fname, target, 'target')
    local w = o.weight
    if w ~= nil and not is_tensor(w) then w = weights_opt(fname, o, 'weight', input:dtype()):to(input:device()) end
    local ignore = o.ignore_index == nil and -100 or core.int_arg(o.ignore_index, fname, 'ignore_index')
    local red = reduction_codes[reduction_opt(fname, o)]
    return core.call(C.lm_nll_loss, input.h, target.h, handle_or_nil(w), ignore, red, core.out1)
  end

  function F.binary_cross_entropy_with_logits(input, target, opts)
    local fname = 'binary_cross_entropy_with_logits'
    local o = core.options(opts, fname, allowed[fname], user_level)
    tensor_arg(fname, input, 'input')
    tensor_arg(fname, target, 'target')
    local w, pw = o.weight, o.pos_weight
    if w ~= nil and not is_tensor(w) then w = weights_opt(fname, o, 'weight', input:dtype()):to(input:device()) end
    if pw ~= nil and not is_tensor(pw) then pw = weights_opt(fname, o, 'pos_weight', input:dtype()):to(input:device()) end
    if w then tensor_arg(fname, w, 'weight') end
    if pw then tensor_arg(fname, pw, 'pos_weight') end
    local red = reduction_codes[reduction_opt(fname, o)]
    return core.call(C.lm_bce_with_logits, input.h, target.h, handle_or_nil(w), handle_or_nil(pw), red, core.out1)
  end

  ---------------------------------------------------------------------------
  -- elementwise losses

  local function reduce(l, r)
    if r == 'mean' then return l:mean() end
    if r == 'sum' then return l:sum() end
    return l
  end

  local function pair(fname, input, target)
    float_arg(fname, input, 'input')
    tensor_arg(fname, target, 'target')
    if target:dtype() ~= input:dtype() then target = target:to(input:dtype()) end
    return input, target
  end

  function F.mse_loss(input, target, opts)
    local o = core.options(opts, 'mse_loss', allowed.mse_loss, user_level)
    local r = reduction_opt('mse_loss', o)
    input, target = pair('mse_loss', input, target)
    local d = input - target
    return reduce(d * d, r)
  end

  function F.l1_loss(input, target, opts)
    local o = core.options(opts, 'l1_loss', allowed.l1_loss, user_level)
    local r = reduction_opt('l1_loss', o)
    input, target = pair('l1_loss', input, target)
    return reduce((input - target):abs(), r)
  end

  -- 0.5 d^2 / beta where |d| < beta, |d| - beta / 2 elsewhere; with
  -- m = min(|d|, beta) that is (|d| - m) + 0.5 m^2 / beta.
  function F.smooth_l1_loss(input, target, opts)
    local o = core.options(opts, 'smooth_l1_loss', allowed.smooth_l1_loss, user_level)
    local r = reduction_opt('smooth_l1_loss', o)
    local beta = core.number(o.beta, 'smooth_l1_loss', 'beta', 1, user_level)
    if beta < 0 then fail('smooth_l1_loss', 'beta is %g, expected a value >= 0', beta) end
    input, target = pair('smooth_l1_loss', input, target)
    local a = (input - target):abs()
    if beta == 0 then return reduce(a, r) end
    local m = a:clamp(nil, beta)
    return reduce((a - m) + m * m * (0.5 / beta), r)
  end

  -- target * (log(target) - input), 0 where target is 0; with log_target
  -- exp(target) * (target - input).
  function F.kl_div(input, target, opts)
    local fname = 'kl_div'
    local o = core.options(opts, fname, allowed[fname], user_level)
    local r = reduction_opt(fname, o, { 'none', 'batchmean', 'mean', 'sum' })
    local log_target = core.flag(o.log_target, fname, 'log_target', false, user_level)
    input, target = pair(fname, input, target)
    local l
    if log_target then
      l = target:exp() * (target - input)
    else
      local safe = lumen.where(target:gt(0), target, 1) -- log(1) = 0 where target is 0
      l = target * (safe:log() - input)
    end
    if r == 'batchmean' then
      if input:dim() == 0 then return l:sum() end
      return l:sum() / input:size(0)
    end
    return reduce(l, r)
  end

  ---------------------------------------------------------------------------
  -- one-hot labels

  -- labels (integers, or floats holding integers) -> classes along dim.
  function F.one_hot(labels, num_classes, opts)
    local fname = 'one_hot'
    local o = core.options(opts, fname, allowed[fname], user_level)
    tensor_arg(fname, labels, 'labels')
    local nd = labels:dim()
    local dim = o.dim == nil and math.min(1, nd) or core.int_arg(o.dim, fname, 'dim')
    if dim < 0 then dim = dim + nd + 1 end
    if dim < 0 or dim > nd then fail(fname, 'dim %d out of range for %d-D labels (0 to %d)', o.dim, nd, nd) end
    local dtype = o.dtype or 'f32'
    core.dtype_code(dtype, user_level())
    if labels:dtype() == 'bool' then labels = labels:to('u8') end
    local l = labels:to('i64')
    if num_classes == nil then
      num_classes = labels:numel() > 0 and l:amax():item() + 1 or 0
    end
    num_classes = core.int_arg(num_classes, fname, 'num_classes')
    if num_classes < 1 then fail(fname, 'num_classes is %d, expected at least 1', num_classes) end
    if labels:numel() > 0 then
      local lo, hi = l:amin():item(), l:amax():item()
      local bad = lo < 0 and lo or (hi >= num_classes and hi or nil)
      if bad then
        fail(fname, 'label %d is out of range for %d classes (expected 0 to %d)', bad, num_classes, num_classes - 1)
      end
    end
    local shape = {}
    for i = 1, nd + 1 do shape[i] = 1 end
    shape[dim + 1] = num_classes
    local classes = lumen.arange(num_classes, 'i64'):view(shape):to(l:device())
    return l:unsqueeze(dim):eq(classes):to(dtype)
  end

  ---------------------------------------------------------------------------
  -- helpers of the segmentation losses

  -- softmax / log_softmax over dim 1; the fused ones when the activation
  -- family provides them.
  local function softmax1(x)
    if F.softmax then return F.softmax(x, 1) end
    local m = lumen.no_grad(function() return x:amax(1, true) end)
    local e = (x - m):exp()
    return e / e:sum(1, true)
  end
  local function log_softmax1(x)
    if F.log_softmax then return F.log_softmax(x, 1) end
    local m = lumen.no_grad(function() return x:amax(1, true) end)
    local s = x - m
    return s - s:exp():sum(1, true):log()
  end

  local function shape_str(t) return table.concat(t:size(), 'x') end

  local function seg_input(fname, input)
    float_arg(fname, input, 'input')
    if input:dim() < 2 then
      fail(fname, 'input has shape %s, expected N x C x d1 x ... (classes in dimension 1)', shape_str(input))
    end
  end

  -- Labels N x 1 x d... (or N x d...) as one-hot N x C x d... in dtype.
  local function onehot_target(fname, target, input, nc)
    local t = target
    if t:dim() == input:dim() then
      if t:size(1) ~= 1 then
        fail(fname, 'to_onehot_y: target has shape %s, expected labels N x 1 x ... for input %s',
          shape_str(t), shape_str(input))
      end
      t = t:squeeze(1)
    elseif t:dim() ~= input:dim() - 1 then
      fail(fname, 'to_onehot_y: target has shape %s, expected labels N x 1 x ... for input %s',
        shape_str(t), shape_str(input))
    end
    local ok, res = pcall(F.one_hot, t, nc, { dtype = input:dtype() })
    if not ok then error((tostring(res):gsub('^.-lumen%.one_hot: ', 'lumen.' .. fname .. ': to_onehot_y: ')), user_level()) end
    return res
  end

  local function same_shape(fname, t, x)
    if shape_str(t) ~= shape_str(x) or t:dim() ~= x:dim() then
      fail(fname, 'target has shape %s, expected the input\'s shape %s (after one-hot and dropping the background)',
        shape_str(t), shape_str(x))
    end
  end

  -- MONAI's preamble of the Dice family: activation, one-hot target,
  -- background removal. Returns probabilities and target, both in x's dtype.
  local function dice_prepare(fname, input, target, o)
    seg_input(fname, input)
    tensor_arg(fname, target, 'target')
    local sig = core.flag(o.sigmoid, fname, 'sigmoid', false, user_level)
    local soft = core.flag(o.softmax, fname, 'softmax', false, user_level)
    local act = o.other_act
    if act ~= nil and type(act) ~= 'function' then fail(fname, 'other_act must be a function, got %s', type(act)) end
    if (sig and 1 or 0) + (soft and 1 or 0) + (act and 1 or 0) > 1 then
      fail(fname, 'sigmoid, softmax and other_act exclude each other (more than one given)')
    end
    local onehot = core.flag(o.to_onehot_y, fname, 'to_onehot_y', false, user_level)
    local background = core.flag(o.include_background, fname, 'include_background', true, user_level)
    local x = input
    if sig then x = x:sigmoid() end
    local nc = x:size(1)
    if soft and nc > 1 then x = softmax1(x) end
    if act then x = act(x) end
    local t = target
    if onehot and nc > 1 then t = onehot_target(fname, target, input, nc) end
    if t:dtype() ~= x:dtype() then t = t:to(x:dtype()) end
    if not background and nc > 1 then
      x = x:slice(1, 1, nc)
      t = t:slice(1, 1, t:dim() > 1 and t:size(1) or 1)
    end
    same_shape(fname, t, x)
    return x, t
  end

  -- Sum over the spatial dims (and the batch with batch=true); nothing to
  -- sum when there are no spatial dims and no batch.
  local function region_sum(t, batch)
    local dims = {}
    if batch then dims[1] = 0 end
    for d = 2, t:dim() - 1 do dims[#dims + 1] = d end
    if #dims == 0 then return t end
    return t:sum(dims)
  end

  local function smooth_opts(fname, o)
    return core.number(o.smooth_nr, fname, 'smooth_nr', 1e-5, user_level),
      core.number(o.smooth_dr, fname, 'smooth_dr', 1e-5, user_level)
  end

  -- 'none' keeps N x C (or C, batch) and adds ones for the spatial dims.
  local function reduce_region(f, r, ndim)
    if r ~= 'none' then return reduce(f, r) end
    local shape = f:size()
    local s = { shape[1], shape[2] }
    for _ = 3, ndim do s[#s + 1] = 1 end
    return f:reshape(s)
  end

  ---------------------------------------------------------------------------
  -- Dice, generalized Dice, Tversky

  function F.dice_loss(input, target, opts)
    local fname = 'dice_loss'
    local o = core.options(opts, fname, allowed[fname], user_level)
    local r = reduction_opt(fname, o)
    local nr, dr = smooth_opts(fname, o)
    local batch = core.flag(o.batch, fname, 'batch', false, user_level)
    local squared = core.flag(o.squared_pred, fname, 'squared_pred', false, user_level)
    local jaccard = core.flag(o.jaccard, fname, 'jaccard', false, user_level)
    local x, t = dice_prepare(fname, input, target, o)
    local inter = region_sum(t * x, batch)
    local ground, pred
    if squared then
      ground, pred = region_sum(t * t, batch), region_sum(x * x, batch)
    else
      ground, pred = region_sum(t, batch), region_sum(x, batch)
    end
    local den = ground + pred
    if jaccard then den = (den - inter) * 2 end
    local f = 1 - (inter * 2 + nr) / (den + dr)
    local nc = x:size(1)
    if o.weight ~= nil and nc ~= 1 then
      local w = weights_opt(fname, o, 'weight', x:dtype(), nc)
      if w:numel() ~= nc then
        fail(fname, 'weight has %d entries, expected %d (one per class, without the background when include_background=false)',
          w:numel(), nc)
      end
      if w:amin():item() < 0 then fail(fname, 'weight has a negative entry, expected values >= 0') end
      f = f * w
    end
    return reduce_region(f, r, x:dim())
  end

  -- Sudre et al.'s weights 1 / (sum of the target)^2 per class; a class
  -- absent from the target (an infinite weight) takes the largest finite
  -- weight of its sample (of the batch with batch=true).
  function F.generalized_dice_loss(input, target, opts)
    local fname = 'generalized_dice_loss'
    local o = core.options(opts, fname, allowed[fname], user_level)
    local r = reduction_opt(fname, o)
    local nr, dr = smooth_opts(fname, o)
    local batch = core.flag(o.batch, fname, 'batch', false, user_level)
    local w_type = o.w_type or 'square'
    if w_type ~= 'square' and w_type ~= 'simple' and w_type ~= 'uniform' then
      fail(fname, "w_type must be 'square', 'simple' or 'uniform', got %s", tostring(w_type))
    end
    local x, t = dice_prepare(fname, input, target, o)
    local inter = region_sum(t * x, batch)
    local ground, pred = region_sum(t, batch), region_sum(x, batch)
    local den = ground + pred
    local w = lumen.no_grad(function()
      local g = ground:detach()
      local v
      if w_type == 'square' then v = (g * g):reciprocal()
      elseif w_type == 'simple' then v = g:reciprocal()
      else v = g * 0 + 1 end
      local inf = v:eq(math.huge)
      local finite = lumen.where(inf, 0, v)
      local top = batch and finite:amax() or finite:amax(1, true)
      return finite + inf:to(v:dtype()) * top
    end)
    local d = batch and 0 or 1
    local f = 1 - ((inter * w):sum(d, true) * 2 + nr) / ((den * w):sum(d, true) + dr)
    return reduce_region(f, r, x:dim())
  end

  function F.tversky_loss(input, target, opts)
    local fname = 'tversky_loss'
    local o = core.options(opts, fname, allowed[fname], user_level)
    local r = reduction_opt(fname, o)
    local nr, dr = smooth_opts(fname, o)
    local batch = core.flag(o.batch, fname, 'batch', false, user_level)
    local alpha = core.number(o.alpha, fname, 'alpha', 0.5, user_level)
    local beta = core.number(o.beta, fname, 'beta', 0.5, user_level)
    local x, t = dice_prepare(fname, input, target, o)
    local tp = region_sum(x * t, batch)
    local fp = region_sum(x * (1 - t), batch) * alpha
    local fn = region_sum((1 - x) * t, batch) * beta
    local score = 1 - (tp + nr) / (tp + fp + fn + dr)
    return reduce(score, r)
  end

  ---------------------------------------------------------------------------
  -- focal loss

  -- A C-vector as 1 x C x 1 ... for broadcasting against x.
  local function per_class(v, x)
    local s = { x:size(1) }
    for _ = 3, x:dim() do s[#s + 1] = 1 end
    return v:reshape(s):to(x:device())
  end

  -- sigmoid: bce * (1 - p_t)^gamma with log(1 - p_t) = logsigmoid(-x (2t - 1))
  -- = -bce(x (2t - 1), 0); softmax: -(1 - p)^gamma * log p * t per class.
  function F.focal_loss(input, target, opts)
    local fname = 'focal_loss'
    local o = core.options(opts, fname, allowed[fname], user_level)
    local r = reduction_opt(fname, o)
    local gamma = core.number(o.gamma, fname, 'gamma', 2, user_level)
    local alpha = core.number(o.alpha, fname, 'alpha', nil, user_level)
    local use_softmax = core.flag(o.use_softmax, fname, 'use_softmax', false, user_level)
    local onehot = core.flag(o.to_onehot_y, fname, 'to_onehot_y', false, user_level)
    local background = core.flag(o.include_background, fname, 'include_background', true, user_level)
    seg_input(fname, input)
    tensor_arg(fname, target, 'target')
    local nc = input:size(1)
    local x, t = input, target
    if onehot and nc > 1 then t = onehot_target(fname, target, input, nc) end
    if t:dtype() ~= x:dtype() then t = t:to(x:dtype()) end
    if not background and nc > 1 then
      x = x:slice(1, 1, nc)
      t = t:slice(1, 1, t:dim() > 1 and t:size(1) or 1)
      if use_softmax then alpha = nil end -- MONAI drops alpha here
    end
    same_shape(fname, t, x)
    local loss
    if use_softmax then
      local lp = log_softmax1(x)
      loss = -((1 - lp:exp()) ^ gamma) * lp * t
      if alpha then
        local fac = { 1 - alpha }
        for i = 2, x:size(1) do fac[i] = alpha end
        loss = loss * per_class(lumen.tensor(fac, x:dtype()), x)
      end
    else
      local bce = F.binary_cross_entropy_with_logits(x, t, { reduction = 'none' })
      local z = x * (t * 2 - 1)
      local log_inv = -F.binary_cross_entropy_with_logits(z, lumen.zeros(z:size(), z:dtype()):to(z:device()),
        { reduction = 'none' })
      loss = (log_inv * gamma):exp() * bce
      if alpha then loss = (t * alpha + (1 - t) * (1 - alpha)) * loss end
    end
    local k = x:size(1)
    if o.weight ~= nil and k ~= 1 then
      local w = weights_opt(fname, o, 'weight', x:dtype(), k)
      if w:numel() ~= k then
        fail(fname, 'weight has %d entries, expected %d (one per class, without the background when include_background=false)',
          w:numel(), k)
      end
      if w:amin():item() < 0 then fail(fname, 'weight has a negative entry, expected values >= 0') end
      loss = loss * per_class(w, x)
    end
    if r == 'sum' then
      local dims = {}
      for d = 2, x:dim() - 1 do dims[#dims + 1] = d end
      if #dims > 0 then loss = loss:mean(dims) end
      return loss:sum()
    end
    return reduce(loss, r)
  end

  ---------------------------------------------------------------------------
  -- Dice + cross-entropy

  local dice_keys = { 'include_background', 'to_onehot_y', 'sigmoid', 'softmax', 'other_act', 'squared_pred',
    'jaccard', 'reduction', 'smooth_nr', 'smooth_dr', 'batch' }

  -- lambda_dice * Dice + lambda_ce * CE; CE takes labels when the target
  -- has one channel, probabilities (a one-hot target) otherwise, and is
  -- binary cross-entropy on logits when the input has one channel.
  function F.dice_ce_loss(input, target, opts)
    local fname = 'dice_ce_loss'
    local o = core.options(opts, fname, allowed[fname], user_level)
    local r = reduction_opt(fname, o, { 'mean', 'sum' })
    local ld = core.number(o.lambda_dice, fname, 'lambda_dice', 1, user_level)
    local lc = core.number(o.lambda_ce, fname, 'lambda_ce', 1, user_level)
    if ld < 0 then fail(fname, 'lambda_dice is %g, expected a value >= 0', ld) end
    if lc < 0 then fail(fname, 'lambda_ce is %g, expected a value >= 0', lc) end
    seg_input(fname, input)
    tensor_arg(fname, target, 'target')
    if input:dim() ~= target:dim() then
      fail(fname, 'target has shape %s, expected as many dimensions as the input %s (N x 1 x ... labels or N x C x ...)',
        shape_str(target), shape_str(input))
    end
    local nc, ntc = input:size(1), target:size(1)
    if ntc ~= 1 and ntc ~= nc then
      fail(fname, 'target has %d channels, expected 1 (labels) or %d (one per class)', ntc, nc)
    end
    local dopts = {}
    for _, k in ipairs(dice_keys) do dopts[k] = o[k] end
    local dice = as(fname, F.dice_loss, input, target, dopts)
    local ce
    if nc == 1 then
      ce = as(fname, F.binary_cross_entropy_with_logits, input, target:to(input:dtype()), { reduction = r })
    else
      local w = o.weight
      if w == nil then w = o.ce_weight end
      if w ~= nil and not is_tensor(w) then w = weights_opt(fname, { weight = w }, 'weight', input:dtype()) end
      local t = ntc == 1 and target:squeeze(1):to('i64') or target:to(input:dtype())
      ce = as(fname, F.cross_entropy, input, t, { weight = w, reduction = r, label_smoothing = o.label_smoothing })
    end
    return dice * ld + ce * lc
  end

  ---------------------------------------------------------------------------
  -- module forms: nn.CrossEntropyLoss{...}(input, target)

  if not nn.Module then return end

  local function loss_module(class, fname, buffers)
    local M = nn.Module:extend(class)
    function M:__init(opts)
      local o = core.options(opts, fname, allowed[fname], user_level)
      self.opts = {}
      for k, v in pairs(o) do
        if buffers and buffers[k] and is_tensor(v) then
          self:buffer(k, v) -- torch keeps class weights in the state dict
        else
          self.opts[k] = v
        end
      end
    end
    function M:forward(input, target)
      local o = self.opts
      if buffers then
        o = {}
        for k, v in pairs(self.opts) do o[k] = v end
        for k in pairs(buffers) do
          if self[k] ~= nil and is_tensor(self[k]) then o[k] = self[k] end
        end
      end
      return F[fname](input, target, o)
    end
    function M:extra_repr()
      local keys = {}
      for k, v in pairs(self.opts) do
        if type(v) ~= 'function' and type(v) ~= 'table' and not is_tensor(v) then keys[#keys + 1] = k end
      end
      table.sort(keys)
      local parts = {}
      for _, k in ipairs(keys) do parts[#parts + 1] = k .. '=' .. tostring(self.opts[k]) end
      return table.concat(parts, ', ')
    end
    nn[class] = M
  end

  local weight_buffers = { weight = true }
  loss_module('CrossEntropyLoss', 'cross_entropy', weight_buffers)
  loss_module('NLLLoss', 'nll_loss', weight_buffers)
  loss_module('BCEWithLogitsLoss', 'binary_cross_entropy_with_logits', { weight = true, pos_weight = true })
  loss_module('MSELoss', 'mse_loss')
  loss_module('L1Loss', 'l1_loss')
  loss_module('SmoothL1Loss', 'smooth_l1_loss')
  loss_module('KLDivLoss', 'kl_div')
  loss_module('DiceLoss', 'dice_loss')
  loss_module('GeneralizedDiceLoss', 'generalized_dice_loss')
  loss_module('TverskyLoss', 'tversky_loss')
  loss_module('FocalLoss', 'focal_loss')
  loss_module('DiceCELoss', 'dice_ce_loss')
end
