-- Losses against PyTorch 1.13: values and gradients of the fused ops
-- (cross_entropy, nll_loss, binary_cross_entropy_with_logits) across
-- options, 2-D and 3-D segmentation shapes, f32 and f64; the composite
-- losses against reference formulas written here in torch (MONAI's
-- definitions of Dice, generalized Dice, Tversky, focal and Dice + CE,
-- written independently of the Lua code); finite differences in f64; bad
-- input.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'
local F = nn.F

local TOL = { f32 = { rtol = 2e-5, atol = 2e-6 }, f64 = { rtol = 1e-10, atol = 1e-12 } }

-- Reference definitions, run by the oracle before each composite case.
-- They follow MONAI's documented losses (monai.losses), except that a
-- region sum over no dimensions (N x C input, batch=false) sums nothing.
local DEFS = [==[
def prep(x, y, act=None, onehot=False, bg=True, other=None):
    c = x.shape[1]
    p = x
    if act == 'sigmoid': p = torch.sigmoid(x)
    if act == 'softmax' and c > 1: p = torch.softmax(x, 1)
    if other is not None: p = other(p)
    t = y
    if onehot and c > 1: t = F.one_hot(y[:, 0].long(), c).movedim(-1, 1)
    t = t.to(x.dtype)
    if not bg and c > 1: p, t = p[:, 1:], t[:, 1:]
    return p, t

def rsum(v, batch):
    dims = ([0] if batch else []) + list(range(2, v.dim()))
    return v.sum(dims) if dims else v

def red_of(f, red):
    return f.mean() if red == 'mean' else f.sum() if red == 'sum' else f

def per_region_none(f, nd):
    return f.reshape(list(f.shape[:2]) + [1] * (nd - 2))

def dice(x, y, act=None, onehot=False, bg=True, other=None, squared=False, jaccard=False, batch=False,
         nr=1e-5, dr=1e-5, red='mean', w=None):
    p, t = prep(x, y, act, onehot, bg, other)
    inter = rsum(p * t, batch)
    den = rsum(t * t, batch) + rsum(p * p, batch) if squared else rsum(t, batch) + rsum(p, batch)
    if jaccard: den = 2 * (den - inter)
    f = 1 - (2 * inter + nr) / (den + dr)
    if w is not None: f = f * torch.tensor(w, dtype=f.dtype)
    return per_region_none(f, x.dim()) if red == 'none' else red_of(f, red)

def gdice(x, y, act=None, onehot=False, bg=True, batch=False, nr=1e-5, dr=1e-5, red='mean', w_type='square'):
    p, t = prep(x, y, act, onehot, bg)
    inter, g, q = rsum(p * t, batch), rsum(t, batch), rsum(p, batch)
    w = {'square': 1 / (g * g), 'simple': 1 / g, 'uniform': torch.ones_like(g)}[w_type]
    absent = torch.isinf(w)
    finite = torch.where(absent, torch.zeros_like(w), w)
    top = finite.max() if batch else finite.max(1, keepdim=True).values
    w = torch.where(absent, top.expand_as(w), finite)
    d = 0 if batch else 1
    f = 1 - (2 * (inter * w).sum(d, keepdim=True) + nr) / (((g + q) * w).sum(d, keepdim=True) + dr)
    return per_region_none(f, x.dim()) if red == 'none' else red_of(f, red)

def tversky(x, y, act=None, onehot=False, bg=True, batch=False, nr=1e-5, dr=1e-5, red='mean', alpha=0.5, beta=0.5):
    p, t = prep(x, y, act, onehot, bg)
    tp, fp, fn = rsum(p * t, batch), rsum(p * (1 - t), batch), rsum((1 - p) * t, batch)
    return red_of(1 - (tp + nr) / (tp + alpha * fp + beta * fn + dr), red)

def class_view(v, x):
    return torch.tensor(v, dtype=x.dtype).view([-1] + [1] * (x.dim() - 2))

def focal(x, y, onehot=False, bg=True, gamma=2.0, alpha=None, w=None, red='mean', softmax=False):
    c = x.shape[1]
    t = F.one_hot(y[:, 0].long(), c).movedim(-1, 1) if onehot and c > 1 else y
    t = t.to(x.dtype)
    if not bg and c > 1:
        x, t = x[:, 1:], t[:, 1:]
        if softmax: alpha = None
    if softmax:
        lp = torch.log_softmax(x, 1)
        l = -t * (1 - lp.exp()) ** gamma * lp
        if alpha is not None: l = l * class_view([1 - alpha] + [alpha] * (x.shape[1] - 1), x)
    else:
        p = torch.sigmoid(x)
        pt = p * t + (1 - p) * (1 - t)   # the probability of the true label (t is 0 or 1)
        l = -(1 - pt) ** gamma * torch.log(pt)
        if alpha is not None: l = l * (alpha * t + (1 - alpha) * (1 - t))
    if w is not None and x.shape[1] != 1:
        l = l * class_view(w if isinstance(w, list) else [w] * x.shape[1], x)
    if red == 'sum':
        dims = list(range(2, x.dim()))
        return (l.mean(dims) if dims else l).sum()
    return red_of(l, red)

def dice_ce(x, y, ld=1.0, lc=1.0, red='mean', cw=None, eps=0.0, **kw):
    d = dice(x, y, red=red, **kw)
    if x.shape[1] == 1: ce = F.binary_cross_entropy_with_logits(x, y.to(x.dtype), reduction=red)
    elif y.shape[1] == 1: ce = F.cross_entropy(x, y[:, 0].long(), weight=cw, reduction=red, label_smoothing=eps)
    else: ce = F.cross_entropy(x, y.to(x.dtype), weight=cw, reduction=red, label_smoothing=eps)
    return ld * d + lc * ce
]==]
-- torch warns about broadcast targets and kl_div's 'mean'; both are intended here
local QUIET = "__import__('warnings').simplefilter('ignore') or "
local PRELUDE = 'exec(' .. string.format('%q', DEFS):gsub('\\\n', '\\n') .. ', globals()) or '

-- y = f(leaves...) for detached copies of xs that require grad, backward
-- seeded with g; returns {y, grad of each x}.
local function value_and_grads(f, xs, g)
  local leaves = {}
  for i, x in ipairs(xs) do leaves[i] = x:detach():clone():requires_grad_() end
  local y = f(unpack(leaves))
  y:backward(g)
  local out = { y }
  for i, l in ipairs(leaves) do out[i + 1] = l.grad or lumen.zeros(l:size(), l:dtype()) end
  return out
end

local function seed_for(y_shape, dtype, red)
  if red == 'none' then return lumen.randn(y_shape, dtype) end
  return lumen.tensor(0.7, dtype)
end

