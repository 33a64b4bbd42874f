-- Optimizers, gradient clipping and learning-rate schedules against
-- torch.optim (ten steps on the same parameters and gradients), plus the
-- state_dict round trip and the error messages.
local lumen = require 'lumen'
local optim = require 'lumen.optim'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local ffi = require 'ffi'
local C = lumen.core.C

local sched = optim.lr_scheduler
local STEPS = 10

-- Parameters and a fixed sequence of gradients per dtype. Parameter 2 has
-- no gradient at step 3 (0-based), so per-parameter step counts differ.
lumen.manual_seed(20240611)
local data = {}
for _, dt in ipairs { 'f32', 'f64' } do
  data[dt] = { p0 = lumen.randn(3, 4, dt), p1 = lumen.randn(5, dt), g0 = lumen.randn(STEPS, 3, 4, dt),
    g1 = lumen.randn(STEPS, 5, dt) }
end

local function run_lumen(make, d)
  local P = { d.p0:clone():requires_grad_(), d.p1:clone():requires_grad_() }
  local opt = make(P)
  for k = 0, STEPS - 1 do
    P[1].grad = d.g0[k]:clone()
    P[2].grad = k ~= 3 and d.g1[k]:clone() or nil
    opt:step()
  end
  return P, opt
end

local TORCH_LOOP = [[run('''
P = [p0.clone().requires_grad_(), p1.clone().requires_grad_()]
opt = %s
for k in range(%d):
    P[0].grad = g0[k].clone()
    P[1].grad = g1[k].clone() if k != 3 else None
    opt.step()
result = [p.detach() for p in P]
''')]]

-- name, lumen constructor, torch constructor (P is the parameter list)
local cases = {
  { 'SGD', function(P) return optim.SGD(P, { lr = 0.1 }) end, 'torch.optim.SGD(P, lr=0.1)' },
  { 'SGD momentum', function(P) return optim.SGD(P, { lr = 0.1, momentum = 0.9 }) end,
    'torch.optim.SGD(P, lr=0.1, momentum=0.9)' },
  { 'SGD momentum, dampening, weight decay',
    function(P) return optim.SGD(P, { lr = 0.05, momentum = 0.9, dampening = 0.5, weight_decay = 0.01 }) end,
    'torch.optim.SGD(P, lr=0.05, momentum=0.9, dampening=0.5, weight_decay=0.01)' },
  { 'SGD nesterov, weight decay',
    function(P) return optim.SGD(P, { lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 0.1 }) end,
    'torch.optim.SGD(P, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)' },
  { 'SGD maximize', function(P) return optim.SGD(P, { lr = 0.1, momentum = 0.5, maximize = true }) end,
    'torch.optim.SGD(P, lr=0.1, momentum=0.5, maximize=True)' },
  { 'Adam', function(P) return optim.Adam(P, { lr = 0.01 }) end, 'torch.optim.Adam(P, lr=0.01)' },
  { 'Adam weight decay, amsgrad',
    function(P) return optim.Adam(P, { lr = 0.02, weight_decay = 0.1, amsgrad = true }) end,
    'torch.optim.Adam(P, lr=0.02, weight_decay=0.1, amsgrad=True)' },
  { 'Adam betas, eps, maximize',
    function(P) return optim.Adam(P, { lr = 0.03, betas = { 0.8, 0.99 }, eps = 1e-6, maximize = true }) end,
    'torch.optim.Adam(P, lr=0.03, betas=(0.8, 0.99), eps=1e-6, maximize=True)' },
  { 'AdamW', function(P) return optim.AdamW(P, { lr = 0.01 }) end, 'torch.optim.AdamW(P, lr=0.01)' },
  { 'AdamW amsgrad, weight decay',
    function(P) return optim.AdamW(P, { lr = 0.05, weight_decay = 0.1, amsgrad = true }) end,
    'torch.optim.AdamW(P, lr=0.05, weight_decay=0.1, amsgrad=True)' },
  { 'RMSprop', function(P) return optim.RMSprop(P) end, 'torch.optim.RMSprop(P)' },
  { 'RMSprop centered', function(P) return optim.RMSprop(P, { lr = 0.01, centered = true }) end,
    'torch.optim.RMSprop(P, lr=0.01, centered=True)' },
  { 'RMSprop momentum, centered, weight decay',
    function(P) return optim.RMSprop(P, { lr = 0.01, momentum = 0.9, centered = true, weight_decay = 0.1 }) end,
    'torch.optim.RMSprop(P, lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)' },
  { 'RMSprop momentum, alpha, maximize',
    function(P) return optim.RMSprop(P, { lr = 0.005, momentum = 0.5, alpha = 0.9, maximize = true }) end,
    'torch.optim.RMSprop(P, lr=0.005, momentum=0.5, alpha=0.9, maximize=True)' },
  { 'SGD param groups',
    function(P)
      return optim.SGD({ { params = { P[1] }, lr = 0.1 }, { params = { P[2] }, lr = 0.01, momentum = 0.5 } },
        { lr = 0.05, momentum = 0.9 })
    end,
    "torch.optim.SGD([{'params': [P[0]], 'lr': 0.1}, {'params': [P[1]], 'lr': 0.01, 'momentum': 0.5}], lr=0.05, momentum=0.9)" },
  { 'Adam param groups',
    function(P)
      return optim.Adam({ { params = { P[1] } }, { params = { P[2] }, lr = 0.1, amsgrad = true } }, { lr = 0.01 })
    end,
    "torch.optim.Adam([{'params': [P[0]]}, {'params': [P[1]], 'lr': 0.1, 'amsgrad': True}], lr=0.01)" },
  { 'RMSprop param groups',
    function(P)
      return optim.RMSprop({ { params = { P[1] }, centered = true }, { params = { P[2] }, lr = 0.03 } }, { lr = 0.01 })
    end,
    "torch.optim.RMSprop([{'params': [P[0]], 'centered': True}, {'params': [P[1]], 'lr': 0.03}], lr=0.01)" },
}

