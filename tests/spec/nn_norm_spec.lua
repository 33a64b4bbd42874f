-- Batch, group, instance and layer norm against PyTorch: outputs, input and
-- parameter gradients, running statistics, modules, finite differences and
-- error messages.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'
local gradcase = require 'helpers.gradcase'
local F = nn.F

local grad_of = gradcase.grad_of

local tol = {
  f32 = { rtol = 1e-5, atol = 2e-5 },
  f64 = { rtol = 1e-10, atol = 1e-11 },
}
local gtol = { -- gradients sum over many elements
  f32 = { rtol = 1e-4, atol = 1e-4 },
  f64 = { rtol = 1e-9, atol = 1e-10 },
}

-- Every parity case of the file goes to the oracle in one batch: each
-- section adds its cases, which are run once, then each section registers
-- its `it`s. A case is { torch expression, fn = returns a list of
-- tensors, dt = dtype, grad = outputs after the first are gradients,
-- tol = a tolerance instead of the dtype's, inputs... }.
local sections, all_cases = {}, {}
local function add_cases(section, cases)
  sections[section] = {}
  for _, c in ipairs(cases) do
    all_cases[#all_cases + 1] = c
    table.insert(sections[section], #all_cases)
  end
end
local ref
local function run_cases(section)
  ref = ref or oracle.run(all_cases)
  for _, i in ipairs(sections[section]) do
    local c = all_cases[i]
    it(c.name or c[1], function()
      assert(not ref[i].error, 'torch raised: ' .. tostring(ref[i].error))
      local got = c.fn()
      assert.are.equal(#ref[i], #got)
      for k = 1, #got do
        local t = c.tol or ((k > 1 and c.grad) and gtol[c.dt] or tol[c.dt])
        check.assert_close(got[k], ref[i][k], t, 'output ' .. k)
      end
    end)
  end
end

local function randn(shape, dt) return lumen.randn(shape, dt) end
local function shape_str(s) return table.concat(s, 'x') end

do
  lumen.manual_seed(1)
  local cases = {}
  for _, dt in ipairs { 'f32', 'f64' } do
    for _, shape in ipairs { { 3, 4, 5, 6 }, { 8, 3 }, { 4, 3, 7 }, { 2, 3, 3, 4, 5 } } do
      local C = shape[2]
      local x, g = randn(shape, dt) * 2 + 0.5, randn(shape, dt)
      local w, b = randn({ C }, dt), randn({ C }, dt)
      local rm, rv = randn({ C }, dt), lumen.rand({ C }, dt) + 0.5
      local tag = dt .. ' ' .. shape_str(shape)
      cases[#cases + 1] = {
        '(lambda m, v: (F.batch_norm(x, m, v, w, b, True, 0.1, 1e-5), m, v))(rm.clone(), rv.clone())',
        name = 'training, running stats updated: ' .. tag, dt = dt,
        fn = function()
          local m, v = rm:clone(), rv:clone()
          local y = F.batch_norm(x, m, v, w, b, true, 0.1, 1e-5)
          return { y, m, v }
        end, x = x, w = w, b = b, rm = rm, rv = rv,
      }
      cases[#cases + 1] = {
        'grad_of(lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.1, 1e-3), [x, w, b], g)',
        name = 'training gradients: ' .. tag, dt = dt, grad = true,
        fn = function()
          return grad_of(function(x_, w_, b_) return F.batch_norm(x_, nil, nil, w_, b_, true, 0.1, 1e-3) end, { x, w, b }, g)
        end, x = x, w = w, b = b, g = g,
      }
      cases[#cases + 1] = {
        'grad_of(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5), [x, w, b], g)',
        name = 'evaluation and its gradients: ' .. tag, dt = dt, grad = true,
        fn = function()
          return grad_of(function(x_, w_, b_) return F.batch_norm(x_, rm, rv, w_, b_, false, 0.1, 1e-5) end, { x, w, b }, g)
        end, x = x, w = w, b = b, g = g, rm = rm, rv = rv,
      }
    end
    -- no affine, and a non-contiguous (channels-last) input
    local base = randn({ 2, 5, 6, 3 }, dt)
    local xt, g = base:permute(0, 3, 1, 2), randn({ 2, 3, 5, 6 }, dt)
    cases[#cases + 1] = {
      'grad_of(lambda x: F.batch_norm(x, None, None, training=True), [x], g)',
      name = 'no affine, channels-last view: ' .. dt, dt = dt, grad = true,
      fn = function() return grad_of(function(x_) return F.batch_norm(x_, nil, nil, nil, nil, true) end, { xt }, g) end,
      x = xt, g = g,
    }
    cases[#cases + 1] = {
      'F.batch_norm(x, None, None, training=True, eps=0.5)',
      name = 'options table: ' .. dt, dt = dt,
      fn = function() return { F.batch_norm(xt, nil, nil, { training = true, eps = 0.5 }) } end, x = xt,
    }
  end
  -- a mean far from zero must not cancel the variance (the f64 reference is
  -- computed in long double: torch's own f64 result is off by 7e-11 here)
  local off = lumen.randn({ 16, 2, 64 }, 'f64') * 0.01 + 1000
  cases[#cases + 1] = {
    '(lambda x: ((x - x.mean((0, 2), keepdims=True)) / np.sqrt(((x - x.mean((0, 2), keepdims=True)) ** 2)'
      .. '.mean((0, 2), keepdims=True) + np.longdouble(1e-5))).astype(np.float64))(x.numpy().astype(np.longdouble))',
    name = 'mean 1000, spread 0.01 (f64)', dt = 'f64', tol = { rtol = 1e-9, atol = 1e-9 },
    fn = function() return { F.batch_norm(off, nil, nil, nil, nil, true) } end, x = off,
  }
  local off32 = off:to('f32')
  cases[#cases + 1] = {
    'F.batch_norm(x.double(), None, None, training=True).float()', name = 'mean 1000, spread 0.01 (f32)', dt = 'f32',
    fn = function() return { F.batch_norm(off32, nil, nil, nil, nil, true) } end, x = off32,
  }
  add_cases('bn', cases)
end

do
  lumen.manual_seed(4)
  local cases = {}
  for _, dt in ipairs { 'f32', 'f64' } do
    local x1, x2, x3 = randn({ 4, 3, 5, 5 }, dt) * 3 + 1, randn({ 4, 3, 5, 5 }, dt), randn({ 2, 3, 5, 5 }, dt)
    local tdt = dt == 'f32' and 'torch.float32' or 'torch.float64'
    cases[#cases + 1] = {
      string.format('(lambda m: (m(x1), m(x2), m.eval()(x3), m.running_mean, m.running_var, m.num_batches_tracked))'
        .. '(torch.nn.BatchNorm2d(3, momentum=0.3).to(%s))', tdt),
      name = 'BatchNorm2d: two training steps then eval: ' .. dt, dt = dt,
      fn = function()
        local m = nn.BatchNorm2d(3, { momentum = 0.3, dtype = dt })
        local a, b = m(x1), m(x2)
        m:eval()
        return { a, b, m(x3), m.running_mean, m.running_var, m.num_batches_tracked }
      end, x1 = x1, x2 = x2, x3 = x3,
    }
    cases[#cases + 1] = {
      string.format('(lambda m: (m(x1), m(x2), m.eval()(x3), m.running_mean, m.running_var))'
        .. '(torch.nn.BatchNorm2d(3, momentum=None).to(%s))', tdt),
      name = 'BatchNorm2d, momentum None (cumulative average): ' .. dt, dt = dt,
      fn = function()
        local m = nn.BatchNorm2d(3, { momentum = false, dtype = dt })
        local a, b = m(x1), m(x2)
        m:eval()
        return { a, b, m(x3), m.running_mean, m.running_var }
      end, x1 = x1, x2 = x2, x3 = x3,
    }
    cases[#cases + 1] = {
      string.format('(lambda m: (m(x1), m.eval()(x3)))(torch.nn.BatchNorm2d(3, track_running_stats=False, affine=False).to(%s))', tdt),
      name = 'BatchNorm2d without running stats uses batch stats in eval: ' .. dt, dt = dt,
      fn = function()
        local m = nn.BatchNorm2d(3, { track_running_stats = false, affine = false, dtype = dt })
        local a = m(x1)
        m:eval()
        return { a, m(x3) }
      end, x1 = x1, x3 = x3,
    }
  end
  local x1d, x3d = randn({ 6, 4 }, 'f32'), randn({ 2, 2, 3, 4, 3 }, 'f32')
  cases[#cases + 1] = {
    '(lambda m: (m(x), m.running_mean, m.running_var))(torch.nn.BatchNorm1d(4))', name = 'BatchNorm1d on N x C', dt = 'f32',
    fn = function()
      local m = nn.BatchNorm1d(4)
      return { m(x1d), m.running_mean, m.running_var }
    end, x = x1d,
  }
  cases[#cases + 1] = {
    '(lambda m: (m(x), m.running_mean, m.running_var))(torch.nn.BatchNorm3d(2))', name = 'BatchNorm3d', dt = 'f32',
    fn = function()
      local m = nn.BatchNorm3d(2)
      return { m(x3d), m.running_mean, m.running_var }
    end, x = x3d,
  }
  add_cases('bn_modules', cases)
end

do
  lumen.manual_seed(5)
  local cases = {}
  for _, dt in ipairs { 'f32', 'f64' } do
    for _, c in ipairs { { { 2, 6, 4, 5 }, 3 }, { { 2, 4, 7 }, 2 }, { { 3, 4, 3, 2, 2 }, 4 }, { { 2, 6, 3 }, 1 }, { { 5, 4 }, 2 } } do
      local shape, G = c[1], c[2]
      local C = shape[2]
      local x, g = randn(shape, dt) * 2 - 1, randn(shape, dt)
      local w, b = randn({ C }, dt), randn({ C }, dt)
      cases[#cases + 1] = {
        string.format('grad_of(lambda x, w, b: F.group_norm(x, %d, w, b, 1e-4), [x, w, b], g)', G),
        name = string.format('group_norm %s %s, %d groups', dt, shape_str(shape), G), dt = dt, grad = true,
        fn = function()
          return grad_of(function(x_, w_, b_) return F.group_norm(x_, G, w_, b_, 1e-4) end, { x, w, b }, g)
        end, x = x, w = w, b = b, g = g,
      }
    end
    -- non-contiguous, no affine
    local base = randn({ 5, 4, 6 }, dt)
    local xt, g = base:permute(2, 1, 0), randn({ 6, 4, 5 }, dt)
    cases[#cases + 1] = {
      'grad_of(lambda x: F.group_norm(x, 2), [x], g)', name = 'group_norm non-contiguous, no affine: ' .. dt,
      dt = dt, grad = true,
      fn = function() return grad_of(function(x_) return F.group_norm(x_, 2) end, { xt }, g) end, x = xt, g = g,
    }
    -- instance norm
    local xi, gi = randn({ 2, 3, 4, 5 }, dt), randn({ 2, 3, 4, 5 }, dt)
    local wi, bi = randn({ 3 }, dt), randn({ 3 }, dt)
    cases[#cases + 1] = {
      'grad_of(lambda x, w, b: F.instance_norm(x, weight=w, bias=b, eps=1e-3), [x, w, b], g)',
      name = 'instance_norm with affine: ' .. dt, dt = dt, grad = true,
      fn = function()
        return grad_of(function(x_, w_, b_) return F.instance_norm(x_, { weight = w_, bias = b_, eps = 1e-3 }) end, { xi, wi, bi }, gi)
      end, x = xi, w = wi, b = bi, g = gi,
    }
    cases[#cases + 1] = {
      '(torch.nn.InstanceNorm1d(3)(x[0]), torch.nn.InstanceNorm2d(3, affine=True).to(x.dtype)(x))',
      name = 'InstanceNorm modules, unbatched too: ' .. dt, dt = dt,
      fn = function()
        local m = nn.InstanceNorm2d(3, { affine = true, dtype = dt })
        return { nn.InstanceNorm1d(3)(xi:select(0, 0)), m(xi) }
      end, x = xi,
    }
    -- layer norm
    -- the last one has rows too long to stay in cache (another code path)
    for _, c in ipairs { { { 2, 3, 4, 5 }, { 4, 5 } }, { { 6, 7 }, { 7 } }, { { 3, 300 }, { 300 } }, { { 2, 3, 2 }, { 2, 3, 2 } },
      { { 2, 3, 80, 80 }, { 3, 80, 80 } } } do
      local shape, ns = c[1], c[2]
      local x, g = randn(shape, dt) + 3, randn(shape, dt)
      local w, b = randn(ns, dt), randn(ns, dt)
      cases[#cases + 1] = {
        string.format('grad_of(lambda x, w, b: F.layer_norm(x, [%s], w, b), [x, w, b], g)', table.concat(ns, ', ')),
        name = string.format('layer_norm %s %s over %s', dt, shape_str(shape), shape_str(ns)), dt = dt, grad = true,
        fn = function()
          return grad_of(function(x_, w_, b_) return F.layer_norm(x_, ns, w_, b_) end, { x, w, b }, g)
        end, x = x, w = w, b = b, g = g,
      }
    end
    local xl = randn({ 4, 6, 3 }, dt)
    local xlt, gl = xl:transpose(0, 2), randn({ 3, 6, 4 }, dt)
    local wl = randn({ 4 }, dt)
    cases[#cases + 1] = {
      'grad_of(lambda x, w: F.layer_norm(x, [4], w, None, 1e-3), [x, w], g)',
      name = 'layer_norm non-contiguous, weight only: ' .. dt, dt = dt, grad = true,
      fn = function() return grad_of(function(x_, w_) return F.layer_norm(x_, 4, w_, nil, 1e-3) end, { xlt, wl }, gl) end,
      x = xlt, w = wl, g = gl,
    }
    cases[#cases + 1] = {
      'grad_of(lambda x: F.layer_norm(x, [6, 4]), [x], g)', name = 'layer_norm without affine: ' .. dt,
      dt = dt, grad = true,
      fn = function() return grad_of(function(x_) return F.layer_norm(x_, { 6, 4 }) end, { xlt }, gl) end, x = xlt, g = gl,
    }
  end
  local xm = randn({ 2, 4, 3, 3 }, 'f32')
  cases[#cases + 1] = {
    '(torch.nn.GroupNorm(2, 4)(x), torch.nn.LayerNorm([3, 3])(x), torch.nn.LayerNorm(3, elementwise_affine=False)(x))',
    name = 'GroupNorm and LayerNorm modules', dt = 'f32',
    fn = function()
      return { nn.GroupNorm(2, 4)(xm), nn.LayerNorm({ 3, 3 })(xm), nn.LayerNorm(3, { elementwise_affine = false })(xm) }
    end, x = xm,
  }
  add_cases('gn_ln', cases)
end

describe('batch_norm', function()
  run_cases('bn')

  it('matches finite differences in training and evaluation (f64)', function()
    lumen.manual_seed(2)
    local x, w, b = lumen.randn({ 3, 2, 2, 2 }, 'f64'), lumen.randn(2, 'f64'), lumen.randn(2, 'f64')
    assert(gradcheck(function(x_, w_, b_) return F.batch_norm(x_, nil, nil, w_, b_, true, 0.1, 1e-5) end, { x, w, b }))
    local rm, rv = lumen.randn(2, 'f64'), lumen.rand(2, 'f64') + 0.5
    assert(gradcheck(function(x_, w_, b_) return F.batch_norm(x_, rm, rv, w_, b_, false) end, { x, w, b }))
    assert(gradcheck(function(x_) return F.batch_norm(x_, nil, nil, nil, nil, true) end, { lumen.randn(5, 3, 'f64') }))
  end)

  it('gives the same results with one thread and two (batch, group, layer norm)', function()
    lumen.manual_seed(3)
    local x, g = lumen.randn(4, 6, 64, 64), lumen.randn(4, 6, 64, 64)
    local w, b = lumen.randn(6), lumen.randn(6)
    local wl, bl = lumen.randn(64), lumen.randn(64)
    local wb, bb = lumen.randn({ 6, 64, 64 }), lumen.randn({ 6, 64, 64 })
    local fns = {
      function(x_, w_, b_) return F.batch_norm(x_, nil, nil, w_, b_, true) end,
      function(x_, w_, b_) return F.group_norm(x_, 3, w_, b_) end,
      function(x_, w_, b_) return F.layer_norm(x_, 64, w_, b_) end,
      function(x_, w_, b_) return F.layer_norm(x_, { 6, 64, 64 }, w_, b_) end, -- long rows
    }
    local params = { { w, b }, { w, b }, { wl, bl }, { wb, bb } }
    local n = lumen.get_num_threads()
    for i, f in ipairs(fns) do
      lumen.set_num_threads(1)
      local r1 = grad_of(f, { x, params[i][1], params[i][2] }, g)
      lumen.set_num_threads(2)
      local r2 = grad_of(f, { x, params[i][1], params[i][2] }, g)
      for k = 1, 4 do check.assert_close(r1[k], r2[k], { rtol = 0, atol = 0 }, 'function ' .. i .. ' output ' .. k) end
    end
    lumen.set_num_threads(n)
  end)
end)

describe('BatchNorm modules', function()
  run_cases('bn_modules')

  it('has torch state_dict names, buffers that are not parameters', function()
    local m = nn.BatchNorm2d(5)
    local sd = m:state_dict()
    for _, k in ipairs { 'weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked' } do
      assert.is_not_nil(sd[k], k)
    end
    assert.are.equal(2, #m:parameters())
    assert.are.equal(3, #m:buffers())
    assert.are.equal('i64', m.num_batches_tracked:dtype())
    assert.is_false(m.running_mean.requires_grad)
    assert.are.equal(0, #nn.BatchNorm2d(5, { affine = false }):parameters())
    assert.is_nil(nn.BatchNorm2d(5, { track_running_stats = false }):state_dict().running_mean)
  end)

  it('trains the affine parameters through backward', function()
    local m = nn.BatchNorm2d(3)
    local x = lumen.randn(2, 3, 4, 4)
    m(x):backward(lumen.randn(2, 3, 4, 4))
    assert.are.same({ 3 }, m.weight.grad:size())
    assert.are.same({ 3 }, m.bias.grad:size())
  end)

  it('refuses inputs of the wrong rank', function()
    assert.has_error(function() nn.BatchNorm2d(3)(lumen.randn(2, 3, 4)) end,
      'lumen.nn.BatchNorm2d: expected 4D input (got 3D input)')
    assert.has_error(function() nn.BatchNorm1d(3)(lumen.randn(2, 3, 4, 4)) end,
      'lumen.nn.BatchNorm1d: expected 2D or 3D input (got 4D input)')
    assert.has_error(function() nn.BatchNorm2d(3, { momentom = 0.1 }) end,
      "lumen.nn.BatchNorm2d: unknown option 'momentom' (expected affine, dtype, eps, momentum, track_running_stats)")
  end)
end)

describe('group_norm, instance_norm, layer_norm', function()
  run_cases('gn_ln')

  it('match finite differences (f64)', function()
    lumen.manual_seed(6)
    local x, w, b = lumen.randn({ 2, 4, 3 }, 'f64'), lumen.randn(4, 'f64'), lumen.randn(4, 'f64')
    assert(gradcheck(function(x_, w_, b_) return F.group_norm(x_, 2, w_, b_) end, { x, w, b }))
    assert(gradcheck(function(x_, w_, b_) return F.instance_norm(x_, { weight = w_, bias = b_ }) end, { x, w, b }))
    local wl, bl = lumen.randn({ 4, 3 }, 'f64'), lumen.randn({ 4, 3 }, 'f64')
    assert(gradcheck(function(x_, w_, b_) return F.layer_norm(x_, { 4, 3 }, w_, b_) end, { x, wl, bl }))
    assert(gradcheck(function(x_) return F.layer_norm(x_, 2) end, { x:transpose(0, 2) }))
  end)

  it('have torch parameter names and defaults', function()
    local gn = nn.GroupNorm(2, 6)
    assert.are.same({ 6 }, gn.weight:size())
    assert.are.equal(1, gn.weight:sum():item() / 6)
    local ln = nn.LayerNorm({ 4, 5 })
    assert.are.same({ 4, 5 }, ln.bias:size())
    assert.are.equal(0, #nn.InstanceNorm2d(3):parameters())
    assert.are.equal(2, #nn.InstanceNorm2d(3, { affine = true }):parameters())
  end)
end)

describe('norm errors', function()
  local x = lumen.randn(2, 3, 4)
  it('name the function and what was expected', function()
    assert.has_error(function() F.batch_norm(x:int(), nil, nil, nil, nil, true) end,
      'lumen.batch_norm: input dtype i32, expected f32 or f64')
    assert.has_error(function() F.batch_norm(lumen.randn(3), nil, nil, nil, nil, true) end,
      'lumen.batch_norm: input is 1-D (3), expected N x C x * (at least 2-D)')
    assert.has_error(function() F.batch_norm(x, nil, nil, lumen.ones(4), nil, true) end,
      'lumen.batch_norm: weight has shape 4, expected 3')
    assert.has_error(function() F.batch_norm(x, nil, nil, lumen.ones(3, 'f64'), nil, true) end,
      'lumen.batch_norm: weight has dtype f64, expected f32 (the input\'s)')
    assert.has_error(function() F.batch_norm(x, nil, nil) end,
      'lumen.batch_norm: running_mean and running_var are needed in evaluation mode (training = false)')
    assert.has_error(function() F.batch_norm(lumen.randn(1, 3), nil, nil, nil, nil, true) end,
      'lumen.batch_norm: input 1x3 has 1 value(s) per channel, expected more than 1 when training')
    assert.has_error(function() F.batch_norm(x, 'mean', nil, nil, nil, true) end,
      'lumen.batch_norm: running_mean must be a tensor or nil, got string')
    assert.has_error(function() F.batch_norm(x, lumen.zeros(1):expand(3), lumen.ones(3), nil, nil, true) end,
      'lumen.batch_norm: the destination of shape 3 is an expanded view (stride 0 in dimension 0), expected memory of its own (clone it first)')
    assert.has_error(function() F.group_norm(x, 2) end,
      'lumen.group_norm: 2 groups for 3 channels (input 2x3x4), expected a positive divisor of the channels')
    assert.has_error(function() F.group_norm(x, 1.5) end, 'lumen.group_norm: groups must be an integer, got 1.5')
    assert.has_error(function() F.layer_norm(x, { 3 }) end,
      'lumen.layer_norm: input 2x3x4 does not end with normalized_shape 3')
    assert.has_error(function() F.layer_norm(x, 4, lumen.ones(3)) end, 'lumen.layer_norm: weight has shape 3, expected 4')
    assert.has_error(function() F.layer_norm(x, {}) end,
      'lumen.layer_norm: normalized_shape must be a number or a table of 1 to 8 sizes, got a table of 0 sizes')
    assert.has_error(function() F.instance_norm(lumen.randn(2, 3, 1)) end,
      'lumen.instance_norm: input 2x3x1 has 1 spatial element(s), expected more than 1')
    assert.has_error(function() F.instance_norm(x, { momentum = 0.1 }) end,
      "lumen.instance_norm: unknown option 'momentum' (expected bias, eps, weight)")
    assert.has_error(function() F.instance_norm(x:int()) end, 'lumen.instance_norm: input dtype i32, expected f32 or f64')
    assert.has_error(function() nn.GroupNorm(4, 6) end,
      'lumen.nn.GroupNorm: num_channels (6) must be divisible by num_groups (4)')
    assert.has_error(function() nn.InstanceNorm2d(3, { track_running_stats = true }) end,
      'lumen.nn.InstanceNorm2d: track_running_stats = true is not supported (instance norm uses the input statistics)')
  end)

  it('refuses running statistics that require grad', function()
    local rm = lumen.zeros(3):requires_grad_()
    assert.has_error(function() F.batch_norm(x, rm, lumen.ones(3), nil, nil, true) end,
      'lumen.batch_norm: running_mean requires grad, expected a buffer (running statistics are updated in place)')
  end)
end)
