-- Convolutions against PyTorch: forward, grad of input, weight and bias for
-- 1-D, 2-D and 3-D, strides, paddings ('same' with even kernels), dilation,
-- groups (depthwise too), transposed with output_padding, 1x1 kernels (no
-- im2col), several im2col tiles, non-contiguous and unbatched inputs, f32
-- and f64; finite differences in f64; the modules; bad arguments.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'
local F = nn.F

-- Deterministic values in [-1, 1] computed in Lua.
local mk = check.sine

local TOL = { f32 = { rtol = 1e-4, atol = 1e-4 }, f64 = { rtol = 1e-10, atol = 1e-10 } }

describe('nn conv', function()
  local cases = {}
  -- One parity case: fn(x, w, b) in lumen, expr(x, w, b) in torch. x, w, b
  -- are leaves here (b may be nil); view(t) may turn x into a view first.
  local function case(name, fn, expr, xs, ws, bias, dtype, view)
    dtype = dtype or 'f32'
    local seed = #cases * 3
    local x, w = mk(xs, dtype, seed + 1), mk(ws, dtype, seed + 2)
    if view then x = view(x) end
    local b = bias and mk({ bias }, dtype, seed + 3) or nil
    x:requires_grad_()
    w:requires_grad_()
    if b then b:requires_grad_() end
    local y = fn(x, w, b)
    local g = mk(y:size(), dtype, seed + 4)
    y:backward(g)
    local got = { y, x.grad, w.grad, b and b.grad or nil }
    local args = b and 'x, w, b' or 'x, w'
    local call = string.format('grad_of(lambda %s: %s, [%s], g)', args, expr:gsub('B', b and 'b' or 'None'), args)
    cases[#cases + 1] = { name = name, got = got, dtype = dtype, query = { call, x = x, w = w, b = b, g = g } }
  end

  -- 1-D
  case('conv1d, padding 1, bias', function(x, w, b) return F.conv1d(x, w, b, { padding = 1 }) end,
    'F.conv1d(x, w, B, padding=1)', { 2, 3, 10 }, { 4, 3, 3 }, 4)
  case('conv1d, stride 2, dilation 2, padding 2', function(x, w) return F.conv1d(x, w, nil, { stride = 2, padding = 2, dilation = 2 }) end,
    'F.conv1d(x, w, B, stride=2, padding=2, dilation=2)', { 2, 3, 11 }, { 5, 3, 3 })
  case("conv1d, 'same', even kernel", function(x, w, b) return F.conv1d(x, w, b, { padding = 'same' }) end,
    "F.conv1d(x, w, B, padding='same')", { 2, 2, 9 }, { 3, 2, 4 }, 3)
  case("conv1d, 'valid', groups 3", function(x, w, b) return F.conv1d(x, w, b, { padding = 'valid', groups = 3 }) end,
    "F.conv1d(x, w, B, padding='valid', groups=3)", { 2, 6, 9 }, { 3, 2, 2 }, 3)
  -- 2-D
  case('conv2d, padding 1, bias', function(x, w, b) return F.conv2d(x, w, b, { padding = 1 }) end,
    'F.conv2d(x, w, B, padding=1)', { 2, 3, 7, 6 }, { 4, 3, 3, 3 }, 4)
  case('conv2d, per-dim stride, padding, dilation', function(x, w) return F.conv2d(x, w, nil, { stride = { 2, 1 }, padding = { 1, 0 }, dilation = { 1, 2 } }) end,
    'F.conv2d(x, w, B, stride=(2, 1), padding=(1, 0), dilation=(1, 2))', { 2, 3, 9, 8 }, { 4, 3, 3, 2 })
  case('conv2d, groups 2', function(x, w, b) return F.conv2d(x, w, b, { groups = 2, padding = 1, stride = 2 }) end,
    'F.conv2d(x, w, B, groups=2, padding=1, stride=2)', { 2, 4, 7, 7 }, { 6, 2, 3, 3 }, 6)
  case('conv2d, depthwise (groups = channels, multiplier 2)', function(x, w, b) return F.conv2d(x, w, b, { groups = 3, padding = 1 }) end,
    'F.conv2d(x, w, B, groups=3, padding=1)', { 2, 3, 6, 5 }, { 6, 1, 3, 3 }, 6)
  case("conv2d, 'same', even kernel, dilation", function(x, w, b) return F.conv2d(x, w, b, { padding = 'same', dilation = { 2, 1 } }) end,
    "F.conv2d(x, w, B, padding='same', dilation=(2, 1))", { 2, 2, 8, 7 }, { 3, 2, 2, 4 }, 3)
  case('conv2d, 1 to 8 channels (grad input by col2im)', function(x, w, b) return F.conv2d(x, w, b, { padding = 1 }) end,
    'F.conv2d(x, w, B, padding=1)', { 2, 1, 6, 7 }, { 8, 1, 3, 3 }, 8)
  case('conv2d, padding wider than the kernel', function(x, w, b) return F.conv2d(x, w, b, { padding = { 2, 3 } }) end,
    'F.conv2d(x, w, B, padding=(2, 3))', { 2, 3, 4, 5 }, { 2, 3, 2, 2 }, 2)
  case('conv2d, 1x1 (no im2col)', function(x, w, b) return F.conv2d(x, w, b) end,
    'F.conv2d(x, w, B)', { 3, 5, 4, 6 }, { 7, 5, 1, 1 }, 7)
  case('conv2d, 1x1 with groups', function(x, w, b) return F.conv2d(x, w, b, { groups = 2 }) end,
    'F.conv2d(x, w, B, groups=2)', { 2, 4, 3, 5 }, { 6, 2, 1, 1 }, 6)
  case('conv2d, 1x1 stride 2 padding 1', function(x, w, b) return F.conv2d(x, w, b, { stride = 2, padding = 1 }) end,
    'F.conv2d(x, w, B, stride=2, padding=1)', { 2, 3, 5, 6 }, { 4, 3, 1, 1 }, 4)
  case('conv2d, non-contiguous input', function(x, w, b) return F.conv2d(x, w, b, { padding = 1 }) end,
    'F.conv2d(x, w, B, padding=1)', { 2, 3, 6, 7 }, { 4, 3, 3, 3 }, 4, 'f32',
    function(t) return t:transpose(2, 3) end)
  case('conv2d, stepped input view', function(x, w) return F.conv2d(x, w, nil, { stride = 2 }) end,
    'F.conv2d(x, w, B, stride=2)', { 2, 6, 8, 9 }, { 4, 3, 3, 3 }, nil, 'f32',
    function(t) return t[{ {}, { 0, nil, 2 }, {}, { 1, nil } }] end)
  case('conv2d, unbatched input', function(x, w, b) return F.conv2d(x, w, b, { padding = 1 }) end,
    'F.conv2d(x, w, B, padding=1)', { 3, 5, 6 }, { 2, 3, 3, 3 }, 2)
  case('conv2d, kernel as large as the input', function(x, w, b) return F.conv2d(x, w, b) end,
    'F.conv2d(x, w, B)', { 2, 2, 3, 4 }, { 3, 2, 3, 4 }, 3)
  case('conv2d, several im2col tiles and partial sums', function(x, w, b) return F.conv2d(x, w, b, { padding = 1 }) end,
    'F.conv2d(x, w, B, padding=1)', { 3, 16, 64, 64 }, { 4, 16, 3, 3 }, 4)
  case('conv2d, f64, stride 2, groups 2', function(x, w, b) return F.conv2d(x, w, b, { stride = 2, padding = { 2, 1 }, groups = 2 }) end,
    'F.conv2d(x, w, B, stride=2, padding=(2, 1), groups=2)', { 2, 4, 7, 6 }, { 4, 2, 3, 3 }, 4, 'f64')
  -- 3-D
  case('conv3d, padding 1, stride (1, 2, 1)', function(x, w, b) return F.conv3d(x, w, b, { padding = 1, stride = { 1, 2, 1 } }) end,
    'F.conv3d(x, w, B, padding=1, stride=(1, 2, 1))', { 2, 2, 5, 6, 7 }, { 3, 2, 3, 3, 3 }, 3)
  case("conv3d, 'valid', groups 2, dilation 2", function(x, w) return F.conv3d(x, w, nil, { padding = 'valid', groups = 2, dilation = { 2, 1, 2 } }) end,
    "F.conv3d(x, w, B, padding='valid', groups=2, dilation=(2, 1, 2))", { 2, 4, 7, 5, 6 }, { 2, 2, 2, 3, 2 })
  case("conv3d, 'same', even kernel, f64", function(x, w, b) return F.conv3d(x, w, b, { padding = 'same' }) end,
    "F.conv3d(x, w, B, padding='same')", { 1, 2, 5, 4, 6 }, { 3, 2, 2, 3, 4 }, 3, 'f64')
  case('conv3d, 1x1x1 (no im2col)', function(x, w, b) return F.conv3d(x, w, b) end,
    'F.conv3d(x, w, B)', { 2, 5, 3, 4, 3 }, { 6, 5, 1, 1, 1 }, 6)
  -- transposed
  case('conv_transpose1d, stride 2, padding 1, output_padding 1', function(x, w, b) return F.conv_transpose1d(x, w, b, { stride = 2, padding = 1, output_padding = 1 }) end,
    'F.conv_transpose1d(x, w, B, stride=2, padding=1, output_padding=1)', { 2, 3, 6 }, { 3, 4, 3 }, 4)
  case('conv_transpose2d, kernel 2 stride 2', function(x, w, b) return F.conv_transpose2d(x, w, b, { stride = 2 }) end,
    'F.conv_transpose2d(x, w, B, stride=2)', { 2, 6, 4, 5 }, { 6, 3, 2, 2 }, 3)
  case('conv_transpose2d, groups 2, stride 3, dilation 2, output_padding 2', function(x, w, b) return F.conv_transpose2d(x, w, b, { groups = 2, stride = 3, dilation = 2, padding = 1, output_padding = 2 }) end,
    'F.conv_transpose2d(x, w, B, groups=2, stride=3, dilation=2, padding=1, output_padding=2)', { 2, 4, 3, 4 }, { 4, 3, 3, 2 }, 6)
  case('conv_transpose2d, output_padding below the dilation', function(x, w) return F.conv_transpose2d(x, w, nil, { dilation = 2, output_padding = 1 }) end,
    'F.conv_transpose2d(x, w, B, dilation=2, output_padding=1)', { 2, 2, 4, 3 }, { 2, 3, 3, 3 })
  case('conv_transpose2d, stride 1, 6 to 2 channels (col2im)', function(x, w, b) return F.conv_transpose2d(x, w, b, { padding = 1 }) end,
    'F.conv_transpose2d(x, w, B, padding=1)', { 2, 6, 4, 5 }, { 6, 2, 3, 3 }, 2)
  case('conv_transpose2d, stride 1, 2 to 3 channels (as a convolution)', function(x, w, b) return F.conv_transpose2d(x, w, b, { padding = { 0, 1 } }) end,
    'F.conv_transpose2d(x, w, B, padding=(0, 1))', { 2, 2, 4, 5 }, { 2, 3, 3, 2 }, 3)
  case('conv_transpose2d, 1x1 (no col2im)', function(x, w, b) return F.conv_transpose2d(x, w, b) end,
    'F.conv_transpose2d(x, w, B)', { 2, 5, 3, 4 }, { 5, 3, 1, 1 }, 3)
  case('conv_transpose2d, unbatched, non-contiguous, f64', function(x, w, b) return F.conv_transpose2d(x, w, b, { stride = 2, padding = 1, output_padding = 1 }) end,
    'F.conv_transpose2d(x, w, B, stride=2, padding=1, output_padding=1)', { 3, 5, 4 }, { 3, 2, 3, 3 }, 2, 'f64',
    function(t) return t:transpose(1, 2) end)
  case('conv_transpose3d, stride 2, padding 1, output_padding 1', function(x, w, b) return F.conv_transpose3d(x, w, b, { stride = 2, padding = 1, output_padding = { 1, 0, 1 } }) end,
    'F.conv_transpose3d(x, w, B, stride=2, padding=1, output_padding=(1, 0, 1))', { 2, 3, 3, 4, 3 }, { 3, 2, 3, 3, 3 }, 2)

  local results = oracle.run((function()
    local q = {}
    for i, c in ipairs(cases) do q[i] = c.query end
    return q
  end)())

  for i, c in ipairs(cases) do
    it(c.name, function()
      local r = results[i]
      assert(not r.error, r.error)
      local what = { 'output', 'grad input', 'grad weight', 'grad bias' }
      for k = 1, 4 do
        if c.got[k] then check.assert_close(c.got[k], r[k], TOL[c.dtype], what[k]) end
      end
    end)
  end

  it('gives the same bits with 1 and 2 threads', function()
    local x, w, b = mk({ 5, 4, 12, 12 }, 'f32', 1), mk({ 6, 4, 3, 3 }, 'f32', 2), mk({ 6 }, 'f32', 3)
    local function run()
      local xl, wl, bl = x:clone():requires_grad_(), w:clone():requires_grad_(), b:clone():requires_grad_()
      local y = F.conv2d(xl, wl, bl, { padding = 1 })
      y:backward(mk(y:size(), 'f32', 4))
      return { y, xl.grad, wl.grad, bl.grad }
    end
    local n = lumen.get_num_threads()
    lumen.set_num_threads(1)
    local one = run()
    lumen.set_num_threads(2)
    local two = run()
    lumen.set_num_threads(n)
    for k = 1, 4 do check.assert_close(one[k], two[k], { rtol = 0, atol = 0 }) end
  end)

  it('computes only the gradients asked for', function()
    local function grads(xg, wg, bg)
      local x, w, b = mk({ 2, 3, 6, 6 }, 'f32', 1), mk({ 4, 3, 3, 3 }, 'f32', 2), mk({ 4 }, 'f32', 3)
      if xg then x:requires_grad_() end
      if wg then w:requires_grad_() end
      if bg then b:requires_grad_() end
      F.conv2d(x, w, b, { padding = 1, stride = 2 }):backward(mk({ 2, 4, 3, 3 }, 'f32', 4))
      return { x.grad, w.grad, b.grad }
    end
    local all = grads(true, true, true)
    for k = 1, 3 do
      local one = grads(k == 1, k == 2, k == 3)
      for j = 1, 3 do
        if j == k then check.assert_close(one[j], all[j], { rtol = 0, atol = 0 }) else assert.is_nil(one[j]) end
      end
    end
  end)

  it('takes an empty batch', function()
    local x, w, b = lumen.zeros(0, 3, 5, 5):requires_grad_(), mk({ 4, 3, 3, 3 }):requires_grad_(), mk({ 4 }):requires_grad_()
    local y = F.conv2d(x, w, b, { padding = 1 })
    assert.are.same({ 0, 4, 5, 5 }, y:size())
    y:backward(lumen.zeros(0, 4, 5, 5))
    assert.are.same({ 0, 3, 5, 5 }, x.grad:size())
    check.assert_close(w.grad, lumen.zeros(4, 3, 3, 3), { rtol = 0, atol = 0 })
    check.assert_close(b.grad, lumen.zeros(4), { rtol = 0, atol = 0 })
    assert.are.same({ 0, 2, 6, 6 }, F.conv_transpose2d(lumen.zeros(0, 4, 3, 3), mk({ 4, 2, 2, 2 }), nil, { stride = 2 }):size())
  end)

  it('agrees with finite differences (f64)', function()
    local function f64(shape, seed) return mk(shape, 'f64', seed) end
    assert(gradcheck(function(x, w, b) return F.conv1d(x, w, b, { stride = 2, padding = 1, dilation = 2, groups = 2 }) end,
      { f64({ 2, 4, 7 }, 1), f64({ 4, 2, 2 }, 2), f64({ 4 }, 3) }))
    assert(gradcheck(function(x, w, b) return F.conv2d(x, w, b, { padding = 'same' }) end,
      { f64({ 1, 2, 4, 5 }, 4), f64({ 2, 2, 2, 3 }, 5), f64({ 2 }, 6) }))
    assert(gradcheck(function(x, w) return F.conv3d(x, w, nil, { stride = { 1, 2, 1 }, padding = 1 }) end,
      { f64({ 1, 2, 3, 4, 3 }, 7), f64({ 2, 2, 2, 2, 2 }, 8) }))
    assert(gradcheck(function(x, w, b) return F.conv_transpose2d(x, w, b, { stride = 2, padding = 1, output_padding = 1, groups = 2 }) end,
      { f64({ 1, 4, 3, 2 }, 9), f64({ 4, 1, 3, 2 }, 10), f64({ 2 }, 11) }))
    assert(gradcheck(function(x, w, b) return F.conv_transpose1d(x, w, b, { padding = 1, dilation = 2 }) end,
      { f64({ 2, 2, 5 }, 12), f64({ 2, 3, 3 }, 13), f64({ 3 }, 14) }))
  end)

  it('builds modules with torch shapes, initialization and names', function()
    local m = nn.Conv2d(4, 6, 3, { padding = 1, groups = 2 })
    assert.are.same({ 6, 2, 3, 3 }, m.weight:size())
    assert.are.same({ 6 }, m.bias:size())
    assert.is_true(m.weight.requires_grad)
    -- kaiming_uniform_(a = sqrt(5)) and the bias both give +-1/sqrt(fan_in)
    local bound = 1 / math.sqrt(2 * 9)
    for _, t in ipairs { m.weight, m.bias } do
      local mx = t:abs():max():item()
      assert.is_true(mx <= bound and mx > 0.5 * bound, 'values within +-1/sqrt(fan_in)')
    end
    assert.are.equal('4, 6, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=2', m:extra_repr())
    local x = mk({ 2, 4, 5, 5 }, 'f32', 1)
    check.assert_close(m(x), F.conv2d(x, m.weight, m.bias, { padding = 1, groups = 2 }), { rtol = 0, atol = 0 })

    local t = nn.ConvTranspose3d(4, 2, { 2, 3, 1 }, { stride = 2, output_padding = { 1, 0, 0 }, bias = false })
    assert.are.same({ 4, 2, 2, 3, 1 }, t.weight:size())
    assert.is_nil(t.bias)
    assert.are.equal('4, 2, kernel_size=(2, 3, 1), stride=(2, 2, 2), output_padding=(1, 0, 0), bias=False', t:extra_repr())
    local xt = mk({ 1, 4, 2, 2, 2 }, 'f32', 2)
    assert.are.same({ 1, 2, 5, 5, 3 }, t(xt):size())
    local keys = {}
    for k in pairs(nn.Conv1d(2, 3, 5):state_dict()) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.are.same({ 'bias', 'weight' }, keys)
    assert.are.equal("2, 3, kernel_size=(5,), stride=(1,), padding='same'", nn.Conv1d(2, 3, 5, { padding = 'same' }):extra_repr())
  end)

  it('refuses bad arguments with clear errors', function()
    local x, w = mk({ 2, 4, 6, 6 }), mk({ 6, 4, 3, 3 })
    local function fails(pattern, fn, ...)
      local ok, e = pcall(fn, ...)
      assert.is_false(ok, 'expected an error matching ' .. pattern)
      assert.is_truthy(tostring(e):find(pattern, 1, true), tostring(e))
    end
    fails('lumen.conv2d: input is 2-D (2x4), expected N x C x H x W', F.conv2d, mk({ 2, 4 }), w)
    fails('lumen.conv2d: weight is 3-D (6x4x3), expected 4-D', F.conv2d, x, mk({ 6, 4, 3 }))
    fails('lumen.conv2d: input 2x4x6x6 has 4 channels, weight 6x3x3x3 expects 3', F.conv2d, x, mk({ 6, 3, 3, 3 }))
    fails('lumen.conv2d: 4 input and 6 output channels, expected both divisible by groups = 4', F.conv2d, x, mk({ 6, 1, 3, 3 }), nil, { groups = 4 })
    fails('lumen.conv2d: padding -1 in spatial dim 0, expected values >= 0', F.conv2d, x, w, nil, { padding = -1 })
    fails('lumen.conv2d: stride 0 in spatial dim 1', F.conv2d, x, w, nil, { stride = { 1, 0 } })
    fails("lumen.conv2d: unknown option 'pad'", F.conv2d, x, w, nil, { pad = 1 })
    fails("lumen.conv2d: padding 'same' needs stride 1", F.conv2d, x, w, nil, { padding = 'same', stride = 2 })
    fails("lumen.conv2d: padding 'full' is not one of", F.conv2d, x, w, nil, { padding = 'full' })
    fails('lumen.conv2d: padding must be an integer or a list of 2 integers, got a list of 3', F.conv2d, x, w, nil, { padding = { 1, 1, 1 } })
    fails('lumen.conv2d: bias has shape 4, expected 6', F.conv2d, x, w, mk({ 4 }))
    fails('lumen.conv2d: input is f32, weight f64', F.conv2d, x, mk({ 6, 4, 3, 3 }, 'f64'))
    fails('lumen.conv2d: input dtype i64 is not supported', F.conv2d, lumen.zeros({ 2, 4, 6, 6 }, 'i64'), w)
    fails('lumen.conv2d: input 2x4x6x6 padded to 6 in spatial dim 0 is smaller than the kernel', F.conv2d, x, mk({ 6, 4, 7, 3 }))
    fails('lumen.conv2d: weight must be a tensor', F.conv2d, x, 3)
    fails('lumen.conv3d: input is 3-D (1x2x3), expected N x C x D x H x W', F.conv3d, mk({ 1, 2, 3 }), mk({ 1, 2, 1, 1, 1 }))
    fails('lumen.conv_transpose2d: output_padding 2 in spatial dim 0, expected a value >= 0 and smaller than the stride (2)',
      F.conv_transpose2d, x, mk({ 4, 2, 3, 3 }), nil, { stride = 2, output_padding = 2 })
    fails('lumen.conv_transpose2d: input 2x4x6x6 has 4 channels, weight 6x2x3x3 expects 6', F.conv_transpose2d, x, mk({ 6, 2, 3, 3 }))
    fails("lumen.conv_transpose1d: unknown option 'same'", F.conv_transpose1d, mk({ 1, 2, 4 }), mk({ 2, 2, 3 }), nil, { same = true })
    fails('lumen.Conv2d: in_channels 4 and out_channels 6 must both be divisible by groups 4', nn.Conv2d, 4, 6, 3, { groups = 4 })
    fails("lumen.Conv2d: unknown option 'strides'", nn.Conv2d, 4, 6, 3, { strides = 2 })
  end)
end)