-- a parameter big enough to be split across threads
local big = { p = lumen.randn(70001), g = lumen.randn(3, 70001) }

-- the schedules: lr of two groups (0.1 and 0.05) after construction and after each of 24 steps
local SCHED_LOOP = [[run('''
import warnings
warnings.simplefilter('ignore')
opt = torch.optim.SGD([{'params': [torch.zeros(1)], 'lr': 0.1}, {'params': [torch.zeros(1)], 'lr': 0.05}], lr=0.1)
s = %s
out = [s.get_last_lr()]
for k in range(24):
    opt.step()
    s.step()
    out.append(s.get_last_lr())
result = torch.tensor(out, dtype=torch.float64)
''')]]
local function two_groups()
  return optim.SGD({ { params = { lumen.zeros(1) }, lr = 0.1 }, { params = { lumen.zeros(1) }, lr = 0.05 } }, { lr = 0.1 })
end
local function lr_sequence(make, n)
  local opt = two_groups()
  local s = make(opt)
  local out = { s:get_last_lr() }
  for _ = 1, n or 24 do
    opt:step()
    s:step()
    out[#out + 1] = s:get_last_lr()
  end
  return lumen.tensor(out, 'f64')
end
local sched_cases = {
  { 'StepLR', function(o) return sched.StepLR(o, 3, 0.5) end, 'torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)' },
  { 'StepLR default gamma', function(o) return sched.StepLR(o, 5) end, 'torch.optim.lr_scheduler.StepLR(opt, 5)' },
  { 'MultiStepLR', function(o) return sched.MultiStepLR(o, { 2, 5, 5, 9 }, 0.3) end,
    'torch.optim.lr_scheduler.MultiStepLR(opt, [2, 5, 5, 9], 0.3)' },
  { 'CosineAnnealingLR (past T_max)', function(o) return sched.CosineAnnealingLR(o, 7, 0.001) end,
    'torch.optim.lr_scheduler.CosineAnnealingLR(opt, 7, 0.001)' },
  { 'CosineAnnealingLR eta_min 0', function(o) return sched.CosineAnnealingLR(o, 24) end,
    'torch.optim.lr_scheduler.CosineAnnealingLR(opt, 24)' },
  { 'PolyLR as PolynomialLR', function(o) return sched.PolyLR(o, 20, 0.9) end,
    'torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=20, power=0.9)' },
}

-- ReduceLROnPlateau: lrs after each step(metric)
local plateau_metrics = lumen.tensor({ 1.0, 0.9, 0.9, 0.95, 0.91, 0.8995, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.49, 0.6,
  0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6 }, 'f64')
local PLATEAU_LOOP = [[run('''
opt = torch.optim.SGD([{'params': [torch.zeros(1)], 'lr': 0.1}, {'params': [torch.zeros(1)], 'lr': 0.05}], lr=0.1)
s = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, %s)
out = []
for k in range(len(m)):
    s.step(float(m[k]))
    out.append([g['lr'] for g in opt.param_groups])
result = torch.tensor(out, dtype=torch.float64)
''')]]
local plateau_cases = {
  { 'min rel', { mode = 'min', factor = 0.5, patience = 2, threshold = 0.01 }, "mode='min', factor=0.5, patience=2, threshold=0.01" },
  { 'min abs, cooldown, min_lr per group',
    { mode = 'min', factor = 0.3, patience = 1, threshold = 0.05, threshold_mode = 'abs', cooldown = 2, min_lr = { 0.01, 0.002 } },
    "mode='min', factor=0.3, patience=1, threshold=0.05, threshold_mode='abs', cooldown=2, min_lr=[0.01, 0.002]" },
  { 'max rel', { mode = 'max', factor = 0.1, patience = 0 }, "mode='max', factor=0.1, patience=0" },
  { 'max abs, min_lr', { mode = 'max', patience = 3, threshold_mode = 'abs', min_lr = 0.004 },
    "mode='max', patience=3, threshold_mode='abs', min_lr=0.004" },
}
local function plateau_lumen(opts)
  local opt = two_groups()
  local s = sched.ReduceLROnPlateau(opt, opts)
  local out = {}
  for _, m in ipairs(check.values(plateau_metrics)) do
    s:step(m)
    out[#out + 1] = s:get_last_lr()
  end
  return lumen.tensor(out, 'f64')
end

-- clip_grad_norm_: (max_norm, norm_type) on three gradients, one parameter without
local clip_cases = { { 1.0, 2 }, { 100.0, 2 }, { 0.5, 1 }, { 0.3, math.huge }, { 2.0, 3.5 }, { 1e9, math.huge } }
local clip_data = {}
for _, dt in ipairs { 'f32', 'f64' } do
  clip_data[dt] = { a = lumen.randn(4, 5, dt), b = lumen.randn(7, dt), c = lumen.randn(2, 3, dt) }
end
local CLIP_CODE = [[run('''
P = [torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(c), torch.zeros(2)]
for p, g in zip(P, [a, b, c]):
    p.grad = g.clone()
n = torch.nn.utils.clip_grad_norm_(P, %.17g, %s)
result = [n.double(), P[0].grad, P[1].grad, P[2].grad]
''')]]
local function clip_lumen(d, max_norm, norm_type)
  local P = { lumen.zeros(4, 5, d.a:dtype()), lumen.zeros(7, d.a:dtype()), lumen.zeros(2, 3, d.a:dtype()), lumen.zeros(2) }
  P[1].grad, P[2].grad, P[3].grad = d.a:clone(), d.b:clone(), d.c:clone()
  local n = optim.clip_grad_norm_(P, max_norm, norm_type)
  return n, P
end

-- one oracle batch for the whole file
local batch, index = {}, {}
local function add(key, case)
  batch[#batch + 1] = case
  index[key] = #batch
end
for ci, c in ipairs(cases) do
  for dt, d in pairs(data) do
    add('opt' .. ci .. dt, { string.format(TORCH_LOOP, c[3], STEPS), p0 = d.p0, p1 = d.p1, g0 = d.g0, g1 = d.g1 })
  end
end
add('big', { [[run('''
p = p0.clone().requires_grad_()
opt = torch.optim.Adam([p], lr=0.01, amsgrad=True)
for k in range(3):
    p.grad = g0[k].clone()
    opt.step()
result = p.detach()
''')]], p0 = big.p, g0 = big.g })
for si, c in ipairs(sched_cases) do add('sched' .. si, { string.format(SCHED_LOOP, c[3]) }) end
add('step_epoch', { [[run('''
import warnings
warnings.simplefilter('ignore')
opt = torch.optim.SGD([{'params': [torch.zeros(1)], 'lr': 0.1}, {'params': [torch.zeros(1)], 'lr': 0.05}], lr=0.1)
s = torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)
out = []
for e in [7, 2, 11]:
    s.step(e)
    out.append(s.get_last_lr())
c = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10, 0.001)
for e in [4, 9]:
    c.step(e)
    out.append(c.get_last_lr())
result = torch.tensor(out, dtype=torch.float64)
''')]] })
for pi, c in ipairs(plateau_cases) do add('plateau' .. pi, { string.format(PLATEAU_LOOP, c[3]), m = plateau_metrics }) end
for ki, c in ipairs(clip_cases) do
  for dt, d in pairs(clip_data) do
    add('clip' .. ki .. dt, { string.format(CLIP_CODE, c[1], c[2] == math.huge and "float('inf')" or c[2]),
      a = d.a, b = d.b, c = d.c })
  end
end
local R = oracle.run(batch)
local function result(key)
  local r = R[index[key]]
  assert(not r.error, r.error)
  return r
end

local tol = { f32 = { rtol = 1e-5, atol = 1e-6 }, f64 = { rtol = 1e-12, atol = 1e-14 } }

describe('optimizers against torch.optim (ten steps)', function()
  for ci, c in ipairs(cases) do
    for _, dt in ipairs { 'f32', 'f64' } do
      it(c[1] .. ' ' .. dt, function()
        local P = run_lumen(c[2], data[dt])
        local e = result('opt' .. ci .. dt)
        check.assert_close(P[1], e[1], tol[dt], 'params[1]')
        check.assert_close(P[2], e[2], tol[dt], 'params[2]')
      end)
    end
  end

  it('splits a large parameter across threads with the same result', function()
    local expected = result('big')[1]
    local results = {}
    for _, threads in ipairs { 1, 2 } do
      local was = lumen.get_num_threads()
      lumen.set_num_threads(threads)
      local p = big.p:clone()
      local opt = optim.Adam({ p }, { lr = 0.01, amsgrad = true })
      for k = 0, 2 do
        p.grad = big.g[k]:clone()
        opt:step()
      end
      lumen.set_num_threads(was)
      check.assert_close(p, expected, tol.f32)
      results[threads] = p
    end
    check.assert_close(results[2], results[1], { rtol = 0, atol = 0 })
  end)

  it('updates non-contiguous parameters and states through their views', function()
    -- the same updates on transposed views and on contiguous copies agree bit for bit
    local base, gbase = lumen.randn(4, 3, 'f64'), lumen.randn(STEPS, 4, 3, 'f64')
    local function run(transposed)
      local p = transposed and base:clone():t() or base:t():contiguous()
      local opt = optim.RMSprop({ p }, { lr = 0.01, momentum = 0.9, centered = true })
      for k = 0, STEPS - 1 do
        p.grad = transposed and gbase[k]:clone():t() or gbase[k]:t():contiguous()
        opt:step()
      end
      return p, opt.state[p]
    end
    local a, sa = run(true)
    local b, sb = run(false)
    assert.is_false(a:is_contiguous())
    check.assert_close(a, b, { rtol = 0, atol = 0 })
    check.assert_close(sa.grad_avg, sb.grad_avg, { rtol = 0, atol = 0 })
    -- a transposed state tensor is written back too
    local p = base:clone()
    local q = base:clone()
    local o1 = optim.SGD({ p }, { lr = 0.1, momentum = 0.9 })
    local o2 = optim.SGD({ q }, { lr = 0.1, momentum = 0.9 })
    for k = 0, 2 do
      p.grad, q.grad = gbase[k]:clone(), gbase[k]:clone()
      o1:step(); o2:step()
      if k == 0 then o1.state[p].momentum_buffer = o1.state[p].momentum_buffer:t():contiguous():t() end
    end
    assert.is_false(o1.state[p].momentum_buffer:is_contiguous())
    check.assert_close(p, q, { rtol = 0, atol = 0 })
    check.assert_close(o1.state[p].momentum_buffer, o2.state[q].momentum_buffer, { rtol = 0, atol = 0 })
  end)

  it('skips parameters without a gradient and keeps per-parameter step counts', function()
    local P, opt = run_lumen(cases[6][2], data.f64)
    assert.are.equal(STEPS, opt.state[P[1]].step)
    assert.are.equal(STEPS - 1, opt.state[P[2]].step)
    local q = lumen.randn(3, 'f64')
    local before = q:clone()
    local o = optim.Adam({ q })
    o:step()
    check.assert_close(q, before, { rtol = 0, atol = 0 })
    assert.is_nil(o.state[q])
  end)
end)

describe('optimizer objects', function()
  it('zero_grad drops the gradients, or zeroes them', function()
    local p = lumen.randn(3)
    local opt = optim.SGD({ p }, { lr = 0.1 })
    p.grad = lumen.ones(3)
    opt:zero_grad()
    assert.is_nil(p.grad)
    p.grad = lumen.ones(3)
    opt:zero_grad(false)
    check.assert_close(p.grad, lumen.zeros(3), { rtol = 0, atol = 0 })
  end)

  it('step(closure) evaluates the closure with grad mode on and returns its value', function()
    local p = lumen.randn(2)
    local opt = optim.SGD({ p }, { lr = 0.5 })
    local before = p:clone()
    local loss = lumen.no_grad(function()
      return opt:step(function()
        assert.is_true(lumen.is_grad_enabled())
        p.grad = lumen.ones(2)
        return 42
      end)
    end)
    assert.are.equal(42, loss)
    check.assert_close(p, before - 0.5, { rtol = 0, atol = 1e-7 })
  end)

  it('takes a changed group lr on the next step', function()
    local p = lumen.zeros(1, 'f64')
    local opt = optim.SGD({ p }, { lr = 0.1 })
    opt.param_groups[1].lr = 0.25
    p.grad = lumen.ones(1, 'f64')
    opt:step()
    assert.are.equal(-0.25, p:item())
  end)

  it('state_dict / load_state_dict continue the run exactly', function()
    for _, c in ipairs { cases[4], cases[7], cases[13], cases[15] } do
      local d = data.f32
      local P = { d.p0:clone(), d.p1:clone() }
      local opt = c[2](P)
      for k = 0, 4 do
        P[1].grad, P[2].grad = d.g0[k]:clone(), k ~= 3 and d.g1[k]:clone() or nil
        opt:step()
      end
      local sd = opt:state_dict()
      assert.are.equal(5, sd.state[0].step)
      assert.are.equal(4, sd.state[1].step)
      local last = sd.param_groups[#sd.param_groups].params
      assert.are.equal(0, sd.param_groups[1].params[1])
      assert.are.equal(1, last[#last])
      -- a fresh optimizer on copies of the parameters, with other hyperparameters
      local Q = { P[1]:clone(), P[2]:clone() }
      local opt2 = c[2](Q)
      for _, g in ipairs(opt2.param_groups) do g.lr = 123 end
      opt2:load_state_dict(sd)
      assert.are_not.equal(123, opt2.param_groups[1].lr)
      for k = 5, STEPS - 1 do
        P[1].grad, P[2].grad = d.g0[k]:clone(), d.g1[k]:clone()
        Q[1].grad, Q[2].grad = d.g0[k]:clone(), d.g1[k]:clone()
        opt:step()
        opt2:step()
      end
      check.assert_close(Q[1], P[1], { rtol = 0, atol = 0 }, c[1])
      check.assert_close(Q[2], P[2], { rtol = 0, atol = 0 }, c[1])
    end
  end)

  it('load_state_dict copies the state and refuses one that does not fit', function()
    local p = lumen.randn(3, 4)
    local opt = optim.Adam({ p })
    p.grad = lumen.ones(3, 4)
    opt:step()
    local sd = opt:state_dict()
    local q = lumen.randn(3, 4)
    local opt2 = optim.Adam({ q })
    opt2:load_state_dict(sd)
    assert.is_false(lumen.core.C.lm_tensor_same_storage(opt2.state[q].exp_avg.h, opt.state[p].exp_avg.h) ~= 0)
    local other = optim.Adam({ lumen.randn(4, 3) })
    assert.has_error(function() other:load_state_dict(sd) end,
      "lumen.optim.Adam: load_state_dict: state 'exp_avg' of params[1] in param group 1 has shape 3x4, expected 4x3 (the parameter's shape)")
    local two = optim.Adam({ lumen.randn(3, 4), lumen.randn(2) })
    assert.has_error(function() two:load_state_dict(sd) end,
      "lumen.optim.Adam: load_state_dict: saved param group 1 has 1 parameters, this optimizer's has 2")
    local groups = optim.Adam({ { params = { lumen.randn(3, 4) } }, { params = { lumen.randn(2) } } })
    assert.has_error(function() groups:load_state_dict(sd) end,
      'lumen.optim.Adam: load_state_dict: the saved state has 1 parameter groups, this optimizer 2')
    sd.param_groups[1].betas = { 0.9, 1.5 }
    assert.has_error(function() opt2:load_state_dict(sd) end,
      'lumen.optim.Adam: load_state_dict: saved param group 1: invalid beta parameter at index 2 1.5 (expected a number < 1)')
  end)
end)

describe('optimizer errors', function()
  it('refuses bad options when made', function()
    local p = { lumen.randn(2) }
    assert.has_error(function() optim.SGD(p) end, "lumen.optim.SGD: param group 1: option 'lr' is required")
    assert.has_error(function() optim.SGD(p, { lr = -1 }) end,
      'lumen.optim.SGD: invalid learning rate -1 (expected a number >= 0)')
    assert.has_error(function() optim.SGD(p, { lr = 0.1, momentum = 'x' }) end,
      'lumen.optim.SGD: momentum must be a number, got x')
    assert.has_error(function() optim.SGD(p, { lr = 0.1, nesterov = true }) end,
      'lumen.optim.SGD: nesterov momentum requires a momentum > 0 and zero dampening (got momentum 0, dampening 0)')
    assert.has_error(function() optim.SGD(p, { lr = 0.1, momentun = 0.9 }) end,
      "lumen.optim.SGD: unknown option 'momentun' (expected dampening, lr, maximize, momentum, nesterov, weight_decay)")
    assert.has_error(function() optim.Adam(p, { betas = { 0.9, 1 } }) end,
      'lumen.optim.Adam: invalid beta parameter at index 2 1 (expected a number < 1)')
    assert.has_error(function() optim.Adam(p, { betas = 0.9 }) end,
      'lumen.optim.Adam: betas must be a list of two numbers, got 0.9')
    assert.has_error(function() optim.AdamW(p, { eps = -1 }) end,
      'lumen.optim.AdamW: invalid epsilon -1 (expected a number >= 0)')
    assert.has_error(function() optim.RMSprop(p, { centered = 1 }) end,
      'lumen.optim.RMSprop: centered must be true or false, got 1')
    assert.has_error(function() optim.RMSprop(p, { alpha = -0.5 }) end,
      'lumen.optim.RMSprop: invalid alpha -0.5 (expected a number >= 0)')
  end)

  it('refuses bad parameter lists', function()
    assert.has_error(function() optim.SGD({}, { lr = 1 }) end, 'lumen.optim.SGD: optimizer got an empty parameter list')
    assert.has_error(function() optim.Adam({ lumen.randn(2), 'w' }) end,
      'lumen.optim.Adam: param group 1: params[2] is a string, expected a tensor')
    assert.has_error(function() optim.Adam({ lumen.zeros(2, 'i64') }) end,
      'lumen.optim.Adam: param group 1: params[1] is i64, expected a floating-point tensor (f32 or f64)')
    local p = lumen.randn(2)
    assert.has_error(function() optim.Adam({ { params = { p } }, { params = { p } } }) end,
      'lumen.optim.Adam: some parameters appear in more than one parameter group')
    assert.has_error(function() optim.Adam({ { params = { p }, bogus = 1 } }) end,
      "lumen.optim.Adam: unknown option 'bogus' (expected amsgrad, betas, eps, lr, maximize, weight_decay)")
  end)

  it('refuses a state tensor that does not fit, before writing anything', function()
    local a, b = lumen.randn(3, 4), lumen.randn(5)
    local opt = optim.Adam({ a, b })
    a.grad, b.grad = lumen.ones(3, 4), lumen.ones(5)
    opt:step()
    local a0, b0 = a:clone(), b:clone()
    opt.state[b].exp_avg_sq = lumen.zeros(4)
    assert.has_error(function() opt:step() end,
      "lumen.optim.Adam: step: exp_avg_sq of params[2] has shape 4, expected 5 (the parameter's shape) (param group 1)")
    opt.state[b].exp_avg_sq = lumen.zeros(5, 'f64')
    assert.has_error(function() opt:step() end,
      "lumen.optim.Adam: step: exp_avg_sq of params[2] is f64, expected f32 (the parameter's dtype) (param group 1)")
    opt.state[b].exp_avg_sq = lumen.zeros(1):expand(5)
    assert.has_error(function() opt:step() end,
      'lumen.optim.Adam: step: exp_avg_sq of params[2] is an expanded view (a stride of 0), expected memory of its own (param group 1)')
    check.assert_close(a, a0, { rtol = 0, atol = 0 })
    check.assert_close(b, b0, { rtol = 0, atol = 0 })
    assert.are.equal(1, opt.state[a].step)
    -- hyperparameters changed after construction are checked at the step
    local s = optim.SGD({ a }, { lr = 0.1 })
    s.param_groups[1].lr = -1
    assert.has_error(function() s:step() end, 'lumen.optim.SGD: invalid learning rate -1 (expected a number >= 0)')
  end)

  it('the C functions check their arguments', function()
    local ctx = lumen.core.ctx
    local function errmsg()
      local s = ffi.string(C.lm_ctx_errmsg(ctx))
      C.lm_ctx_clear_error(ctx)
      return s
    end
    local p, g, m = lumen.randn(3), lumen.randn(3), lumen.zeros(2)
    local ps, gs, ms = ffi.new('lm_tensor*[1]', { p.h }), ffi.new('lm_tensor*[1]', { g.h }), ffi.new('lm_tensor*[1]', { m.h })
    local steps = ffi.new('int64_t[1]', { 1 })
    local h = ffi.new('lm_optim_hparams', { lr = 0.1, momentum = 0.9 })
    assert.are.equal(C.LM_E_SHAPE, C.lm_sgd_step(ctx, 1, ps, gs, ms, steps, h))
    assert.are.equal("sgd: momentum buffer of parameter 0 has shape 2, expected 3 (the parameter's shape)", errmsg())
    assert.are.equal(C.LM_E_ARG, C.lm_sgd_step(ctx, 1, ps, gs, nil, steps, h))
    assert.are.equal('sgd: the momentum buffer list is NULL, but momentum needs it', errmsg())
    h.lr = math.huge
    assert.are.equal(C.LM_E_ARG, C.lm_sgd_step(ctx, 1, ps, gs, ms, steps, h))
    assert.are.equal('sgd: lr is inf, expected a finite number >= 0', errmsg())
    h.lr, h.beta1, h.beta2 = 0.1, 1, 0.999
    assert.are.equal(C.LM_E_ARG, C.lm_adam_step(ctx, 1, ps, gs, ms, ms, nil, steps, h))
    assert.are.equal('adam: beta1 is 1, expected a number in [0, 1)', errmsg())
    h.beta1 = 0.9
    steps[0] = 0
    local v = lumen.zeros(3)
    local vs = ffi.new('lm_tensor*[1]', { v.h })
    assert.are.equal(C.LM_E_ARG, C.lm_adam_step(ctx, 1, ps, gs, vs, vs, nil, steps, h))
    assert.are.equal('adam: step count of parameter 0 is 0, expected >= 1', errmsg())
    local pi = lumen.zeros(3, 'i32')
    local pis = ffi.new('lm_tensor*[1]', { pi.h })
    assert.are.equal(C.LM_E_ARG, C.lm_rmsprop_step(ctx, 1, pis, gs, vs, nil, nil, h))
    assert.are.equal('rmsprop: the momentum buffer list is NULL, but momentum needs it', errmsg())
    h.momentum = 0
    assert.are.equal(C.LM_E_DTYPE, C.lm_rmsprop_step(ctx, 1, pis, gs, vs, nil, nil, h))
    assert.are.equal('rmsprop: parameter 0 is i32, expected f32 or f64', errmsg())
    assert.are.equal(0, C.lm_rmsprop_step(ctx, 0, nil, nil, nil, nil, nil, h))
  end)
end)

describe('clip_grad_norm_ against torch.nn.utils.clip_grad_norm_', function()
  for ki, c in ipairs(clip_cases) do
    for _, dt in ipairs { 'f32', 'f64' } do
      it(string.format('max_norm %g, norm_type %g, %s', c[1], c[2], dt), function()
        local n, P = clip_lumen(clip_data[dt], c[1], c[2])
        local e = result('clip' .. ki .. dt)
        assert.is_true(math.abs(n - e[1]:item()) <= (dt == 'f32' and 1e-6 or 1e-13) * e[1]:item(),
          string.format('total norm %.17g, torch %.17g', n, e[1]:item()))
        for i = 1, 3 do check.assert_close(P[i].grad, e[i + 1], tol[dt], 'grad ' .. i) end
        assert.is_nil(P[4].grad)
      end)
    end
  end

  it('returns 0 for no gradients and accepts a single tensor', function()
    assert.are.equal(0, optim.clip_grad_norm_({ lumen.randn(2) }, 1))
    local p = lumen.zeros(2, 'f64')
    p.grad = lumen.tensor({ 3, 4 }, 'f64')
    assert.are.equal(5, optim.clip_grad_norm_(p, 10))
    assert.are.equal(4, optim.clip_grad_norm_(p, 10, 'inf'))
  end)

  it('does not depend on the thread count', function()
    local g = lumen.randn(300001)
    local norms = {}
    for _, threads in ipairs { 1, 2 } do
      local was = lumen.get_num_threads()
      lumen.set_num_threads(threads)
      local p = lumen.zeros(300001)
      p.grad = g:clone()
      norms[threads] = optim.clip_grad_norm_({ p }, 1)
      lumen.set_num_threads(was)
    end
    assert.are.equal(norms[1], norms[2])
  end)

  it('handles non-finite norms as torch does, or refuses them', function()
    local p = lumen.zeros(3)
    p.grad = lumen.tensor({ 1, 0 / 0, 2 })
    local n = optim.clip_grad_norm_({ p }, 1)
    assert.is_true(n ~= n)
    for _, v in ipairs(p.grad:totable()) do assert.is_true(v ~= v) end
    p.grad = lumen.tensor({ 1, math.huge, 2 })
    assert.has_error(function() optim.clip_grad_norm_({ p }, 1, 2, { error_if_nonfinite = true }) end,
      'lumen.optim.clip_grad_norm_: the total norm of order 2 of the gradients is inf, so they cannot be clipped (error_if_nonfinite is set)')
  end)

  it('refuses bad arguments', function()
    local p = lumen.zeros(3)
    p.grad = lumen.ones(3)
    assert.has_error(function() optim.clip_grad_norm_({ p }, -1) end,
      'lumen.optim.clip_grad_norm_: max_norm is -1, expected a number >= 0')
    assert.has_error(function() optim.clip_grad_norm_({ p }, 1, 0) end,
      'lumen.optim.clip_grad_norm_: norm_type is 0, expected a number > 0 or inf')
    assert.has_error(function() optim.clip_grad_norm_({ p }, 'big') end,
      'lumen.optim.clip_grad_norm_: max_norm must be a number, got big')
    assert.has_error(function() optim.clip_grad_norm_({ p }, 1, 2, { error_if_nonfinit = true }) end,
      "lumen.optim.clip_grad_norm_: unknown option 'error_if_nonfinit' (expected error_if_nonfinite)")
  end)
end)

describe('learning-rate schedules', function()
  for si, c in ipairs(sched_cases) do
    it(c[1] .. ' matches torch', function()
      check.assert_close(lr_sequence(c[2]), result('sched' .. si)[1], { rtol = 1e-12, atol = 1e-15 })
    end)
  end

  it('step(epoch) jumps through the closed form as torch', function()
    local opt = two_groups()
    local s = sched.StepLR(opt, 3, 0.5)
    local out = {}
    for _, e in ipairs { 7, 2, 11 } do
      s:step(e)
      out[#out + 1] = s:get_last_lr()
    end
    local c = sched.CosineAnnealingLR(opt, 10, 0.001)
    for _, e in ipairs { 4, 9 } do
      c:step(e)
      out[#out + 1] = c:get_last_lr()
    end
    check.assert_close(lumen.tensor(out, 'f64'), result('step_epoch')[1], { rtol = 1e-12, atol = 1e-15 })
  end)

  for pi, c in ipairs(plateau_cases) do
    it('ReduceLROnPlateau ' .. c[1] .. ' matches torch', function()
      check.assert_close(plateau_lumen(c[2]), result('plateau' .. pi)[1], { rtol = 1e-12, atol = 1e-15 })
    end)
  end

  it('PolyLR follows base * (1 - epoch / max_epochs)^exponent', function()
    local got = lr_sequence(function(o) return sched.PolyLR(o, 20, 0.9) end)
    local want = {}
    for e = 0, 24 do
      local f = (1 - math.min(e, 20) / 20) ^ 0.9
      want[e + 1] = { 0.1 * f, 0.05 * f }
    end
    check.assert_close(got, lumen.tensor(want, 'f64'), { rtol = 1e-14, atol = 0 })
    got = lr_sequence(function(o) return sched.PolyLR(o, 10) end, 5)
    check.assert_close(got[{ 5 }], lumen.tensor({ 0.1 * 0.5 ^ 0.9, 0.05 * 0.5 ^ 0.9 }, 'f64'), { rtol = 1e-14, atol = 0 })
  end)

  it('WarmupCosine warms up linearly, then follows a half cosine to min_lr', function()
    local W, N, lo = 5, 20, 0.001
    local got = lr_sequence(function(o) return sched.WarmupCosine(o, { warmup_steps = W, total_steps = N, min_lr = lo }) end)
    local want = {}
    for s = 0, 24 do
      local row = {}
      for i, base in ipairs { 0.1, 0.05 } do
        if s < W then
          row[i] = base * s / W
        else
          local p = math.min(s - W, N - W) / (N - W)
          row[i] = lo + (base - lo) * 0.5 * (1 + math.cos(math.pi * p))
        end
      end
      want[s + 1] = row
    end
    check.assert_close(got, lumen.tensor(want, 'f64'), { rtol = 1e-14, atol = 1e-17 })
    -- the ends: 0 at the start, base at the end of the warm-up, min_lr from total_steps on
    assert.are.same({ 0, 0 }, check.values(got[0]))
    assert.are.same({ 0.1, 0.05 }, check.values(got[W]))
    check.assert_close(got[24], lumen.tensor({ lo, lo }, 'f64'), { rtol = 1e-15, atol = 0 })
    -- a warm-up start rate and no warm-up at all
    local s = lr_sequence(function(o)
      return sched.WarmupCosine(o, { warmup_steps = 4, total_steps = 8, warmup_start_lr = 0.02 })
    end, 2)
    check.assert_close(s[1], lumen.tensor({ 0.02 + 0.08 / 4, 0.02 + 0.03 / 4 }, 'f64'), { rtol = 1e-15, atol = 0 })
    s = lr_sequence(function(o) return sched.WarmupCosine(o, { warmup_steps = 0, total_steps = 4 }) end, 4)
    assert.are.same({ 0.1, 0.05 }, check.values(s[0]))
    check.assert_close(s[2], lumen.tensor({ 0.05, 0.025 }, 'f64'), { rtol = 1e-15, atol = 0 })
  end)

  it('a second schedule starts from the first rates (initial_lr), as torch', function()
    local opt = two_groups()
    local a = sched.StepLR(opt, 1, 0.5)
    a:step()
    assert.are.equal(0.05, opt.param_groups[1].lr)
    local b = sched.PolyLR(opt, 4, 1)
    assert.are.same({ 0.1, 0.05 }, b:get_last_lr())
  end)

  it('state_dict / load_state_dict resume a schedule', function()
    local o1, o2 = two_groups(), two_groups()
    local s1 = sched.MultiStepLR(o1, { 2, 4 }, 0.5)
    for _ = 1, 3 do s1:step() end
    local s2 = sched.MultiStepLR(o2, { 7 }, 0.1)
    s2:load_state_dict(s1:state_dict())
    for _, g in ipairs(o2.param_groups) do g.lr = o1.param_groups[_].lr end
    s1:step(); s2:step()
    assert.are.same(s1:get_last_lr(), s2:get_last_lr())
    assert.has_error(function() sched.StepLR(o2, 2):load_state_dict(s1:state_dict()) end,
      'lumen.optim.lr_scheduler.StepLR: load_state_dict: the saved state is of a MultiStepLR')
  end)

  it('refuse bad arguments', function()
    local opt = two_groups()
    assert.has_error(function() sched.StepLR(opt, 0) end,
      'lumen.optim.lr_scheduler.StepLR: step_size must be an integer >= 1, got 0')
    assert.has_error(function() sched.StepLR({}, 3) end,
      'lumen.optim.lr_scheduler.StepLR: expected an optimizer (from lumen.optim), got table')
    assert.has_error(function() sched.MultiStepLR(opt, { 1, 2.5 }) end,
      'lumen.optim.lr_scheduler.MultiStepLR: milestones[2] must be an integer >= 0, got 2.5')
    assert.has_error(function() sched.WarmupCosine(opt, { warmup_steps = 10, total_steps = 10 }) end,
      'lumen.optim.lr_scheduler.WarmupCosine: total_steps (10) must be greater than warmup_steps (10)')
    assert.has_error(function() sched.WarmupCosine(opt, { warmup = 10, total_steps = 10 }) end,
      "lumen.optim.lr_scheduler.WarmupCosine: unknown option 'warmup' (expected min_lr, total_steps, warmup_start_lr, warmup_steps)")
    assert.has_error(function() sched.ReduceLROnPlateau(opt, { mode = 'up' }) end,
      "lumen.optim.lr_scheduler.ReduceLROnPlateau: mode must be 'min' or 'max', got up")
    assert.has_error(function() sched.ReduceLROnPlateau(opt, { factor = 1 }) end,
      'lumen.optim.lr_scheduler.ReduceLROnPlateau: factor must be < 1, got 1')
    assert.has_error(function() sched.ReduceLROnPlateau(opt, { min_lr = { 0.1 } }) end,
      'lumen.optim.lr_scheduler.ReduceLROnPlateau: expected 2 min_lrs (one per param group), got 1')
    assert.has_error(function() sched.ReduceLROnPlateau(opt):step('low') end,
      'lumen.optim.lr_scheduler.ReduceLROnPlateau: step: metric must be a number or a one-element tensor, got string')
  end)
end)
