-- Autograd: the tape's semantics (accumulation, retain_graph, no_grad,
-- detach, freeing), Lua-defined and plugin ops on the tape, and the
-- gradients of elementwise ops, views and matrix products against finite
-- differences and PyTorch.
local lumen = require 'lumen'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'

local function r(...)
  return lumen.randn(...):to('f64')
end

describe('autograd', function()
  lumen.manual_seed(7)

  describe('gradients against finite differences (f64)', function()
    local pos = function(t) return t:abs() + 0.5 end
    local cases = {
      { 'add with broadcasting', function(a, b) return a + b end, { r(3, 4), r(4) } },
      { 'sub with a column', function(a, b) return a - b end, { r(3, 4), r(3, 1) } },
      { 'mul with a row', function(a, b) return a * b end, { r(3, 4), r(1, 4) } },
      { 'div', function(a, b) return a / b end, { r(3, 4), pos(r(3, 4)) } },
      { 'pow of tensors', function(a, b) return a ^ b end, { pos(r(3, 4)), r(3, 4) } },
      { 'maximum', function(a, b) return lumen.maximum(a, b) end, { r(3, 4), r(3, 4) } },
      { 'minimum', function(a, b) return lumen.minimum(a, b) end, { r(3, 4), r(4) } },
      { 'neg abs', function(a) return -a:abs() end, { r(6) } },
      { 'exp', function(a) return a:exp() end, { r(6) } },
      { 'log', function(a) return a:log() end, { pos(r(6)) } },
      { 'log1p', function(a) return a:log1p() end, { pos(r(6)) } },
      { 'sqrt', function(a) return a:sqrt() end, { pos(r(6)) } },
      { 'rsqrt', function(a) return a:rsqrt() end, { pos(r(6)) } },
      { 'sin cos', function(a) return a:sin() * a:cos() end, { r(6) } },
      { 'sigmoid', function(a) return a:sigmoid() end, { r(6) } },
      { 'tanh', function(a) return a:tanh() end, { r(6) } },
      { 'relu', function(a) return a:relu() end, { r(6) } },
      { 'reciprocal', function(a) return a:reciprocal() end, { pos(r(6)) } },
      { 'scalar arithmetic', function(a) return ((2 - a) * 3 / 4 + 1) - 0.5 end, { r(6) } },
      { 'scalar divided by a tensor', function(a) return 2 / a end, { pos(r(6)) } },
      { 'tensor to a scalar power', function(a) return a ^ 2.5 end, { pos(r(6)) } },
      { 'scalar to a tensor power', function(a) return lumen.pow(2, a) end, { r(6) } },
      { 'maximum with a number', function(a) return lumen.maximum(a, 0.1) end, { r(6) } },
      { 'clamp', function(a) return a:clamp(-0.5, 0.5) end, { r(8) } },
      { 'where', function(a, b) return lumen.where(a:gt(0), a, b) end, { r(5), r(1) } },
      { 'matmul 2-D', function(a, b) return lumen.matmul(a, b) end, { r(3, 4), r(4, 2) } },
      { 'matmul batched with broadcasting', function(a, b) return lumen.matmul(a, b) end, { r(2, 3, 4), r(4, 2) } },
      { 'matmul vector @ batch', function(a, b) return lumen.matmul(a, b) end, { r(4), r(2, 4, 3) } },
      { 'matmul batch @ vector', function(a, b) return lumen.matmul(a, b) end, { r(2, 3, 4), r(4) } },
      { 'dot', function(a, b) return lumen.matmul(a, b) end, { r(4), r(4) } },
      { 'addmm with alpha and beta', function(c, a, b) return lumen.addmm(c, a, b, { beta = 0.5, alpha = 2 }) end, { r(2), r(3, 4), r(4, 2) } },
      { 'a chain of views', function(a)
        return a:t():reshape(12):view(3, 4):permute(1, 0):unsqueeze(0):squeeze(0):expand(2, 4, 3):slice(1, 1, 3):select(2, 1)
      end, { r(3, 4) } },
      { 'indexing with ranges and steps', function(a) return a[{ { 1, 3 }, { 0, 4, 2 } }] end, { r(3, 4) } },
      { 'a reshape that copies', function(a) return a:t():reshape(-1) * 2 end, { r(3, 4) } },
      { 'transpose', function(a) return a:transpose(0, 2) end, { r(2, 3, 4) } },
      { 'clone and contiguous', function(a) return a:t():contiguous():clone() end, { r(3, 4) } },
      { 'one input used twice', function(a) return a * a + a end, { r(5) } },
      { 'unbind, some slices unused', function(a)
        local p = lumen.unbind(a, 1)
        return p[1] * 2 + p[3]:exp()
      end, { r(3, 4) } },
      { 'unbind then stack', function(a) return lumen.stack(lumen.unbind(a:sin(), 0), 1) end, { r(2, 3) } },
    }
    for _, c in ipairs(cases) do
      it(c[1], function() assert(gradcheck(c[2], c[3])) end)
    end
  end)

  describe('gradients against PyTorch (f32)', function()
    local a, b, w, g = lumen.randn(4, 5), lumen.randn(5), lumen.randn(5, 3), lumen.randn(4, 3)
    local res = oracle.run {
      { 'grad_of(lambda a, b, w: torch.tanh(torch.sigmoid(a * b - 1) @ w / 2).clamp(-0.4, 0.4).exp(), [a, b, w], g)',
        a = a, b = b, w = w, g = g },
    }
    it('a composite expression: output and every input gradient', function()
      local ag, bg, wg = a:clone():requires_grad_(), b:clone():requires_grad_(), w:clone():requires_grad_()
      local y = lumen.matmul((ag * bg - 1):sigmoid(), wg) / 2
      y = y:tanh():clamp(-0.4, 0.4):exp()
      y:backward(g)
      check.assert_close(y:detach(), res[1][1], { rtol = 1e-5, atol = 1e-6 }, 'output')
      check.assert_close(ag.grad, res[1][2], { rtol = 1e-5, atol = 1e-6 }, 'grad a')
      check.assert_close(bg.grad, res[1][3], { rtol = 1e-5, atol = 1e-6 }, 'grad b')
      check.assert_close(wg.grad, res[1][4], { rtol = 1e-5, atol = 1e-6 }, 'grad w')
    end)
  end)

  describe('semantics', function()
    it('accumulates gradients over backward calls until zero_grad', function()
      local x = lumen.tensor({ 1, 2, 3 }):requires_grad_()
      ;(x * 2):backward(lumen.ones(3))
      ;(x * 3):backward(lumen.ones(3))
      assert.are.same({ 5, 5, 5 }, x.grad:totable())
      x:zero_grad()
      assert.is_nil(x.grad)
    end)

    it('keeps the graph for a second backward with retain_graph', function()
      local x = lumen.tensor({ 1, 2 }):requires_grad_()
      local y = x * x
      y:backward(lumen.ones(2), { retain_graph = true })
      y:backward(lumen.ones(2))
      assert.are.same({ 4, 8 }, x.grad:totable())
      local err = select(2, pcall(function() y:backward(lumen.ones(2)) end))
      assert.matches('lumen.backward: the graph through mul was freed by an earlier backward', err, 1, true)
    end)

    it('records nothing under no_grad, and no_grad restores the mode after an error', function()
      local x = lumen.ones(3):requires_grad_()
      local y = lumen.no_grad(function() return x * 2 end)
      assert.is_false(y.requires_grad)
      assert.is_nil(y.grad_fn)
      assert.is_false(pcall(lumen.no_grad, function() error('boom') end))
      assert.is_true(lumen.is_grad_enabled())
      assert.is_true((x * 2).requires_grad)
    end)

    it('detach cuts the graph but shares memory', function()
      local x = lumen.ones(3):requires_grad_()
      local d = (x * 2):detach()
      assert.is_false(d.requires_grad)
      local y = x * 2
      local dy = y:detach()
      dy[0] = 7
      assert.are.equal(7, y[0])
    end)

    it('gives clear errors', function()
      local function err(f) return select(2, pcall(f)) end
      assert.matches('lumen.backward: the tensor has shape 3, expected one element',
        err(function() (lumen.ones(3):requires_grad_() * 2):backward() end), 1, true)
      assert.matches('lumen.backward: the tensor does not require grad',
        err(function() lumen.ones(1):backward() end), 1, true)
      assert.matches('lumen.requires_grad: dtype i64, expected f32 or f64',
        err(function() lumen.ones(2, 'i64'):requires_grad_() end), 1, true)
      assert.matches('lumen.requires_grad: the tensor was made by mul, expected a leaf',
        err(function() (lumen.ones(2):requires_grad_() * 2):requires_grad_() end), 1, true)
      local w = lumen.ones(2):requires_grad_()
      assert.matches('lumen.add: writing into an existing tensor (in place or out=) cannot be tracked by autograd',
        err(function() w:add_(1) end), 1, true)
      assert.matches('lumen.backward: gradient of shape 2 for a tensor of shape 3',
        err(function() (lumen.ones(3):requires_grad_() * 2):backward(lumen.ones(2)) end), 1, true)
      assert.matches('lumen.as_strided: not differentiable',
        err(function()
          local one = require('ffi').new('int64_t[1]', 2)
          lumen.core.call(lumen.core.C.lm_as_strided, w.h, 1, one, one, 0, lumen.core.out1)
        end), 1, true)
    end)

    it('frees saved tensors right after backward', function()
      local x = lumen.randn(256, 256):requires_grad_()
      collectgarbage('collect')
      local before = lumen.memory().live
      local y = (x:exp() * x):sigmoid()
      local during = lumen.memory().live
      y:backward(lumen.ones(256, 256))
      y = nil
      collectgarbage('collect')
      assert.is_true(during - before >= 3 * 256 * 256 * 4)
      -- only x's gradient is left
      assert.is_true(lumen.memory().live - before <= 256 * 256 * 4 + 4096)
    end)

    it('walks and releases a long chain without deep recursion', function()
      local x = lumen.ones(1):requires_grad_()
      local y = x
      for _ = 1, 20000 do y = y * 1 end
      y:backward(lumen.ones(1))
      assert.are.same({ 1 }, x.grad:totable())
      y = nil
      collectgarbage('collect')
    end)
  end)

  describe('ops defined in Lua', function()
    local cube = lumen.custom_op {
      name = 'cube',
      forward = function(state, x, k)
        state.x, state.k = x, k
        return x * x * x * k
      end,
      backward = function(state, g) return g * state.x * state.x * 3 * state.k end,
    }
    it('take part in the tape and pass finite differences', function()
      assert(gradcheck(function(x) return (cube(x:sin(), 2) + 1):exp() end, { r(5) }))
    end)
    it('name themselves in errors from their backward', function()
      local bad = lumen.custom_op { name = 'bad', forward = function(_, x) return x * 1 end, backward = function() return 'x' end }
      local err = select(2, pcall(function() bad(lumen.ones(2):requires_grad_()):backward(lumen.ones(2)) end))
      assert.matches('lumen.bad: backward returned string for argument 1', err, 1, true)
      local wrong = lumen.custom_op { name = 'wrong', forward = function(_, x) return x * 1 end,
        backward = function() return lumen.ones(3) end }
      err = select(2, pcall(function() wrong(lumen.ones(2):requires_grad_()):backward(lumen.ones(2)) end))
      assert.matches('lumen.backward: a Lua-defined op returned a gradient of shape 3 for input 1 of shape 2', err, 1, true)
    end)
  end)

  describe('plugin ops', function()
    local build = lumen.core.libpath:match('^(.*)/[^/]*$') or 'build'
    local path = build .. '/tests/plugins/clip_relu.so'
    local f = io.open(path, 'rb')
    if not f then os.execute(string.format("make -s B='%s' '%s' >&2", build, path)) else f:close() end
    it('record their backward on the tape', function()
      local p = lumen.load_plugin(path)
      local x = lumen.tensor({ -1, 0.5, 1, 3 }, 'f64'):requires_grad_()
      local y = p.clip_relu(x * 2, 2.5)
      assert.are.equal('clip_relu', y.grad_fn)
      y:backward(lumen.tensor({ 1, 1, 1, 1 }, 'f64'))
      -- d clamp(2x, 0, 2.5)/dx: 0 below 0, 2 inside, 0 above the cap
      assert.are.same({ 0, 2, 2, 0 }, x.grad:totable())
    end)
  end)
end)