local function pykw(o)
  local parts = {}
  for _, k in ipairs { 'weight', 'pos_weight', 'ignore_index', 'label_smoothing', 'reduction', 'beta', 'log_target' } do
    local v = o[k]
    if v ~= nil then
      if lumen.is_tensor(v) then parts[#parts + 1] = k .. '=' .. k
      elseif type(v) == 'string' then parts[#parts + 1] = string.format("%s='%s'", k, v)
      elseif type(v) == 'boolean' then parts[#parts + 1] = k .. '=' .. (v and 'True' or 'False')
      else parts[#parts + 1] = string.format('%s=%.17g', k, v) end
    end
  end
  return table.concat(parts, ', ')
end

local function describe_opts(o)
  local keys = {}
  for k in pairs(o) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = o[k]
    parts[#parts + 1] = k .. '=' .. (lumen.is_tensor(v) and table.concat(v:size(), 'x') or tostring(v))
  end
  return '{' .. table.concat(parts, ', ') .. '}'
end

local function shape_without(shape, d)
  local s = {}
  for i, v in ipairs(shape) do if i ~= d + 1 then s[#s + 1] = v end end
  return s
end

describe('nn losses', function()
  lumen.manual_seed(2024)
  local cases = {}
  -- fn returns the value and the gradients, in the order of the oracle's outputs
  local function case(name, expr, inputs, fn, tol)
    cases[#cases + 1] = { name = name, expr = expr, inputs = inputs, fn = fn, tol = tol }
  end

  -------------------------------------------------------------------------
  -- cross_entropy with class targets
  local function labels(shape, c, dtype)
    return lumen.randint(0, c, shape, dtype or 'i64')
  end
  local function with_ignored(t, value)
    return lumen.where(lumen.rand(t:size()):lt(0.3), value, t)
  end

  for _, dtype in ipairs { 'f32', 'f64' } do
    for _, shape in ipairs { { 6, 5 }, { 2, 3, 4, 5 }, { 2, 3, 3, 4, 2 } } do
      local c = shape[2]
      local x = lumen.randn(shape, dtype)
      local t = labels(shape_without(shape, 1), c)
      local t_ign = with_ignored(t, 255)
      local w = lumen.rand({ c }, dtype) + 0.5
      for _, o in ipairs { {}, { weight = w }, { ignore_index = 255 }, { label_smoothing = 0.2 },
        { weight = w, ignore_index = 255, label_smoothing = 0.1 } } do
        local tt = o.ignore_index and t_ign or t
        for _, red in ipairs { 'mean', 'sum', 'none' } do
          local opts = {}
          for k, v in pairs(o) do opts[k] = v end
          opts.reduction = red
          local g = seed_for(shape_without(shape, 1), dtype, red)
          case(string.format('cross_entropy %s %s %s', table.concat(shape, 'x'), dtype, describe_opts(opts)),
            string.format('grad_of(lambda x: F.cross_entropy(x, t, %s), [x], g)', pykw(opts)),
            { x = x, t = tt, g = g, weight = o.weight },
            function() return value_and_grads(function(a) return F.cross_entropy(a, tt, opts) end, { x }, g) end,
            TOL[dtype])
        end
      end
    end
  end

  do -- layouts, dtypes of the labels, stability, degenerate batches
    local x = lumen.randn(2, 4, 5, 3):permute(0, 3, 1, 2) -- channels-last memory
    local t = labels({ 2, 4, 5 }, 3)
    local g = lumen.randn(2, 4, 5)
    case('cross_entropy of a permuted (channels-last) view, none', "grad_of(lambda x: F.cross_entropy(x, t, reduction='none'), [x], g)",
      { x = x, t = t, g = g },
      function() return value_and_grads(function(a) return F.cross_entropy(a, t, { reduction = 'none' }) end, { x }, g) end, TOL.f32)
    local x2, t2 = lumen.randn(2, 3, 4, 5), labels({ 2, 4, 5 }, 3)
    for _, ld in ipairs { 'i32', 'u8' } do
      local tl = t2:to(ld)
      case('cross_entropy with ' .. ld .. ' labels', 'grad_of(lambda x: F.cross_entropy(x, t.long()), [x], g)',
        { x = x2, t = tl, g = lumen.tensor(1.0) },
        function() return value_and_grads(function(a) return F.cross_entropy(a, tl) end, { x2 }, lumen.tensor(1.0)) end, TOL.f32)
    end
    local big = lumen.randn(4, 3, 2, 2) * 60
    local tb = labels({ 4, 2, 2 }, 3)
    case('cross_entropy of logits near +-180 (stable), smoothing', 'grad_of(lambda x: F.cross_entropy(x, t, label_smoothing=0.3), [x], g)',
      { x = big, t = tb, g = lumen.tensor(1.0) },
      function() return value_and_grads(function(a) return F.cross_entropy(a, tb, { label_smoothing = 0.3 }) end, { big }, lumen.tensor(1.0)) end,
      { rtol = 1e-5, atol = 1e-4 })
    for _, shape in ipairs { { 3, 300 }, { 2, 300, 3 } } do -- more classes than one block of the kernels
      local xw = lumen.randn(shape) * 4
      local tw = labels(shape_without(shape, 1), 300)
      local ww = lumen.rand({ 300 }) + 0.5
      local opts = { weight = ww, label_smoothing = 0.05 }
      case('cross_entropy with 300 classes ' .. table.concat(shape, 'x'),
        'grad_of(lambda x: F.cross_entropy(x, t, weight=weight, label_smoothing=0.05), [x], g)',
        { x = xw, t = tw, g = lumen.tensor(1.0), weight = ww },
        function() return value_and_grads(function(a) return F.cross_entropy(a, tw, opts) end, { xw }, lumen.tensor(1.0)) end, TOL.f32)
    end
    local xi = lumen.tensor { { 0, -math.huge, 2 }, { -math.huge, 1, -math.huge }, { 3, 1, -math.huge } }
    local ti = lumen.tensor({ 0, 1, 1 }, 'i64')
    local gi = lumen.randn(3)
    case('cross_entropy with -inf logits off the target', "grad_of(lambda x: F.cross_entropy(x, t, reduction='none'), [x], g)",
      { x = xi, t = ti, g = gi },
      function() return value_and_grads(function(a) return F.cross_entropy(a, ti, { reduction = 'none' }) end, { xi }, gi) end, TOL.f32)
    local xn = lumen.tensor { { 0, 0 / 0, 2 }, { 1, 2, 3 } }
    local tn = lumen.tensor({ 0, 1 }, 'i64')
    case('cross_entropy propagates NaN logits', "F.cross_entropy(x, t, reduction='none')", { x = xn, t = tn },
      function() return { F.cross_entropy(xn, tn, { reduction = 'none' }) } end, TOL.f32)
    local xv, tv = lumen.randn(5, 'f64'), lumen.tensor(3, 'i64')
    case('cross_entropy of one unbatched sample (C, target 0-D)', 'grad_of(lambda x: F.cross_entropy(x, t, label_smoothing=0.1), [x], g)',
      { x = xv, t = tv, g = lumen.tensor(1.0, 'f64') },
      function() return value_and_grads(function(a) return F.cross_entropy(a, tv, { label_smoothing = 0.1 }) end, { xv }, lumen.tensor(1.0, 'f64')) end,
      TOL.f64)
    local xa, ta = lumen.randn(2, 3, 2), lumen.full({ 2, 2 }, -100, 'i64')
    case('cross_entropy mean with every target ignored is NaN', 'F.cross_entropy(x, t)', { x = xa, t = ta },
      function() return { F.cross_entropy(xa, ta) } end, TOL.f32)
    local x0, t0 = lumen.zeros(0, 3), lumen.zeros({ 0 }, 'i64')
    for _, red in ipairs { 'mean', 'sum', 'none' } do
      case('cross_entropy of an empty batch, ' .. red, string.format("F.cross_entropy(x, t, reduction='%s')", red), { x = x0, t = t0 },
        function() return { F.cross_entropy(x0, t0, { reduction = red }) } end, TOL.f32)
    end
  end

  -------------------------------------------------------------------------
  -- cross_entropy with probability targets (gradients for both)
  for _, dtype in ipairs { 'f32', 'f64' } do
    for _, shape in ipairs { { 6, 5 }, { 2, 3, 4, 5 }, { 2, 4, 2, 3, 2 } } do
      local c = shape[2]
      local x = lumen.randn(shape, dtype)
      local e = lumen.randn(shape, dtype):exp()
      local p = e / e:sum(1, true)
      local w = lumen.rand({ c }, dtype) + 0.5
      for _, o in ipairs { {}, { weight = w }, { label_smoothing = 0.15 }, { weight = w, label_smoothing = 0.3 } } do
        for _, red in ipairs { 'mean', 'sum', 'none' } do
          local opts = {}
          for k, v in pairs(o) do opts[k] = v end
          opts.reduction = red
          local g = seed_for(shape_without(shape, 1), dtype, red)
          case(string.format('cross_entropy, probability targets %s %s %s', table.concat(shape, 'x'), dtype, describe_opts(opts)),
            string.format('grad_of(lambda x, t: F.cross_entropy(x, t, %s), [x, t], g)', pykw(opts)),
            { x = x, t = p, g = g, weight = o.weight },
            function() return value_and_grads(function(a, b) return F.cross_entropy(a, b, opts) end, { x, p }, g) end,
            TOL[dtype])
        end
      end
    end
  end

  -------------------------------------------------------------------------
  -- nll_loss
  for _, dtype in ipairs { 'f32', 'f64' } do
    for _, shape in ipairs { { 7, 4 }, { 2, 3, 4, 5 }, { 2, 3, 2, 3, 4 } } do
      local c = shape[2]
      local x = lumen.randn(shape, dtype)
      local t = labels(shape_without(shape, 1), c)
      local t_ign = with_ignored(t, -100)
      local w = lumen.rand({ c }, dtype) + 0.5
      for _, o in ipairs { {}, { weight = w }, { ignore_index = -100 }, { weight = w, ignore_index = 1 } } do
        local tt = o.ignore_index == -100 and t_ign or t
        for _, red in ipairs { 'mean', 'sum', 'none' } do
          local opts = {}
          for k, v in pairs(o) do opts[k] = v end
          opts.reduction = red
          local g = seed_for(shape_without(shape, 1), dtype, red)
          case(string.format('nll_loss %s %s %s', table.concat(shape, 'x'), dtype, describe_opts(opts)),
            string.format('grad_of(lambda x: F.nll_loss(x, t, %s), [x], g)', pykw(opts)),
            { x = x, t = tt, g = g, weight = o.weight },
            function() return value_and_grads(function(a) return F.nll_loss(a, tt, opts) end, { x }, g) end,
            TOL[dtype])
        end
      end
    end
  end

  -------------------------------------------------------------------------
  -- binary_cross_entropy_with_logits (gradients for input and target)
  for _, dtype in ipairs { 'f32', 'f64' } do
    for _, shape in ipairs { { 4, 3 }, { 2, 3, 4, 5 }, { 2, 3, 2, 3, 2 } } do
      local x = lumen.randn(shape, dtype) * 3
      local t = lumen.rand(shape, dtype)
      local per_class = { shape[2] }
      for _ = 3, #shape do per_class[#per_class + 1] = 1 end
      local w_full = lumen.rand(shape, dtype) + 0.5
      local w_class = lumen.rand(per_class, dtype) + 0.5
      local pw = lumen.rand(per_class, dtype) * 3 + 0.2
      for _, o in ipairs { {}, { weight = w_full }, { pos_weight = pw }, { weight = w_class, pos_weight = pw } } do
        for _, red in ipairs { 'mean', 'sum', 'none' } do
          local opts = {}
          for k, v in pairs(o) do opts[k] = v end
          opts.reduction = red
          local g = seed_for(shape, dtype, red)
          case(string.format('binary_cross_entropy_with_logits %s %s %s', table.concat(shape, 'x'), dtype, describe_opts(opts)),
            string.format('grad_of(lambda x, t: F.binary_cross_entropy_with_logits(x, t, %s), [x, t], g)', pykw(opts)),
            { x = x, t = t, g = g, weight = o.weight, pos_weight = o.pos_weight },
            function() return value_and_grads(function(a, b) return F.binary_cross_entropy_with_logits(a, b, opts) end, { x, t }, g) end,
            TOL[dtype])
        end
      end
    end
  end
  do
    local x = lumen.tensor { -120, -40, -5, 0, 5, 40, 120, 1e-3 }
    local t = lumen.tensor { 0, 1, 1, 0, 1, 0, 1, 1 }
    local pw = lumen.tensor { 3 }
    local g = lumen.randn(8)
    case('binary_cross_entropy_with_logits of logits up to +-120 (stable)',
      "grad_of(lambda x: F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight, reduction='none'), [x], g)",
      { x = x, t = t, g = g, pos_weight = pw },
      function()
        return value_and_grads(function(a) return F.binary_cross_entropy_with_logits(a, t, { pos_weight = pw, reduction = 'none' }) end, { x }, g)
      end, TOL.f32)
  end

  do -- losses near 0 keep their relative accuracy: log1p, not log(1 + e)
    -- (torch 1.13's own f32 formula loses these digits, so the reference
    -- is softplus in f64: the loss is softplus(-x) for t = 1, softplus(x) for 0)
    local x = lumen.tensor { 8, 12, 17, 21, 30, -9, -16, -25, 0.3 }
    local t = lumen.tensor { 1, 1, 1, 1, 1, 0, 0, 0, 1 }
    local g = lumen.ones(9)
    case('binary_cross_entropy_with_logits of confident right answers (losses down to 1e-13)',
      '(lambda d: [torch.where(t > 0.5, F.softplus(-d), F.softplus(d)).float(), '
      .. 'torch.where(t > 0.5, -torch.sigmoid(-d), torch.sigmoid(d)).float()])(x.double())', { x = x, t = t },
      function()
        return value_and_grads(function(a) return F.binary_cross_entropy_with_logits(a, t, { reduction = 'none' }) end, { x }, g)
      end, { rtol = 2e-6, atol = 0 })
  end

  -------------------------------------------------------------------------
  -- elementwise losses (composites)
  for _, dtype in ipairs { 'f32', 'f64' } do
    local x, t = lumen.randn({ 3, 4, 5 }, dtype), lumen.randn({ 3, 4, 5 }, dtype)
    local tb = lumen.randn({ 4, 5 }, dtype) -- broadcast target
    for _, red in ipairs { 'mean', 'sum', 'none' } do
      local g = seed_for({ 3, 4, 5 }, dtype, red)
      for _, spec in ipairs {
        { 'mse_loss', { reduction = red }, t }, { 'l1_loss', { reduction = red }, t },
        { 'smooth_l1_loss', { reduction = red }, t }, { 'smooth_l1_loss', { reduction = red, beta = 0.4 }, t },
        { 'smooth_l1_loss', { reduction = red, beta = 0 }, t }, { 'mse_loss', { reduction = red }, tb },
      } do
        local name, opts, tt = spec[1], spec[2], spec[3]
        case(string.format('%s %s %s target %s', name, dtype, describe_opts(opts), table.concat(tt:size(), 'x')),
          string.format('grad_of(lambda x: F.%s(x, t, %s), [x], g)', name, pykw(opts)),
          { x = x, t = tt, g = g },
          function() return value_and_grads(function(a) return F[name](a, tt, opts) end, { x }, g) end, TOL[dtype])
      end
    end
    local lp = lumen.randn({ 3, 4, 5 }, dtype)
    local e = lumen.randn({ 3, 4, 5 }, dtype):exp()
    local q = lumen.where(lumen.rand({ 3, 4, 5 }):lt(0.2), 0, e / e:sum(1, true)) -- some exact zeros
    local lq = lumen.randn({ 3, 4, 5 }, dtype)
    for _, red in ipairs { 'batchmean', 'mean', 'sum', 'none' } do
      local g = seed_for({ 3, 4, 5 }, dtype, red)
      for _, lt in ipairs { false, true } do
        local opts = { reduction = red, log_target = lt }
        local tt = lt and lq or q
        case(string.format('kl_div %s %s', dtype, describe_opts(opts)),
          string.format('grad_of(lambda x: F.kl_div(x, t, %s), [x], g)', pykw(opts)),
          { x = lp, t = tt, g = g },
          function() return value_and_grads(function(a) return F.kl_div(a, tt, opts) end, { lp }, g) end, TOL[dtype])
      end
    end
  end

  -------------------------------------------------------------------------
  -- one_hot
  do
    local l2 = labels({ 2, 4, 5 }, 3)
    case('one_hot of N x H x W labels puts classes in dim 1', 'F.one_hot(y, 3).movedim(-1, 1).float()', { y = l2 },
      function() return { F.one_hot(l2, 3) } end, TOL.f32)
    local l1 = labels({ 6 }, 4)
    case('one_hot of N labels is N x C', 'F.one_hot(y, 4).double()', { y = l1 },
      function() return { F.one_hot(l1, 4, { dtype = 'f64' }) } end, TOL.f64)
    local l3 = labels({ 2, 3, 2, 4 }, 5):to('u8')
    case('one_hot of u8 volume labels, dim=-1', 'F.one_hot(y.long(), 5).float()', { y = l3 },
      function() return { F.one_hot(l3, 5, { dim = -1 }) } end, TOL.f32)
  end

  -------------------------------------------------------------------------
  -- segmentation losses (composites): reference formulas in DEFS
  local seg_shapes = { { 2, 3, 4, 5 }, { 2, 3, 3, 4, 2 } }
  -- A composite case: value and gradient for x, backward seeded with 0.7
  -- for a reduced loss and with ones for red == 'none'.
  local function seg_case(name, pycall, fn, x, y, dtype, red)
    local inputs = { x = x, y = y }
    local lua_fn
    if red == 'none' then
      lua_fn = function()
        local leaf = x:detach():clone():requires_grad_()
        local out = fn(leaf, y)
        out:backward(lumen.ones(out:size(), out:dtype()))
        return { out, leaf.grad }
      end
      case(name, PRELUDE .. 'grad_of(lambda x: ' .. pycall .. ', [x])', inputs, lua_fn, TOL[dtype])
    else
      local g = lumen.tensor(0.7, dtype)
      inputs.g = g
      lua_fn = function() return value_and_grads(function(a) return fn(a, y) end, { x }, g) end
      case(name, PRELUDE .. 'grad_of(lambda x: ' .. pycall .. ', [x], g)', inputs, lua_fn, TOL[dtype])
    end
  end

  for _, dtype in ipairs { 'f32', 'f64' } do
    for _, shape in ipairs(seg_shapes) do
      local tag = table.concat(shape, 'x') .. ' ' .. dtype
      local c = shape[2]
      local x = lumen.randn(shape, dtype)
      local lshape = {}
      for i, v in ipairs(shape) do lshape[i] = v end
      lshape[2] = 1
      local y = labels(lshape, c)            -- N x 1 x ... labels
      local y1h = F.one_hot(y:squeeze(1), c) -- N x C x ... one-hot (f32)
      -- Dice
      seg_case('dice_loss softmax, to_onehot_y ' .. tag, "dice(x, y, act='softmax', onehot=True)",
        function(a, b) return F.dice_loss(a, b, { softmax = true, to_onehot_y = true }) end, x, y, dtype)
      seg_case('dice_loss sigmoid, one-hot target, batch ' .. tag, "dice(x, y, act='sigmoid', batch=True)",
        function(a, b) return F.dice_loss(a, b, { sigmoid = true, batch = true }) end, x, y1h, dtype)
      seg_case('dice_loss softmax, no background, squared_pred, sum ' .. tag,
        "dice(x, y, act='softmax', onehot=True, bg=False, squared=True, red='sum')",
        function(a, b) return F.dice_loss(a, b, { softmax = true, to_onehot_y = true, include_background = false,
          squared_pred = true, reduction = 'sum' }) end, x, y, dtype)
      seg_case('dice_loss jaccard, smooth_nr=0, smooth_dr=1e-3 ' .. tag,
        "dice(x, y, act='softmax', onehot=True, jaccard=True, nr=0.0, dr=1e-3)",
        function(a, b) return F.dice_loss(a, b, { softmax = true, to_onehot_y = true, jaccard = true, smooth_nr = 0,
          smooth_dr = 1e-3 }) end, x, y, dtype)
      seg_case('dice_loss other_act=tanh, class weights, none ' .. tag,
        "dice(x, y, other=torch.tanh, onehot=True, w=[0.2, 1.0, 2.0], red='none')",
        function(a, b) return F.dice_loss(a, b, { other_act = lumen.tanh, to_onehot_y = true, weight = { 0.2, 1, 2 },
          reduction = 'none' }) end, x, y, dtype, 'none')
      -- generalized Dice: class 2 absent from the labels (infinite weight)
      local y01 = labels(lshape, 2)
      seg_case('generalized_dice_loss softmax, a class absent ' .. tag, "gdice(x, y, act='softmax', onehot=True)",
        function(a, b) return F.generalized_dice_loss(a, b, { softmax = true, to_onehot_y = true }) end, x, y01, dtype)
      seg_case('generalized_dice_loss batch, a class absent ' .. tag, "gdice(x, y, act='softmax', onehot=True, batch=True)",
        function(a, b) return F.generalized_dice_loss(a, b, { softmax = true, to_onehot_y = true, batch = true }) end, x, y01, dtype)
      seg_case('generalized_dice_loss simple weights, no background, none ' .. tag,
        "gdice(x, y, act='sigmoid', onehot=True, bg=False, w_type='simple', red='none')",
        function(a, b) return F.generalized_dice_loss(a, b, { sigmoid = true, to_onehot_y = true, include_background = false,
          w_type = 'simple', reduction = 'none' }) end, x, y, dtype, 'none')
      seg_case('generalized_dice_loss uniform weights, sum ' .. tag, "gdice(x, y, act='softmax', onehot=True, w_type='uniform', red='sum')",
        function(a, b) return F.generalized_dice_loss(a, b, { softmax = true, to_onehot_y = true, w_type = 'uniform',
          reduction = 'sum' }) end, x, y, dtype)
      -- Tversky
      seg_case('tversky_loss alpha=0.3 beta=0.7 ' .. tag, "tversky(x, y, act='softmax', onehot=True, alpha=0.3, beta=0.7)",
        function(a, b) return F.tversky_loss(a, b, { softmax = true, to_onehot_y = true, alpha = 0.3, beta = 0.7 }) end, x, y, dtype)
      seg_case('tversky_loss batch, no background, none ' .. tag,
        "tversky(x, y, act='sigmoid', onehot=True, bg=False, batch=True, red='none')",
        function(a, b) return F.tversky_loss(a, b, { sigmoid = true, to_onehot_y = true, include_background = false,
          batch = true, reduction = 'none' }) end, x, y, dtype, 'none')
      -- focal
      seg_case('focal_loss sigmoid, gamma 2 ' .. tag, 'focal(x, y)',
        function(a, b) return F.focal_loss(a, b) end, x, y1h, dtype)
      seg_case('focal_loss sigmoid, alpha 0.25, class weights, sum ' .. tag,
        "focal(x, y, onehot=True, alpha=0.25, w=[1.0, 2.0, 0.5], red='sum')",
        function(a, b) return F.focal_loss(a, b, { to_onehot_y = true, alpha = 0.25, weight = { 1, 2, 0.5 },
          reduction = 'sum' }) end, x, y, dtype)
      seg_case('focal_loss sigmoid, gamma 0.5, no background, none ' .. tag,
        "focal(x, y, onehot=True, bg=False, gamma=0.5, red='none')",
        function(a, b) return F.focal_loss(a, b, { to_onehot_y = true, include_background = false, gamma = 0.5,
          reduction = 'none' }) end, x, y, dtype, 'none')
      seg_case('focal_loss softmax, alpha 0.25 ' .. tag, 'focal(x, y, onehot=True, softmax=True, alpha=0.25)',
        function(a, b) return F.focal_loss(a, b, { to_onehot_y = true, use_softmax = true, alpha = 0.25 }) end, x, y, dtype)
      seg_case('focal_loss softmax, no background (alpha dropped), weight 2 ' .. tag,
        'focal(x, y, onehot=True, softmax=True, bg=False, alpha=0.25, w=2.0)',
        function(a, b) return F.focal_loss(a, b, { to_onehot_y = true, use_softmax = true, include_background = false,
          alpha = 0.25, weight = 2 }) end, x, y, dtype)
      -- Dice + CE
      seg_case('dice_ce_loss labels ' .. tag, "dice_ce(x, y, act='softmax', onehot=True)",
        function(a, b) return F.dice_ce_loss(a, b, { softmax = true, to_onehot_y = true }) end, x, y, dtype)
      local cw = lumen.tensor({ 0.5, 1, 2 }, dtype)
      seg_case('dice_ce_loss one-hot target, weights, lambdas, smoothing, sum ' .. tag,
        "dice_ce(x, y, act='softmax', ld=0.7, lc=1.5, red='sum', cw=cw, eps=0.1, batch=True)",
        function(a, b) return F.dice_ce_loss(a, b, { softmax = true, lambda_dice = 0.7, lambda_ce = 1.5, reduction = 'sum',
          weight = cw, label_smoothing = 0.1, batch = true }) end, x, y1h:to(dtype), dtype)
      cases[#cases].inputs.cw = cw
    end
    -- one channel: sigmoid Dice / focal / Dice + BCE
    local xb = lumen.randn({ 3, 1, 4, 4 }, dtype)
    local yb = labels({ 3, 1, 4, 4 }, 2):to(dtype)
    local tag = '3x1x4x4 ' .. dtype
    seg_case('dice_loss one channel (softmax, to_onehot_y ignored) ' .. tag, "dice(x, y, act='sigmoid')",
      function(a, b) return F.dice_loss(a, b, { sigmoid = true, to_onehot_y = true, include_background = false }) end, xb, yb, dtype)
    seg_case('dice_ce_loss one channel is Dice + BCE ' .. tag, "dice_ce(x, y, act='sigmoid')",
      function(a, b) return F.dice_ce_loss(a, b, { sigmoid = true }) end, xb, yb, dtype)
    seg_case('focal_loss gamma 0 is BCE ' .. tag, 'F.binary_cross_entropy_with_logits(x, y)',
      function(a, b) return F.focal_loss(a, b, { gamma = 0 }) end, xb, yb, dtype)
    -- N x C without spatial dims: per (n, c) with batch=false
    local xc, yc = lumen.randn({ 4, 3 }, dtype), F.one_hot(labels({ 4 }, 3), 3, { dtype = dtype })
    seg_case('dice_loss of N x C (no spatial dims) ' .. dtype, "dice(x, y, act='softmax', red='none')",
      function(a, b) return F.dice_loss(a, b, { softmax = true, reduction = 'none' }) end, xc, yc, dtype, 'none')
  end

  -------------------------------------------------------------------------
  local batch = {}
  for i, c in ipairs(cases) do
    batch[i] = { QUIET .. c.expr }
    for k, v in pairs(c.inputs) do batch[i][k] = v end
  end
  local ref = oracle.run(batch)

  for i, c in ipairs(cases) do
    it(c.name, function()
      assert(not ref[i].error, ref[i].error)
      local got = c.fn()
      check.assert_close(got[1], ref[i][1], c.tol, 'value')
      for k = 2, #got do check.assert_close(got[k], ref[i][k], c.tol, 'gradient of input ' .. (k - 1)) end
    end)
  end

  -------------------------------------------------------------------------
  describe('finite differences (f64)', function()
    local function d64(...) return lumen.randn({ ... }, 'f64') end
    it('cross_entropy, class targets with weights, ignore_index and smoothing', function()
      local t = with_ignored(labels({ 2, 2, 3 }, 3), 7)
      local w = lumen.tensor({ 0.3, 1.2, 2.0 }, 'f64')
      for _, red in ipairs { 'mean', 'sum', 'none' } do
        assert(gradcheck(function(x) return F.cross_entropy(x, t, { weight = w, ignore_index = 7, label_smoothing = 0.2,
          reduction = red }) end, { d64(2, 3, 2, 3) }))
      end
    end)
    it('cross_entropy, probability targets (input and target)', function()
      local e = d64(3, 4, 2):exp()
      local w = lumen.tensor({ 0.3, 1.2, 2.0, 0.7 }, 'f64')
      assert(gradcheck(function(x, p) return F.cross_entropy(x, p, { weight = w, label_smoothing = 0.25 }) end,
        { d64(3, 4, 2), e / e:sum(1, true) }))
      assert(gradcheck(function(x, p) return F.cross_entropy(x, p, { reduction = 'none' }) end,
        { d64(3, 4, 2), e / e:sum(1, true) }))
    end)
    it('nll_loss with weights and ignore_index', function()
      local t = with_ignored(labels({ 4, 3 }, 5), -100)
      local w = lumen.rand({ 5 }, 'f64') + 0.5
      assert(gradcheck(function(x) return F.nll_loss(x, t, { weight = w }) end, { d64(4, 5, 3) }))
    end)
    it('binary_cross_entropy_with_logits with weight and pos_weight (input and target)', function()
      local w, pw = lumen.rand({ 3, 1 }, 'f64') + 0.5, lumen.rand({ 2 }, 'f64') * 3
      for _, red in ipairs { 'mean', 'none' } do
        assert(gradcheck(function(x, t) return F.binary_cross_entropy_with_logits(x, t,
          { weight = w, pos_weight = pw, reduction = red }) end, { d64(2, 3, 2) * 3, lumen.rand({ 2, 3, 2 }, 'f64') }))
      end
    end)
    local function composite(name, f, inputs)
      it(name, function()
        assert(gradcheck(f, inputs, { only = { 1 } }))
      end)
    end
    local y = labels({ 2, 1, 3, 2 }, 3)
    composite('dice_loss softmax', function(x) return F.dice_loss(x, y, { softmax = true, to_onehot_y = true }) end, { d64(2, 3, 3, 2) })
    composite('generalized_dice_loss', function(x) return F.generalized_dice_loss(x, y, { softmax = true, to_onehot_y = true }) end,
      { d64(2, 3, 3, 2) })
    composite('tversky_loss', function(x) return F.tversky_loss(x, y, { sigmoid = true, to_onehot_y = true, alpha = 0.2, beta = 0.8 }) end,
      { d64(2, 3, 3, 2) })
    composite('focal_loss sigmoid', function(x) return F.focal_loss(x, y, { to_onehot_y = true, alpha = 0.3 }) end, { d64(2, 3, 3, 2) })
    composite('focal_loss softmax', function(x) return F.focal_loss(x, y, { to_onehot_y = true, use_softmax = true }) end,
      { d64(2, 3, 3, 2) })
    composite('dice_ce_loss', function(x) return F.dice_ce_loss(x, y, { softmax = true, to_onehot_y = true }) end, { d64(2, 3, 3, 2) })
    composite('smooth_l1_loss', function(x) return F.smooth_l1_loss(x, lumen.zeros({ 3, 4 }, 'f64'), { beta = 0.5 }) end, { d64(3, 4) })
    local q = lumen.rand({ 3, 4 }, 'f64')
    composite('kl_div', function(x) return F.kl_div(x, q, { reduction = 'batchmean' }) end, { d64(3, 4) })
  end)

  it('cross_entropy gives the same bits on one thread and on two', function()
    local x = lumen.randn(4, 3, 48, 48)
    local t = with_ignored(labels({ 4, 48, 48 }, 3), -100)
    local w = lumen.tensor { 0.2, 1, 3 }
    local function run(n)
      lumen.set_num_threads(n)
      local r = value_and_grads(function(a) return F.cross_entropy(a, t, { weight = w, label_smoothing = 0.1 }) end, { x },
        lumen.tensor(1.0))
      local none = F.cross_entropy(x, t, { reduction = 'none' })
      r[3] = none
      return r
    end
    local threads = lumen.get_num_threads()
    local one, two = run(1), run(2)
    lumen.set_num_threads(threads)
    for k = 1, 3 do check.assert_close(one[k], two[k], { rtol = 0, atol = 0 }) end
  end)

  -------------------------------------------------------------------------
  describe('modules', function()
    local x = lumen.randn(2, 3, 4, 4)
    local y = labels({ 2, 1, 4, 4 }, 3)
    it('CrossEntropyLoss keeps its class weights as a buffer and matches F.cross_entropy', function()
      local w = lumen.tensor { 0.5, 1, 2 }
      local m = nn.CrossEntropyLoss { weight = w, ignore_index = 1, label_smoothing = 0.1 }
      local t = y:squeeze(1)
      check.assert_close(m(x, t), F.cross_entropy(x, t, { weight = w, ignore_index = 1, label_smoothing = 0.1 }))
      assert.is_truthy(m:state_dict().weight)
      assert.is_truthy(tostring(m):find('ignore_index=1', 1, true))
    end)
    it('each loss module matches its function', function()
      local y1h = F.one_hot(y:squeeze(1), 3)
      local pairs_ = {
        { nn.DiceLoss { softmax = true, to_onehot_y = true }, F.dice_loss, { softmax = true, to_onehot_y = true }, y },
        { nn.GeneralizedDiceLoss { softmax = true }, F.generalized_dice_loss, { softmax = true }, y1h },
        { nn.TverskyLoss { sigmoid = true, alpha = 0.7 }, F.tversky_loss, { sigmoid = true, alpha = 0.7 }, y1h },
        { nn.FocalLoss { gamma = 1 }, F.focal_loss, { gamma = 1 }, y1h },
        { nn.DiceCELoss { softmax = true, to_onehot_y = true }, F.dice_ce_loss, { softmax = true, to_onehot_y = true }, y },
        { nn.BCEWithLogitsLoss { pos_weight = lumen.full({ 3, 1, 1 }, 2) }, F.binary_cross_entropy_with_logits,
          { pos_weight = lumen.full({ 3, 1, 1 }, 2) }, y1h },
        { nn.MSELoss(), F.mse_loss, nil, y1h },
        { nn.L1Loss { reduction = 'sum' }, F.l1_loss, { reduction = 'sum' }, y1h },
        { nn.SmoothL1Loss { beta = 0.5 }, F.smooth_l1_loss, { beta = 0.5 }, y1h },
        { nn.KLDivLoss { reduction = 'batchmean' }, F.kl_div, { reduction = 'batchmean' }, y1h },
        { nn.NLLLoss(), F.nll_loss, nil, y:squeeze(1) },
      }
      for _, p in ipairs(pairs_) do
        check.assert_close(p[1](x, p[4]), p[2](x, p[4], p[3]))
      end
    end)
    it('checks options when made', function()
      assert.has_error(function() nn.DiceLoss { smooth = 1 } end,
        "lumen.dice_loss: unknown option 'smooth' (expected include_background, to_onehot_y, sigmoid, softmax, other_act, "
        .. 'reduction, smooth_nr, smooth_dr, batch, squared_pred, jaccard, weight)')
      assert.has_error(function() nn.CrossEntropyLoss(3) end,
        'lumen.cross_entropy: options must be a table {weight, ignore_index, label_smoothing, reduction}, got number')
    end)
  end)

  -------------------------------------------------------------------------
  describe('bad input', function()
    local x = lumen.randn(2, 3, 4, 4)
    local t = labels({ 2, 4, 4 }, 3)
    it('cross_entropy: shapes, dtypes, classes and options', function()
      assert.has_error(function() F.cross_entropy(x, labels({ 2, 5, 5 }, 3)) end,
        "lumen.cross_entropy: target has shape 2x5x5 for logits 2x3x4x4, expected 2x4x4 (the logits' shape without the class dimension 1)")
      assert.has_error(function() F.cross_entropy(x, labels({ 2, 1, 4, 4 }, 3)) end,
        "lumen.cross_entropy: target has shape 2x1x4x4 for logits 2x3x4x4, expected 2x4x4 (the logits' shape without the class dimension 1)")
      assert.has_error(function() F.cross_entropy(x, lumen.zeros(2, 4, 4)) end,
        'lumen.cross_entropy: target has dtype f32 and shape 2x4x4 for logits 2x3x4x4, expected class indices (i64, i32 or u8) '
        .. "of shape 2x4x4, or probabilities of the logits' shape")
      assert.has_error(function() F.cross_entropy(x, t:gt(0)) end,
        'lumen.cross_entropy: target has dtype bool and shape 2x4x4 for logits 2x3x4x4, expected class indices (i64, i32 or u8) '
        .. "of shape 2x4x4, or probabilities of the logits' shape")
      assert.has_error(function() F.cross_entropy(x, lumen.zeros({ 2, 3, 4, 4 }, 'f64')) end,
        "lumen.cross_entropy: probability target has dtype f64, expected the logits' dtype f32")
      assert.has_error(function() F.cross_entropy(t:to('f32'):unsqueeze(1):to('i64'), t) end,
        'lumen.cross_entropy: logits has dtype i64, expected f32 or f64')
      assert.has_error(function() F.cross_entropy(x, t, { weight = lumen.ones(4) }) end,
        'lumen.cross_entropy: weight has shape 4, expected 3 (one per class)')
      assert.has_error(function() F.cross_entropy(x, t, { weight = { 1, 2 } }) end,
        'lumen.cross_entropy: weight has shape 2, expected 3 (one per class)')
      assert.has_error(function() F.cross_entropy(lumen.tensor(1.0), lumen.tensor(0, 'i64')) end,
        'lumen.cross_entropy: logits are 0-D, expected C, N x C or N x C x d1 x ... (classes in dimension 1)')
      assert.has_error(function() F.cross_entropy(x, t, { reduction = 'avg' }) end,
        "lumen.cross_entropy: reduction must be one of 'none', 'mean', 'sum', got 'avg'")
      assert.has_error(function() F.cross_entropy(x, t, { ignore = 3 }) end,
        "lumen.cross_entropy: unknown option 'ignore' (expected weight, ignore_index, label_smoothing, reduction)")
      assert.has_error(function() F.cross_entropy(x, t, { label_smoothing = 1.5 }) end,
        'lumen.cross_entropy: label_smoothing is 1.5, expected a value in [0, 1]')
      assert.has_error(function() F.cross_entropy(x, t, { ignore_index = 0.5 }) end,
        'lumen.cross_entropy: ignore_index must be an integer, got 0.5')
      assert.has_error(function() F.cross_entropy(x, lumen.zeros(2, 3, 4, 4), { ignore_index = 0 }) end,
        'lumen.cross_entropy: ignore_index (0) is not supported with probability targets')
      assert.has_error(function() F.cross_entropy(x, 3) end, 'lumen.cross_entropy: target must be a tensor, got number')
    end)
    it('cross_entropy and nll_loss: a target out of range names the value', function()
      local bad = t:clone()
      bad[{ 1, 2, 3 }] = 7
      assert.has_error(function() F.cross_entropy(x, bad) end,
        'lumen.cross_entropy: target value 7 (at flat position 27 of target 2x4x4) is out of range for 3 classes '
        .. '(expected 0 to 2, or ignore_index -100)')
      bad[{ 1, 2, 3 }] = -1
      assert.has_error(function() F.nll_loss(x, bad, { ignore_index = 255 }) end,
        'lumen.nll_loss: target value -1 (at flat position 27 of target 2x4x4) is out of range for 3 classes '
        .. '(expected 0 to 2, or ignore_index 255)')
      local r = oracle.run { { 'F.cross_entropy(x, t)', x = x, t = (function() local b = t:clone(); b[{ 1, 2, 3 }] = 7; return b end)() } }
      assert.is_truthy(r[1].error) -- PyTorch refuses it too
    end)
    it('nll_loss refuses probability targets', function()
      assert.has_error(function() F.nll_loss(x, lumen.zeros(2, 3, 4, 4)) end,
        'lumen.nll_loss: target has dtype f32, expected class indices (i64, i32 or u8)')
      assert.has_error(function() F.nll_loss(x, t, { label_smoothing = 0.1 }) end,
        "lumen.nll_loss: unknown option 'label_smoothing' (expected weight, ignore_index, reduction)")
    end)
    it('binary_cross_entropy_with_logits: shapes and broadcasting', function()
      assert.has_error(function() F.binary_cross_entropy_with_logits(x, lumen.zeros(2, 3, 4)) end,
        "lumen.binary_cross_entropy_with_logits: target has shape 2x3x4, expected the input's shape 2x3x4x4")
      assert.has_error(function() F.binary_cross_entropy_with_logits(x, lumen.zeros(2, 3, 4, 4), { pos_weight = lumen.ones(3) }) end,
        "lumen.binary_cross_entropy_with_logits: pos_weight of shape 3 does not broadcast to the input's shape 2x3x4x4 "
        .. '(shapes align from the last dimension: one value per class of dimension 1 is 3x1x1)')
      assert.has_error(function() F.binary_cross_entropy_with_logits(x, lumen.zeros(2, 3, 4, 4), { pos_weight = lumen.ones(2) }) end,
        "lumen.binary_cross_entropy_with_logits: pos_weight of shape 2 does not broadcast to the input's shape 2x3x4x4")
      assert.has_error(function() F.binary_cross_entropy_with_logits(x, lumen.zeros(2, 3, 4, 4), { weight = lumen.ones(5, 2, 3, 4, 4) }) end,
        "lumen.binary_cross_entropy_with_logits: weight of shape 5x2x3x4x4 does not broadcast to the input's shape 2x3x4x4")
      assert.has_error(function() F.binary_cross_entropy_with_logits(x, lumen.zeros(2, 3, 4, 4), { reduction = 'batchmean' }) end,
        "lumen.binary_cross_entropy_with_logits: reduction must be one of 'none', 'mean', 'sum', got 'batchmean'")
    end)
    it('every loss refuses wrong argument values with a lumen. error', function()
      local freed = lumen.randn(2, 3, 4)
      freed:free()
      local good_x, good_t = lumen.randn(2, 3, 4), lumen.randint(0, 3, { 2, 1, 4 })
      local wrong = { 'nil', 1, 'str', {}, true, freed, lumen.zeros({ 2, 3, 4 }, 'i64'), lumen.randn(5), lumen.tensor(1.0) }
      local names = { 'cross_entropy', 'nll_loss', 'binary_cross_entropy_with_logits', 'mse_loss', 'l1_loss',
        'smooth_l1_loss', 'kl_div', 'dice_loss', 'generalized_dice_loss', 'tversky_loss', 'focal_loss', 'dice_ce_loss',
        'one_hot' }
      local bad_opts = { 1, 'x', { reduction = 3 }, { nonsense = true }, { weight = 'w' }, { smooth_nr = 'a' } }
      for _, name in ipairs(names) do
        local f = F[name]
        local function expect_lumen_error(...)
          local ok, err = pcall(f, ...)
          if not ok and not tostring(err):find('lumen.', 1, true) then
            error(string.format('%s: error without the lumen. prefix: %s', name, tostring(err)), 2)
          end
        end
        for _, v in ipairs(wrong) do
          if v == 'nil' then v = nil end
          expect_lumen_error(v, good_t)
          expect_lumen_error(good_x, v)
          expect_lumen_error(v, v)
        end
        for _, o in ipairs(bad_opts) do
          local ok, err = pcall(f, good_x, good_t, o)
          assert(not ok, name .. ' accepted bad options')
          assert(tostring(err):find('lumen.' .. name .. ':', 1, true), name .. ': ' .. tostring(err))
        end
      end
    end)
    it('segmentation losses: shapes, labels and options', function()
      local y = labels({ 2, 1, 4, 4 }, 3)
      assert.has_error(function() F.dice_loss(x, y) end,
        "lumen.dice_loss: target has shape 2x1x4x4, expected the input's shape 2x3x4x4 (after one-hot and dropping the background)")
      assert.has_error(function() F.dice_loss(x, y + 3, { to_onehot_y = true }) end,
        'lumen.dice_loss: to_onehot_y: label 5 is out of range for 3 classes (expected 0 to 2)')
      assert.has_error(function() F.dice_loss(x, labels({ 2, 2, 4, 4 }, 3), { to_onehot_y = true }) end,
        'lumen.dice_loss: to_onehot_y: target has shape 2x2x4x4, expected labels N x 1 x ... for input 2x3x4x4')
      assert.has_error(function() F.dice_loss(x, y, { sigmoid = true, softmax = true }) end,
        'lumen.dice_loss: sigmoid, softmax and other_act exclude each other (more than one given)')
      assert.has_error(function() F.dice_loss(x, y, { softmax = 1 }) end, 'lumen.dice_loss: softmax must be a boolean, got number')
      assert.has_error(function() F.dice_loss(lumen.randn(4), y) end,
        'lumen.dice_loss: input has shape 4, expected N x C x d1 x ... (classes in dimension 1)')
      assert.has_error(function() F.dice_loss(x, y, { to_onehot_y = true, weight = { 1, 2 } }) end,
        'lumen.dice_loss: weight has 2 entries, expected 3 (one per class, without the background when include_background=false)')
      assert.has_error(function() F.generalized_dice_loss(x, y, { w_type = 'cube' }) end,
        "lumen.generalized_dice_loss: w_type must be 'square', 'simple' or 'uniform', got cube")
      assert.has_error(function() F.focal_loss(x, y, { to_onehot_y = true, weight = { 1, -1, 1 } }) end,
        'lumen.focal_loss: weight has a negative entry, expected values >= 0')
      assert.has_error(function() F.dice_ce_loss(x, y:squeeze(1)) end,
        'lumen.dice_ce_loss: target has shape 2x4x4, expected as many dimensions as the input 2x3x4x4 (N x 1 x ... labels or N x C x ...)')
      assert.has_error(function() F.dice_ce_loss(x, y, { reduction = 'none' }) end,
        "lumen.dice_ce_loss: reduction must be one of 'mean', 'sum', got 'none'")
      assert.has_error(function() F.dice_ce_loss(x, y, { lambda_ce = -1 }) end, 'lumen.dice_ce_loss: lambda_ce is -1, expected a value >= 0')
      assert.has_error(function() F.kl_div(x, x, { reduction = 'batch' }) end,
        "lumen.kl_div: reduction must be one of 'none', 'batchmean', 'mean', 'sum', got 'batch'")
      assert.has_error(function() F.one_hot(t, 2) end, 'lumen.one_hot: label 2 is out of range for 2 classes (expected 0 to 1)')
      assert.has_error(function() F.mse_loss(x, nil) end, 'lumen.mse_loss: target must be a tensor, got nil')
      assert.has_error(function() F.mse_loss(t, t) end, 'lumen.mse_loss: input has dtype i64, expected f32 or f64')
    end)
  end)
end)
