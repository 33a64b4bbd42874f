-- Activations and softmax against PyTorch: outputs and gradients (f32,
-- f64, strided inputs, the points where the pieces meet), modules, finite
-- differences and error messages.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'
local gradcase = require 'helpers.gradcase'
local F = nn.F

local grad_of = gradcase.grad_of

local tol = { f32 = { rtol = 2e-6, atol = 1e-6 }, f64 = { rtol = 1e-12, atol = 1e-13 } }
local gtol = { f32 = { rtol = 1e-5, atol = 1e-5 }, f64 = { rtol = 1e-11, atol = 1e-12 } }

-- Inputs with exact zeros and a spread of magnitudes.
local function input(shape, dt)
  local x = lumen.randn(shape, dt) * 2
  local flat = x:reshape(-1)
  for i = 0, x:numel() - 1, 7 do flat[i] = 0 end
  return x
end

-- Layouts of a 4x3x5 tensor: python expression and the lumen view.
local layouts = {
  { 'x', function(x) return x end },
  { 'x.transpose(0, 2)', function(x) return x:transpose(0, 2) end },
  { 'x[:, ::2]', function(x) return x:slice(1, 0, 3, 2) end },
}

local cases = {}
local function case(c) cases[#cases + 1] = c end

lumen.manual_seed(11)
local pointwise = {
  { 'F.leaky_relu(x)', function(x) return F.leaky_relu(x) end },
  { 'F.leaky_relu(x, 0.2)', function(x) return F.leaky_relu(x, 0.2) end },
  { 'F.leaky_relu(x, -0.5)', function(x) return F.leaky_relu(x, { negative_slope = -0.5 }) end },
  { 'F.elu(x)', function(x) return F.elu(x) end },
  { 'F.elu(x, 0.3)', function(x) return F.elu(x, 0.3) end },
  { 'F.gelu(x)', function(x) return F.gelu(x) end },
  { "F.gelu(x, approximate='tanh')", function(x) return F.gelu(x, { approximate = 'tanh' }) end },
  { 'F.softmax(x, 1)', function(x) return F.softmax(x, 1) end },
  { 'F.softmax(x, -1)', function(x) return F.softmax(x, -1) end },
  { 'F.softmax(x, 0)', function(x) return F.softmax(x, 0) end },
  { 'F.log_softmax(x, 1)', function(x) return F.log_softmax(x, 1) end },
  { 'F.log_softmax(x, 2)', function(x) return F.log_softmax(x, 2) end },
  { 'F.log_softmax(x, 0)', function(x) return F.log_softmax(x, 0) end },
}
for _, dt in ipairs { 'f32', 'f64' } do
  local x0 = input({ 4, 3, 5 }, dt)
  for _, op in ipairs(pointwise) do
    for _, l in ipairs(layouts) do
      local x = l[2](x0)
      local g = lumen.randn(x:size(), dt)
      case {
        string.format('grad_of(lambda x: %s, [%s], g)', op[1], l[1]:gsub('^x', 'x0')),
        name = op[1] .. ' of ' .. l[1] .. ' ' .. dt, dt = dt, grad = true,
        fn = function() return grad_of(op[2], { x }, g) end, x0 = x0, g = g,
      }
    end
  end
  -- prelu: one weight per channel, one for all, 1-D and 2-D inputs
  local xp, gp = input({ 2, 3, 4, 2 }, dt), lumen.randn({ 2, 3, 4, 2 }, dt)
  for _, w in ipairs { lumen.randn(3, dt), lumen.randn(1, dt) } do
    case {
      'grad_of(lambda x, w: F.prelu(x, w), [x, w], g)', name = 'prelu, ' .. w:numel() .. ' weight(s) ' .. dt,
      dt = dt, grad = true, fn = function() return grad_of(F.prelu, { xp, w }, gp) end, x = xp, w = w, g = gp,
    }
  end
  local xt, gt = xp:permute(0, 3, 1, 2), lumen.randn({ 2, 2, 3, 4 }, dt)
  local w2 = lumen.randn(2, dt)
  case {
    'grad_of(lambda x, w: F.prelu(x, w), [x.permute(0, 3, 1, 2), w], g)', name = 'prelu of a permuted view ' .. dt,
    dt = dt, grad = true, fn = function() return grad_of(F.prelu, { xt, w2 }, gt) end, x = xp, w = w2, g = gt,
  }
  local x1, g1, w1 = input({ 6 }, dt), lumen.randn({ 6 }, dt), lumen.randn(1, dt)
  case {
    'grad_of(lambda x, w: F.prelu(x, w), [x, w], g)', name = 'prelu of a 1-D input ' .. dt,
    dt = dt, grad = true, fn = function() return grad_of(F.prelu, { x1, w1 }, g1) end, x = x1, w = w1, g = g1,
  }
  local x2, g2, w3 = input({ 5, 4 }, dt), lumen.randn({ 5, 4 }, dt), lumen.randn(4, dt)
  case {
    'grad_of(lambda x, w: F.prelu(x, w), [x, w], g)', name = 'prelu of N x C ' .. dt,
    dt = dt, grad = true, fn = function() return grad_of(F.prelu, { x2, w3 }, g2) end, x = x2, w = w3, g = g2,
  }
  -- softmax: large and infinite values, long rows and wide columns
  local big = lumen.randn({ 3, 70 }, dt) * 300
  big[{ 1, 5 }] = -1 / 0
  local gb = lumen.randn({ 3, 70 }, dt)
  for _, fn in ipairs { 'softmax', 'log_softmax' } do
    for _, d in ipairs { 0, 1 } do
      case {
        string.format('grad_of(lambda x: F.%s(x, %d), [x], g)', fn, d), name = fn .. ' of large values, dim ' .. d .. ' ' .. dt,
        dt = dt, grad = true, fn = function() return grad_of(function(x) return F[fn](x, d) end, { big }, gb) end,
        x = big, g = gb,
      }
    end
  end
  local wide, gw = lumen.randn({ 2, 3, 150 }, dt), lumen.randn({ 2, 3, 150 }, dt)
  case {
    'grad_of(lambda x: F.softmax(x, 1), [x], g)', name = 'softmax over dim 1 with 150 columns ' .. dt,
    dt = dt, grad = true, fn = function() return grad_of(function(x) return F.softmax(x, 1) end, { wide }, gw) end,
    x = wide, g = gw,
  }
  local s0 = lumen.tensor({ 2.5 }, dt):reshape({})
  case {
    '(F.softmax(x, 0), F.log_softmax(x, -1))', name = 'softmax of a scalar ' .. dt, dt = dt,
    fn = function() return { F.softmax(s0, 0), F.log_softmax(s0, -1) } end, x = s0,
  }
  -- relu, sigmoid, tanh come from lumen's unary ops
  local gr = lumen.randn(x0:size(), dt)
  for _, fn in ipairs { 'relu', 'sigmoid', 'tanh' } do
    case {
      string.format('grad_of(lambda x: torch.%s(x), [x], g)', fn), name = fn .. ' ' .. dt, dt = dt, grad = true,
      fn = function() return grad_of(F[fn], { x0 }, gr) end, x = x0, g = gr,
    }
  end
end

-- modules
local xm = input({ 2, 3, 4 }, 'f32')
case {
  '(torch.nn.ReLU()(x), torch.nn.LeakyReLU(0.1)(x), torch.nn.ELU(0.7)(x), torch.nn.GELU()(x), '
    .. "torch.nn.GELU('tanh')(x), torch.nn.Sigmoid()(x), torch.nn.Tanh()(x), torch.nn.Softmax(1)(x), "
    .. 'torch.nn.LogSoftmax(-1)(x), torch.nn.PReLU()(x), torch.nn.PReLU(3, 0.1)(x))',
  name = 'modules', dt = 'f32',
  fn = function()
    return { nn.ReLU()(xm), nn.LeakyReLU(0.1)(xm), nn.ELU(0.7)(xm), nn.GELU()(xm), nn.GELU('tanh')(xm), nn.Sigmoid()(xm),
      nn.Tanh()(xm), nn.Softmax(1)(xm), nn.LogSoftmax(-1)(xm), nn.PReLU()(xm), nn.PReLU(3, 0.1)(xm) }
  end, x = xm,
}

local ref = oracle.run(cases)

describe('activations against PyTorch', function()
  for i, c in ipairs(cases) do
    it(c.name, function()
      assert(not ref[i].error, 'torch raised: ' .. tostring(ref[i].error))
      local got = c.fn()
      assert.are.equal(#ref[i], #got)
      for k = 1, #got do check.assert_close(got[k], ref[i][k], (k > 1 and c.grad) and gtol[c.dt] or tol[c.dt], 'output ' .. k) end
    end)
  end
end)

describe('activations', function()
  it('match finite differences (f64)', function()
    lumen.manual_seed(12)
    local x = lumen.randn({ 3, 4, 2 }, 'f64')
    for _, f in ipairs {
      function(t) return F.leaky_relu(t, 0.3) end,
      function(t) return F.elu(t, 0.8) end,
      function(t) return F.gelu(t) end,
      function(t) return F.gelu(t, 'tanh') end,
      function(t) return F.softmax(t, 1) end,
      function(t) return F.log_softmax(t, 0) end,
      function(t) return F.softmax(t:transpose(0, 2), -1) end,
    } do
      assert(gradcheck(f, { x }))
    end
    assert(gradcheck(F.prelu, { x, lumen.randn(4, 'f64') }))
    assert(gradcheck(F.prelu, { x, lumen.randn(1, 'f64') }))
  end)

  it('train the PReLU weight', function()
    local m = nn.PReLU(3)
    assert.are.equal('weight', m:named_parameters()[1][1])
    m(lumen.randn(2, 3, 4)):backward(lumen.randn(2, 3, 4))
    assert.are.same({ 3 }, m.weight.grad:size())
  end)

  it('write into the input with inplace = true, when autograd need not track it', function()
    local x = lumen.tensor({ -2, -1, 0, 3 })
    local y = F.leaky_relu(x, 0.5, true)
    assert.are.equal(x, y)
    assert.are.same({ -1, -0.5, 0, 3 }, x:totable())
    nn.ELU(1, { inplace = true })(x)
    assert.are.same(0, x:totable()[3])
    F.relu(x, true)
    assert.are.same({ 0, 0, 0, 3 }, x:totable())
    local r = lumen.randn(3):requires_grad_()
    assert.has_error(function() F.leaky_relu(r, 0.1, true) end,
      'lumen.leaky_relu: inplace = true cannot be tracked by autograd (the input requires grad), expected inplace = false')
  end)

  it('name the function and what was expected on bad input', function()
    local x = lumen.randn(2, 3)
    assert.has_error(function() F.leaky_relu(x:int()) end, 'lumen.leaky_relu: input dtype i32, expected f32 or f64')
    assert.has_error(function() F.elu(x, 'a') end, 'lumen.elu: alpha must be a number, got a')
    assert.has_error(function() F.gelu(x, 'fast') end, "lumen.gelu: approximate must be 'none' or 'tanh', got fast")
    assert.has_error(function() F.gelu(x, { approx = 'tanh' }) end, "lumen.gelu: unknown option 'approx' (expected approximate)")
    assert.has_error(function() F.gelu(nil) end, 'lumen.gelu: input must be a tensor, got nil')
    assert.has_error(function() F.prelu(x, lumen.ones(2)) end,
      'lumen.prelu: weight of shape 2 for input 2x3, expected 1 or 3 (channels, dim 1) values in 1-D')
    assert.has_error(function() F.prelu(x, lumen.ones(3, 'f64')) end,
      "lumen.prelu: weight has dtype f64, expected f32 (the input's)")
    assert.has_error(function() F.softmax(x, 2) end, 'lumen.softmax: dim 2 is out of range for input 2x3 (2-D)')
    assert.has_error(function() F.log_softmax(x) end, 'lumen.log_softmax: dim must be given')
    assert.has_error(function() F.softmax(x:int(), 0) end, 'lumen.softmax: input dtype i32, expected f32 or f64')
    assert.has_error(function() nn.Softmax() end, 'lumen.nn.Softmax: dim must be given')
    assert.has_error(function() nn.GELU('fast') end, "lumen.nn.GELU: approximate must be 'none' or 'tanh', got fast")
    assert.has_error(function() nn.ReLU({ in_place = true }) end, "lumen.nn.ReLU: unknown option 'in_place' (expected inplace)")
  end)
end)
