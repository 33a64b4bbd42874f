-- Gradients of cat, flip, roll and pad: finite differences in f64, PyTorch
-- parity in f32, and what must not record.
local lumen = require 'lumen'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'
local gradcase = require 'helpers.gradcase'

describe('shape op gradients', function()
  lumen.manual_seed(21)
  local a = lumen.randn(2, 3, 4)
  local b = lumen.randn(2, 5, 4)
  local c = lumen.randn(2, 1, 4)
  local at = lumen.randn(4, 5, 2):transpose(0, 2)    -- 2x5x4, non-contiguous
  local d = lumen.randn(2, 3, 4, 'f64')
  local e1 = lumen.zeros(0)                           -- skipped by cat
  local ez = lumen.zeros(2, 0, 4)
  local m = lumen.randn(3, 4)
  local mt = lumen.randn(4, 3):t()
  local v = lumen.randn(2, 3, 5)
  local img = lumen.randn(1, 2, 4, 5)
  local vol = lumen.randn(1, 1, 3, 4, 3)
  local s0 = lumen.randn({})

  gradcase.parity(it, {
    { 'cat dim 1', torch = 'lambda a, b, c: torch.cat([a, b, c], 1)',
      fn = function(x, y, z) return lumen.cat({ x, y, z }, 1) end, args = { a, b, c } },
    { 'cat dim -2, non-contiguous input', torch = 'lambda a, b: torch.cat([a, b], -2)',
      fn = function(x, y) return lumen.cat({ x, y }, -2) end, args = { a, at } },
    { 'cat dim 0', torch = 'lambda a, b: torch.cat([a, b], 0)',
      fn = function(x, y) return lumen.cat({ x, y }, 0) end, args = { a, a:clone() } },
    { 'cat of one tensor twice', torch = 'lambda a: torch.cat([a, a], 2)',
      fn = function(x) return lumen.cat({ x, x }, 2) end, args = { a } },
    { 'cat of f32 and f64 (promoted)', torch = 'lambda a, d: torch.cat([a, d], 1)',
      fn = function(x, y) return lumen.cat({ x, y }, 1) end, args = { a, d } },
    { 'cat with an input that needs no grad', torch = 'lambda a, b: torch.cat([a, b], 1)',
      fn = function(x, y) return lumen.cat({ x, y }, 1) end, args = { a, b }, frozen = { 2 } },
    { 'cat with empty inputs', torch = 'lambda e, a, z: torch.cat([e, a, z], 1)',
      fn = function(x, y, z) return lumen.cat({ x, y, z }, 1) end, args = { e1, a, ez } },
    { 'flip dim 0', torch = 'lambda x: x.flip(0)', fn = function(x) return x:flip(0) end, args = { a } },
    { 'flip dims {0, -1}', torch = 'lambda x: x.flip((0, -1))', fn = function(x) return x:flip({ 0, -1 }) end, args = { at } },
    { 'flip no dims', torch = 'lambda x: x.flip(())', fn = function(x) return x:flip({}) end, args = { m } },
    { 'roll 1 along dim 1', torch = 'lambda x: x.roll(1, 1)', fn = function(x) return x:roll(1, 1) end, args = { a } },
    { 'roll {-2, 7} along {0, 2}', torch = 'lambda x: x.roll((-2, 7), (1, 2))',
      fn = function(x) return x:roll({ -2, 7 }, { 1, 2 }) end, args = { at } },
    { 'roll flattened', torch = 'lambda x: x.roll(5)', fn = function(x) return x:roll(5) end, args = { mt } },
    { 'roll the same dim twice', torch = 'lambda x: x.roll((1, 2), (0, 0))',
      fn = function(x) return x:roll({ 1, 2 }, { 0, 0 }) end, args = { m } },
    { 'pad constant', torch = 'lambda x: F.pad(x, (1, 2, 0, 3), value=1.5)',
      fn = function(x) return x:pad({ 1, 2, 0, 3 }, 'constant', 1.5) end, args = { m } },
    { 'pad constant, cropping', torch = 'lambda x: F.pad(x, (-1, 2, 1, -2))',
      fn = function(x) return x:pad({ -1, 2, 1, -2 }) end, args = { mt } },
    { 'pad constant, 3 dims', torch = 'lambda x: F.pad(x, (1, 0, 0, 1, 2, 1))',
      fn = function(x) return x:pad({ 1, 0, 0, 1, 2, 1 }) end, args = { a } },
    { 'pad constant of an empty input', torch = 'lambda x: F.pad(x, (1, 1, 2, 0))',
      fn = function(x) return x:pad({ 1, 1, 2, 0 }) end, args = { ez } },
    { 'pad reflect 1-D', torch = 'lambda x: F.pad(x, (2, 3), mode="reflect")',
      fn = function(x) return x:pad({ 2, 3 }, 'reflect') end, args = { v } },
    { 'pad reflect 2-D', torch = 'lambda x: F.pad(x, (1, 4, 3, 2), mode="reflect")',
      fn = function(x) return x:pad({ 1, 4, 3, 2 }, 'reflect') end, args = { img } },
    { 'pad reflect 3-D', torch = 'lambda x: F.pad(x, (1, 2, 2, 1, 2, 0), mode="reflect")',
      fn = function(x) return x:pad({ 1, 2, 2, 1, 2, 0 }, 'reflect') end, args = { vol } },
    { 'pad replicate 1-D', torch = 'lambda x: F.pad(x, (4, 1), mode="replicate")',
      fn = function(x) return x:pad({ 4, 1 }, 'replicate') end, args = { v } },
    { 'pad replicate 2-D', torch = 'lambda x: F.pad(x, (0, 3, 5, 1), mode="replicate")',
      fn = function(x) return x:pad({ 0, 3, 5, 1 }, 'replicate') end, args = { img } },
    { 'pad replicate 3-D', torch = 'lambda x: F.pad(x, (2, 1, 0, 2, 3, 3), mode="replicate")',
      fn = function(x) return x:pad({ 2, 1, 0, 2, 3, 3 }, 'replicate') end, args = { vol } },
    { 'pad replicate, non-contiguous', torch = 'lambda x: F.pad(x, (2, 2), mode="replicate")',
      fn = function(x) return x:pad({ 2, 2 }, 'replicate') end, args = { at } },
    { 'pad of a 0-d input', torch = 'lambda x: F.pad(x, ())', fn = function(x) return x:pad({}) end, args = { s0 } },
    -- chains: gradients flow through non-leaf nodes
    { 'flip of roll of pad of cat', torch = 'lambda a, b: F.pad(torch.cat([a, b], 1), (1, 2), mode="reflect").roll(3, 2).flip(1)',
      fn = function(x, y) return lumen.cat({ x, y }, 1):pad({ 1, 2 }, 'reflect'):roll(3, 2):flip(1) end, args = { a, b } },
  })

  describe('finite differences (f64)', function()
    lumen.manual_seed(22)
    local x = lumen.randn(2, 3, 4, 'f64')
    local y = lumen.randn(2, 2, 4, 'f64')
    local m2 = lumen.randn(3, 4, 'f64')
    for _, cs in ipairs {
      { 'cat', function(p, q) return lumen.cat({ p, q, p }, 1) end, { x, y } },
      { 'flip', function(p) return p:flip({ 0, 2 }) end, { x } },
      { 'roll', function(p) return p:roll({ 1, -1 }, { 1, 2 }) end, { x } },
      { 'roll flattened', function(p) return p:roll(-3) end, { x } },
      { 'pad constant', function(p) return p:pad({ 1, -1, 2, 0 }, 'constant', 2) end, { m2 } },
      { 'pad reflect', function(p) return p:pad({ 3, 2, 1, 2 }, 'reflect') end, { m2 } },
      { 'pad replicate', function(p) return p:pad({ 2, 3, 1, 0, 1, 1 }, 'replicate') end, { x } },
      { 'pad reflect, cropping', function(p) return p:pad({ 2, -1 }, 'reflect') end, { m2 } },
      -- through views and elementwise ops
      { 'cat of a transposed view', function(p, q) return lumen.cat({ p:transpose(1, 2), q:transpose(1, 2) * 2 }, 2) end, { x, y } },
      { 'pad replicate of a slice', function(p) return p[{ {}, { 1, 3 } }]:pad({ 2, 1 }, 'replicate') end, { x } },
      { 'roll of a sum', function(p) return (p + p:flip(0)):roll(2, 1) end, { x } },
    } do
      it(cs[1], function() assert(gradcheck(cs[2], cs[3])) end)
    end
  end)

  describe('recording', function()
    local ag = a:detach():requires_grad_()
    local fns = {
      function(t) return lumen.cat({ t, t }, 0) end, function(t) return t:flip(0) end,
      function(t) return t:roll(1, 0) end, function(t) return t:pad({ 1, 1 }) end,
      function(t) return t:pad({ 1, 1 }, 'reflect') end,
    }

    it('records nothing under no_grad or without requires_grad', function()
      for _, f in ipairs(fns) do
        gradcase.no_grad_recorded(f(a))
        gradcase.no_grad_recorded(lumen.no_grad(f, ag))
        assert.is_true(f(ag).requires_grad)
      end
    end)

    it('records cat when any input requires grad, and not for integers', function()
      assert.is_true(lumen.cat({ a, ag }, 0).requires_grad)
      assert.are.equal('cat', lumen.cat({ a, ag }, 0).grad_fn)
      gradcase.no_grad_recorded(lumen.cat({ lumen.tensor({ 1 }, 'i64'), lumen.tensor({ 2 }, 'i64') }))
    end)

    it('frees nodes and saved tensors, after backward or without it', function()
      gradcase.assert_no_leak(function()
        for _, f in ipairs(fns) do
          local l = a:detach():requires_grad_()
          local y = f(l)
          y:backward(lumen.ones(y:size()))
          f(l)
        end
      end)
    end)

    it('gives gradients of the input dtype to each cat input', function()
      local p = lumen.ones(2, 'f32'):requires_grad_()
      local q = lumen.ones(3, 'f64'):requires_grad_()
      local r = lumen.cat({ p, q })
      assert.are.equal('f64', r:dtype())
      r:backward(lumen.arange(5, 'f64'))
      assert.are.equal('f32', p.grad:dtype())
      assert.are.equal('f64', q.grad:dtype())
      check.assert_close(p.grad, lumen.tensor({ 0, 1 }, 'f32'))
      check.assert_close(q.grad, lumen.tensor({ 2, 3, 4 }, 'f64'))
    end)
  end)
end)
