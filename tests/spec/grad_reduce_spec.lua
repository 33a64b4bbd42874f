-- Gradients of reductions and cumsum: finite differences in f64, PyTorch
-- parity in f32, and what must not record.
local lumen = require 'lumen'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'
local gradcase = require 'helpers.gradcase'

local function randn(...)
  return lumen.randn(...)
end

describe('reduction gradients', function()
  lumen.manual_seed(7)
  local x = randn(3, 4, 5)
  local xt = randn(5, 4, 3):transpose(0, 2)          -- 3x4x5, non-contiguous
  local xs = randn(3, 6, 5)[{ {}, { 0, nil, 2 } }]   -- 3x3x5, stepped
  local xe = randn(4, 1):expand(4, 6)                -- stride 0
  local z = lumen.zeros(0, 3)
  local s0 = randn({})                               -- 0-d
  -- products with one and two zeros in a row
  local pz = lumen.tensor({ { 2, 0, 3, 1.5 }, { 0, 0, 1, 2 }, { 1, 2, -3, 0.5 } })
  -- ties for max/min over everything and over dims
  local ties = lumen.tensor({ { 1, 3, 3, 0 }, { 2, 3, 1, 2 }, { 0, 0, -1, -1 } })
  -- a constant row: std 0 there; a zero row: norm 0 there
  local flat = lumen.tensor({ { 2, 2, 2, 2 }, { 1, -2, 0.5, 3 } })
  local zrow = lumen.tensor({ { 0, 0, 0 }, { 1, -2, 0.5 } })
  local tie_abs = lumen.tensor({ { 1, -3, 3, 0.5 }, { 2, -1, 0, 1 } })

  gradcase.parity(it, {
    { 'sum()', torch = 'lambda x: x.sum()', fn = function(a) return a:sum() end, args = { x } },
    { 'sum(1)', torch = 'lambda x: x.sum(1)', fn = function(a) return a:sum(1) end, args = { x } },
    { 'sum(-1, keepdim)', torch = 'lambda x: x.sum(-1, keepdim=True)', fn = function(a) return a:sum(-1, true) end, args = { x } },
    { 'sum({0, 2})', torch = 'lambda x: x.sum((0, 2))', fn = function(a) return a:sum({ 0, 2 }) end, args = { x } },
    { 'sum({2, -3}, keepdim)', torch = 'lambda x: x.sum((2, 0), keepdim=True)', fn = function(a) return a:sum({ 2, -3 }, true) end, args = { x } },
    { 'sum of a transposed input', torch = 'lambda x: x.sum((0, 1))', fn = function(a) return a:sum({ 0, 1 }) end, args = { xt } },
    { 'sum of a stepped slice', torch = 'lambda x: x.sum(1)', fn = function(a) return a:sum(1) end, args = { xs } },
    { 'sum of an expanded input', torch = 'lambda x: x.sum(0)', fn = function(a) return a:sum(0) end, args = { xe } },
    { 'sum of an empty input', torch = 'lambda x: x.sum(0)', fn = function(a) return a:sum(0) end, args = { z } },
    { 'sum to an empty output', torch = 'lambda x: x.sum(1)', fn = function(a) return a:sum(1) end, args = { z } },
    { 'sum of a 0-d input', torch = 'lambda x: x.sum()', fn = function(a) return a:sum() end, args = { s0 } },
    { 'sum(0, keepdim) of a 0-d input', torch = 'lambda x: x.sum(0, keepdim=True)', fn = function(a) return a:sum(0, true) end, args = { s0 } },
    { 'mean()', torch = 'lambda x: x.mean()', fn = function(a) return a:mean() end, args = { x } },
    { 'mean({0, -1}, keepdim)', torch = 'lambda x: x.mean((0, -1), keepdim=True)', fn = function(a) return a:mean({ 0, -1 }, true) end, args = { x } },
    { 'mean of a transposed input', torch = 'lambda x: x.mean(2)', fn = function(a) return a:mean(2) end, args = { xt } },
    { 'mean to an empty output', torch = 'lambda x: x.mean(1)', fn = function(a) return a:mean(1) end, args = { z } },
    { 'prod(1) with zeros', torch = 'lambda x: x.prod(1)', fn = function(a) return a:prod(1) end, args = { pz } },
    { 'prod(0, keepdim) with zeros', torch = 'lambda x: x.prod(0, keepdim=True)', fn = function(a) return a:prod(0, true) end, args = { pz } },
    { 'prod() with zeros', torch = 'lambda x: x.prod()', fn = function(a) return a:prod() end, args = { pz } },
    { 'prod() of one row with a zero', torch = 'lambda x: x.prod()', fn = function(a) return a:prod() end, args = { pz[0] } },
    { 'prod(-1) of a transposed input', torch = 'lambda x: x.prod(-1)', fn = function(a) return a:prod(-1) end, args = { xt } },
    { 'max() with ties', torch = 'lambda x: x.max()', fn = function(a) return a:max() end, args = { ties } },
    { 'min() with ties', torch = 'lambda x: x.min()', fn = function(a) return a:min() end, args = { ties } },
    { 'amax(1) with ties', torch = 'lambda x: torch.amax(x, 1)', fn = function(a) return a:amax(1) end, args = { ties } },
    { 'amin({0, 1}, keepdim) with ties', torch = 'lambda x: torch.amin(x, (0, 1), keepdim=True)', fn = function(a) return a:amin({ 0, 1 }, true) end, args = { ties } },
    { 'amax({0, 2})', torch = 'lambda x: torch.amax(x, (0, 2))', fn = function(a) return a:amax({ 0, 2 }) end, args = { xt } },
    { 'max(1) with ties', torch = 'lambda x: x.max(1)[0]', fn = function(a) return (a:max(1)) end, args = { ties } },
    { 'max(0, keepdim) with ties', torch = 'lambda x: x.max(0, keepdim=True)[0]', fn = function(a) return (a:max(0, true)) end, args = { ties } },
    { 'min(-1) of a transposed input', torch = 'lambda x: x.min(-1)[0]', fn = function(a) return (a:min(-1)) end, args = { xt } },
    { 'max(0) of a 0-d input', torch = 'lambda x: x.max(0)[0]', fn = function(a) return (a:max(0)) end, args = { s0 } },
    { 'var()', torch = 'lambda x: x.var()', fn = function(a) return a:var() end, args = { x } },
    { 'var(1)', torch = 'lambda x: x.var(1)', fn = function(a) return a:var(1) end, args = { x } },
    { 'var({0, 2}, correction 0, keepdim)', torch = 'lambda x: x.var((0, 2), unbiased=False, keepdim=True)',
      fn = function(a) return a:var({ 0, 2 }, { correction = 0, keepdim = true }) end, args = { x } },
    { 'var(-1) of a stepped slice', torch = 'lambda x: x.var(-1)', fn = function(a) return a:var(-1) end, args = { xs } },
    { 'std()', torch = 'lambda x: x.std()', fn = function(a) return a:std() end, args = { x } },
    { 'std(0, correction 0)', torch = 'lambda x: x.std(0, unbiased=False)', fn = function(a) return a:std(0, { correction = 0 }) end, args = { xt } },
    { 'std(1) with a constant row', torch = 'lambda x: x.std(1)', fn = function(a) return a:std(1) end, args = { flat } },
    { 'norm()', torch = 'lambda x: torch.linalg.vector_norm(x)', fn = function(a) return a:norm() end, args = { x } },
    { 'norm(2, 1) with a zero row', torch = 'lambda x: torch.linalg.vector_norm(x, 2, 1)', fn = function(a) return a:norm(2, 1) end, args = { zrow } },
    { 'norm(1, {0, 2}, keepdim)', torch = 'lambda x: torch.linalg.vector_norm(x, 1, (0, 2), keepdim=True)',
      fn = function(a) return a:norm(1, { 0, 2 }, true) end, args = { x } },
    { 'norm(3, -1)', torch = 'lambda x: torch.linalg.vector_norm(x, 3, -1)', fn = function(a) return a:norm(3, -1) end, args = { xt } },
    { 'norm(3, 1) with a zero row', torch = 'lambda x: torch.linalg.vector_norm(x, 3, 1)', fn = function(a) return a:norm(3, 1) end, args = { zrow } },
    { 'norm(1.5)', torch = 'lambda x: torch.linalg.vector_norm(x, 1.5)', fn = function(a) return a:norm(1.5) end, args = { x } },
    { 'norm(0.5, 1) with zeros', torch = 'lambda x: torch.linalg.vector_norm(x, 0.5, 1)', fn = function(a) return a:norm(0.5, 1) end, args = { zrow } },
    { 'norm(inf, 1) with ties', torch = 'lambda x: torch.linalg.vector_norm(x, float("inf"), 1)', fn = function(a) return a:norm('inf', 1) end, args = { tie_abs } },
    { 'norm(-inf) with ties', torch = 'lambda x: torch.linalg.vector_norm(x, float("-inf"))', fn = function(a) return a:norm('-inf') end, args = { tie_abs } },
    { 'norm(0, 1)', torch = 'lambda x: torch.linalg.vector_norm(x, 0, 1)', fn = function(a) return a:norm(0, 1) end, args = { x } },
    { 'cumsum(1)', torch = 'lambda x: x.cumsum(1)', fn = function(a) return a:cumsum(1) end, args = { x } },
    { 'cumsum(-1) of a transposed input', torch = 'lambda x: x.cumsum(-1)', fn = function(a) return a:cumsum(-1) end, args = { xt } },
    { 'cumsum(0) of a 0-d input', torch = 'lambda x: x.cumsum(0)', fn = function(a) return a:cumsum(0) end, args = { s0 } },
    { 'cumsum(0) of an empty input', torch = 'lambda x: x.cumsum(0)', fn = function(a) return a:cumsum(0) end, args = { z } },
    -- chains of these ops: gradients flow through non-leaf nodes
    { 'sum(0) of cumsum(1) of max(2)', torch = 'lambda x: x.max(2)[0].cumsum(1).sum(0)',
      fn = function(a) return (a:max(2)):cumsum(1):sum(0) end, args = { x } },
    { 'var of prod of an expanded input', torch = 'lambda x: x.prod(1).var()', fn = function(a) return a:prod(1):var() end, args = { xe } },
  })

  describe('finite differences (f64)', function()
    lumen.manual_seed(11)
    local d = lumen.randn(3, 4, 'f64')
    local d3 = lumen.randn(2, 3, 4, 'f64')
    local dz = lumen.tensor({ { 2, 0, 3, 1.5 }, { 0, 0, 1, 2 }, { 1, 2, -3, 0.5 } }, 'f64')
    local fns = {
      { 'sum', function(a) return a:sum({ 0, 2 }) end, d3 },
      { 'sum keepdim', function(a) return a:sum(1, true) end, d },
      { 'mean', function(a) return a:mean(-1) end, d3 },
      { 'prod', function(a) return a:prod(1) end, d },
      { 'prod with zeros', function(a) return a:prod(1) end, dz },
      { 'prod over all, one zero', function(a) return a:prod() end, dz[0] },
      { 'prod over all, two zeros', function(a) return a:prod() end, dz[1] },
      { 'amax', function(a) return a:amax({ 0, 2 }) end, d3 },
      { 'max(dim)', function(a) return (a:max(1)) end, d },
      { 'min()', function(a) return a:min() end, d },
      { 'var', function(a) return a:var(1) end, d },
      { 'var correction 0', function(a) return a:var({ 0, 2 }, { correction = 0, keepdim = true }) end, d3 },
      { 'std', function(a) return a:std(0) end, d },
      { 'norm 2', function(a) return a:norm(2, 1) end, d },
      { 'norm 1', function(a) return a:norm(1) end, d },
      { 'norm 3', function(a) return a:norm(3, { 0, 1 }) end, d3 },
      { 'norm 0.5', function(a) return a:norm(0.5, 1) end, d },
      { 'norm inf', function(a) return a:norm('inf', 1) end, d },
      { 'norm -inf', function(a) return a:norm('-inf', 0) end, d },
      { 'cumsum', function(a) return a:cumsum(1) end, d },
      { 'cumsum dim 0', function(a) return a:cumsum(0) end, d3 },
      -- through views and elementwise ops (non-contiguous inputs to the reductions)
      { 'prod of a transposed view', function(a) return a:t():prod(1) end, d },
      { 'var of a slice', function(a) return a[{ {}, { 1, 3 } }]:var(0) end, d3 },
      { 'norm of a product', function(a) return (a * a:sum(0, true)):norm(2, 1) end, d },
      { 'cumsum of a permuted view', function(a) return a:permute(2, 0, 1):cumsum(0) end, d3 },
    }
    for _, c in ipairs(fns) do
      it(c[1], function() assert(gradcheck(c[2], { c[3] })) end)
    end
  end)

  describe('recording', function()
    local a = lumen.randn(3, 4)
    local ag = a:detach():requires_grad_()

    it('records nothing under no_grad or without requires_grad', function()
      for _, f in ipairs {
        function(t) return t:sum(1) end, function(t) return t:mean() end, function(t) return t:prod(0) end,
        function(t) return t:max() end, function(t) return (t:max(1)) end, function(t) return t:amin(0) end,
        function(t) return t:var(1) end, function(t) return t:std() end, function(t) return t:norm(3) end,
        function(t) return t:cumsum(0) end,
      } do
        gradcase.no_grad_recorded(f(a))
        gradcase.no_grad_recorded(lumen.no_grad(f, ag))
        assert.is_true(f(ag).requires_grad)
      end
    end)

    it('never records non-differentiable results', function()
      gradcase.no_grad_recorded(ag:argmax())
      gradcase.no_grad_recorded(ag:argmin(1))
      gradcase.no_grad_recorded(ag:all())
      gradcase.no_grad_recorded(ag:any(0))
      gradcase.no_grad_recorded(ag:count_nonzero())
      local v, i = ag:max(1)
      assert.is_true(v.requires_grad)
      gradcase.no_grad_recorded(i)
    end)

    it('names the nodes', function()
      assert.are.equal('sum', ag:sum().grad_fn)
      assert.are.equal('max', ag:amax(1).grad_fn)
      assert.are.equal('cumsum', ag:cumsum(1).grad_fn)
    end)

    it('seeds a one-element result with 1', function()
      local l = lumen.tensor({ 3, -4 }, 'f64'):requires_grad_()
      l:norm():backward()
      check.assert_close(l.grad, lumen.tensor({ 0.6, -0.8 }, 'f64'), { rtol = 1e-12, atol = 0 })
    end)

    it('accumulates into .grad over two backwards', function()
      local l = lumen.tensor({ 1, 2, 3 }, 'f64'):requires_grad_()
      l:sum():backward()
      l:prod():backward()
      check.assert_close(l.grad, lumen.tensor({ 1 + 6, 1 + 3, 1 + 2 }, 'f64'))
    end)

    it('frees nodes and saved tensors, after backward or without it', function()
      local fs = {
        function(t) return t:sum(1) end, function(t) return t:mean() end, function(t) return t:prod(0) end,
        function(t) return t:max() end, function(t) return (t:max(1)) end, function(t) return t:amin(0, true) end,
        function(t) return t:var(1) end, function(t) return t:std() end, function(t) return t:norm(3) end,
        function(t) return t:norm('inf', 1) end, function(t) return t:cumsum(0) end,
      }
      gradcase.assert_no_leak(function()
        for _, f in ipairs(fs) do
          local l = a:detach():requires_grad_()
          local y = f(l)
          y:backward(lumen.ones(y:size()))
          f(l) -- never run backward on this one
        end
      end)
    end)

    it('keeps integer reductions out of autograd', function()
      local i = lumen.tensor({ 1, 2, 3 }, 'i64')
      gradcase.no_grad_recorded(i:sum())
      assert.has_error(function() i:requires_grad_() end)
    end)
  end)
end)
