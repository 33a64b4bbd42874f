-- The shared argument checkers of the Lua layer (core.options, flag,
-- number, is_int, int_tuple), and where their errors point: every nn
-- family, functional and module form, and the schedulers blame the line
-- that called them, not a line inside lumen.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local optim = require 'lumen.optim'
local core = lumen.core
local F = nn.F

-- fn, written on one line, must fail with msg, blamed on that line.
local function fails_here(msg, fn)
  local info = debug.getinfo(fn, 'S')
  local ok, e = pcall(fn)
  assert.is_false(ok, 'expected an error: ' .. msg)
  assert.are.equal(info.short_src .. ':' .. info.linedefined .. ': ' .. msg, tostring(e))
end

describe('core argument checkers', function()
  -- Each checker called from a function of an API, as the families do: the
  -- default level blames the API's caller.
  local function api_options(o, known) return (core.options(o, 'op', known)) end
  local function api_flag(v, default) return (core.flag(v, 'op', 'f', default)) end
  local function api_number(v, default) return (core.number(v, 'op', 'n', default)) end
  local function api_tuple(v, nd) return (core.int_tuple(v, nd, 'op', 'stride')) end

  it('options', function()
    assert.are.same({}, api_options(nil, { a = true }))
    local o = { a = 1 }
    assert.are.equal(o, api_options(o, { a = true, b = true }))
    assert.are.equal(o, api_options(o, { 'b', 'a' }))
    fails_here("lumen.op: unknown option 'c' (expected a, b)", function() api_options({ c = 1 }, { b = true, a = true }) end)
    fails_here("lumen.op: unknown option 'c' (expected b, a)", function() api_options({ c = 1 }, { 'b', 'a' }) end)
    fails_here("lumen.op: unknown option '1' (expected b, a)", function() api_options({ 5 }, { 'b', 'a' }) end)
    fails_here('lumen.op: options must be a table {a, b}, got number', function() api_options(3, { b = true, a = true }) end)
    fails_here('lumen.op: options must be a table {a}, got a tensor', function() api_options(lumen.zeros(1), { 'a' }) end)
  end)

  it('flag and number', function()
    assert.are.equal(true, api_flag(nil, true))
    assert.is_nil(api_flag(nil, nil))
    assert.are.equal(false, api_flag(false, true))
    fails_here('lumen.op: f must be a boolean, got number', function() api_flag(1, false) end)
    assert.are.equal(0.5, api_number(nil, 0.5))
    assert.is_nil(api_number(nil, nil))
    assert.are.equal(-2, api_number(-2, 0.5))
    fails_here('lumen.op: n must be a number, got x', function() api_number('x', 1) end)
    assert.has_error(function() api_number(0 / 0, 1) end)
  end)

  it('is_int and int_tuple', function()
    assert.is_true(core.is_int(3))
    assert.is_true(core.is_int(-2 ^ 52))
    for _, v in ipairs { 2.5, 2 ^ 53, math.huge, 0 / 0, '3', true } do assert.is_false(core.is_int(v)) end
    assert.are.same({ 2, 2, 2 }, api_tuple(2, 3))
    local t = { 1, 2 }
    local r = api_tuple(t, 2)
    assert.are.same(t, r)
    assert.are_not.equal(t, r) -- a new list: the caller may keep it
    fails_here('lumen.op: stride must be an integer or a list of 2 integers, got a list of 3', function() api_tuple({ 1, 2, 3 }, 2) end)
    fails_here('lumen.op: stride must be an integer or a list of 2 integers, got 1.5', function() api_tuple(1.5, 2) end)
    fails_here('lumen.op: stride entry 2 is 1.5, expected an integer', function() api_tuple({ 1, 1.5 }, 2) end)
  end)

  it('level: a number counted from the caller, or a function', function()
    local function deeper(v) api_flag(v) end -- one more frame between the user and the checker
    local function api2(v) deeper(v) end
    local ok, e = pcall(api2, 1)
    assert.is_false(ok)
    assert.is_truthy(tostring(e):find('arg_checks_spec.lua:' .. debug.getinfo(deeper, 'S').linedefined .. ':', 1, true))
    local function api3(v) return (core.flag(v, 'op', 'f', false, 3)) end
    local function mid(v) api3(v) end
    fails_here('lumen.op: f must be a boolean, got number', function() mid(1) end)
    local function api4(v) return (core.flag(v, 'op', 'f', false, function() return 4 end)) end
    fails_here('lumen.op: f must be a boolean, got number', function() api4(1) end)
  end)
end)

describe('errors of the nn families and schedulers point at the caller', function()
  local x = lumen.randn(1, 2, 4, 4)
  it('activation', function()
    fails_here("lumen.relu: unknown option 'bad' (expected inplace)", function() F.relu(x, { bad = 1 }) end)
    fails_here('lumen.elu: alpha must be a number, got a', function() F.elu(x, 'a') end)
    fails_here('lumen.leaky_relu: inplace must be a boolean, got number', function() F.leaky_relu(x, 0.1, 1) end)
    fails_here("lumen.gelu: unknown option 'approx' (expected approximate)", function() F.gelu(x, { approx = 'tanh' }) end)
    fails_here("lumen.nn.ReLU: unknown option 'in_place' (expected inplace)", function() nn.ReLU({ in_place = true }) end)
    fails_here('lumen.nn.LeakyReLU: inplace must be a boolean, got number', function() nn.LeakyReLU(0.1, { inplace = 1 }) end)
    fails_here('lumen.nn.ELU: alpha must be a number, got a', function() nn.ELU('a') end)
  end)

  it('conv', function()
    local w = lumen.randn(2, 2, 3, 3)
    fails_here("lumen.conv2d: unknown option 'pad' (expected stride, padding, dilation, groups)", function() F.conv2d(x, w, nil, { pad = 1 }) end)
    fails_here('lumen.conv2d: stride must be an integer or a list of 2 integers, got a list of 3', function() F.conv2d(x, w, nil, { stride = { 1, 2, 3 } }) end)
    fails_here('lumen.conv_transpose2d: padding entry 1 is 0.5, expected an integer', function() F.conv_transpose2d(x, w, nil, { padding = { 0.5, 1 } }) end)
    fails_here("lumen.Conv2d: unknown option 'strides' (expected stride, padding, dilation, groups, bias, padding_mode)", function() nn.Conv2d(2, 2, 3, { strides = 1 }) end)
    fails_here('lumen.Conv2d: kernel_size must be an integer or a list of 2 integers, got a list of 3', function() nn.Conv2d(2, 2, { 3, 3, 3 }) end)
  end)

  it('loss', function()
    local logits, y = lumen.randn(2, 3), lumen.tensor({ 0, 2 }, 'i64')
    local seg, lab = lumen.randn(1, 2, 3, 3), lumen.ones(1, 2, 3, 3)
    fails_here("lumen.cross_entropy: unknown option 'ignore' (expected weight, ignore_index, label_smoothing, reduction)", function() F.cross_entropy(logits, y, { ignore = 1 }) end)
    fails_here('lumen.dice_loss: softmax must be a boolean, got number', function() F.dice_loss(seg, lab, { softmax = 1 }) end)
    fails_here('lumen.dice_loss: smooth_nr must be a number, got a', function() F.dice_loss(seg, lab, { smooth_nr = 'a' }) end)
    fails_here('lumen.smooth_l1_loss: beta must be a number, got a', function() F.smooth_l1_loss(logits, logits, { beta = 'a' }) end)
    fails_here('lumen.cross_entropy: options must be a table {weight, ignore_index, label_smoothing, reduction}, got number', function() nn.CrossEntropyLoss(3) end)
    local m = nn.DiceLoss({ sigmoid = 1 })
    fails_here('lumen.dice_loss: sigmoid must be a boolean, got number', function() m(seg, lab) end)
  end)

  it('norm', function()
    fails_here("lumen.batch_norm: unknown option 'momentom' (expected bias, eps, momentum, training, weight)", function() F.batch_norm(x, nil, nil, { momentom = 1 }) end)
    fails_here('lumen.batch_norm: training must be a boolean, got number', function() F.batch_norm(x, nil, nil, nil, nil, 1) end)
    fails_here('lumen.group_norm: eps must be a number, got a', function() F.group_norm(x, 2, nil, nil, 'a') end)
    fails_here("lumen.instance_norm: unknown option 'momentum' (expected bias, eps, weight)", function() F.instance_norm(x, { momentum = 1 }) end)
    fails_here("lumen.nn.BatchNorm2d: unknown option 'momentom' (expected affine, dtype, eps, momentum, track_running_stats)", function() nn.BatchNorm2d(2, { momentom = 1 }) end)
    fails_here('lumen.nn.InstanceNorm2d: affine must be a boolean, got number', function() nn.InstanceNorm2d(2, { affine = 1 }) end)
    fails_here('lumen.nn.GroupNorm: eps must be a number, got a', function() nn.GroupNorm(1, 2, { eps = 'a' }) end)
    fails_here('lumen.nn.LayerNorm: elementwise_affine must be a boolean, got number', function() nn.LayerNorm(4, { elementwise_affine = 1 }) end)
  end)

  it('pool', function()
    fails_here("lumen.max_pool2d: unknown option 'strides' (expected ceil_mode, dilation, padding, return_indices, stride)", function() F.max_pool2d(x, 2, { strides = 2 }) end)
    fails_here('lumen.max_pool2d: kernel_size must be an integer or a list of 2 integers, got a list of 3', function() F.max_pool2d(x, { 2, 2, 2 }) end)
    fails_here('lumen.avg_pool2d: ceil_mode must be a boolean, got number', function() F.avg_pool2d(x, 2, { ceil_mode = 1 }) end)
    fails_here('lumen.adaptive_avg_pool2d: output_size entry 1 is x, expected an integer', function() F.adaptive_avg_pool2d(x, { 'x', 2 }) end)
    local m = nn.MaxPool2d(2, { strides = 2 })
    fails_here("lumen.max_pool2d: unknown option 'strides' (expected ceil_mode, dilation, padding, return_indices, stride)", function() m(x) end)
  end)

  it('resample', function()
    fails_here("lumen.interpolate: unknown option 'scale' (expected align_corners, mode, recompute_scale_factor, scale_factor, size)", function() F.interpolate(x, { scale = 2 }) end)
    fails_here('lumen.interpolate: align_corners must be a boolean, got number', function() F.interpolate(x, { size = 5, mode = 'bilinear', align_corners = 1 }) end)
    fails_here('lumen.affine_grid: align_corners must be a boolean, got string', function() F.affine_grid(lumen.randn(1, 2, 3), { 1, 1, 2, 2 }, { align_corners = 'no' }) end)
    fails_here("lumen.Upsample: unknown option 'sizes' (expected align_corners, mode, recompute_scale_factor, scale_factor, size)", function() nn.Upsample({ sizes = 2 }) end)
  end)

  it('rnn', function()
    fails_here("lumen.LSTM: unknown option 'nonlinearity' (expected batch_first, bias, bidirectional, dropout, num_layers)", function() nn.LSTM(4, 3, { nonlinearity = 'tanh' }) end)
    fails_here("lumen.GRUCell: unknown option 'nonlinearity' (expected bias)", function() nn.GRUCell(4, 3, { nonlinearity = 'tanh' }) end)
  end)

  it('lr_scheduler', function()
    local opt = optim.SGD({ lumen.zeros(2):requires_grad_() }, { lr = 0.1 })
    local sched = optim.lr_scheduler
    fails_here("lumen.optim.lr_scheduler.WarmupCosine: unknown option 'warmup' (expected min_lr, total_steps, warmup_start_lr, warmup_steps)", function() sched.WarmupCosine(opt, { warmup = 10 }) end)
    fails_here('lumen.optim.lr_scheduler.StepLR: gamma must be a number, got x', function() sched.StepLR(opt, 2, 'x') end)
    fails_here('lumen.optim.lr_scheduler.ReduceLROnPlateau: eps must be a number, got x', function() sched.ReduceLROnPlateau(opt, { eps = 'x' }) end)
  end)
end)
