-- Gradients of gather, scatter, index_select, masked_select, masked_fill,
-- sort and topk: finite differences in f64, PyTorch parity in f32, what
-- must not record, and the refusal of in-place forms.
local lumen = require 'lumen'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'
local gradcase = require 'helpers.gradcase'

local function i64(t) return lumen.tensor(t, 'i64') end

describe('index op gradients', function()
  lumen.manual_seed(31)
  local x = lumen.randn(3, 4)
  local xt = lumen.randn(4, 3):t()                  -- 3x4, non-contiguous
  local x3 = lumen.randn(2, 3, 4)
  local s0 = lumen.randn({})
  local z = lumen.zeros(0, 4)
  -- gather: repeated indices must add up
  local gi1 = i64 { { 0, 0, 3 }, { 1, 2, 1 }, { 3, 3, 3 } }   -- along dim 1
  local gi0 = i64 { { 2, 0, 1, 2 }, { 2, 2, 0, 1 } }         -- along dim 0
  -- scatter: indices distinct within each line (a SET is then well defined)
  local si1 = i64 { { 3, 0 }, { 1, 2 }, { 0, 3 } }
  local sadd = i64 { { 1, 1, 1, 0 }, { 2, 0, 2, 0 } }        -- scatter_add with repeats, dim 0
  local src = lumen.randn(3, 2)
  local src4 = lumen.randn(2, 4)
  local big_src = lumen.randn(3, 5)
  -- masks
  local mask = lumen.tensor({ { true, false, true, true }, { false, false, true, false }, { true, true, false, true } })
  local mrow = lumen.tensor({ true, false, false, true })     -- broadcasts over rows
  local mcol = lumen.tensor({ { true }, { false }, { true } })  -- 3x1: broadcasts along x3's rows
  local xrow = lumen.randn(4)                                 -- broadcasts against mask
  -- distinct values for sort/topk (no ties)
  local u = lumen.randperm(12, 'f32'):reshape(3, 4) * 0.5 - 2

  gradcase.parity(it, {
    { 'gather dim 1, repeated indices', torch = 'lambda x, i: torch.gather(x, 1, i)',
      fn = function(t, i) return t:gather(1, i) end, args = { x, gi1 } },
    { 'gather dim 0', torch = 'lambda x, i: torch.gather(x, 0, i)',
      fn = function(t, i) return t:gather(0, i) end, args = { xt, gi0 } },
    { 'gather dim -1, i32 index', torch = 'lambda x, i: torch.gather(x, -1, i.long())',
      fn = function(t, i) return t:gather(-1, i) end, args = { x, gi1:to('i32') } },
    { 'gather of a 0-d input', torch = 'lambda x, i: torch.gather(x, 0, i)',
      fn = function(t, i) return t:gather(0, i) end, args = { s0, i64({ 0 }):reshape({}) } },
    { 'scatter dim 1', torch = 'lambda x, i, s: torch.scatter(x, 1, i, s)',
      fn = function(t, i, s) return t:scatter(1, i, s) end, args = { x, si1, src } },
    { 'scatter dim 1, non-contiguous', torch = 'lambda x, i, s: torch.scatter(x, 1, i, s)',
      fn = function(t, i, s) return t:scatter(1, i, s) end, args = { xt, si1, src } },
    { 'scatter, src larger than index', torch = 'lambda x, i, s: torch.scatter(x, 1, i, s[:, :2])',
      fn = function(t, i, s) return t:scatter(1, i, s) end, args = { x, si1, big_src } },
    { 'scatter of a number', torch = 'lambda x, i: torch.scatter(x, 1, i, 2.5)',
      fn = function(t, i) return t:scatter(1, i, 2.5) end, args = { x, si1 } },
    { 'scatter, only src requires grad', torch = 'lambda x, i, s: torch.scatter(x, 1, i, s)',
      fn = function(t, i, s) return t:scatter(1, i, s) end, args = { x, si1, src }, frozen = { 1 } },
    { 'scatter_add dim 0, repeated indices', torch = 'lambda x, i, s: torch.scatter_add(x, 0, i, s)',
      fn = function(t, i, s) return t:scatter_add(0, i, s) end, args = { x, sadd, src4 } },
    { 'scatter_add dim -1', torch = 'lambda x, i, s: torch.scatter_add(x, -1, i, s)',
      fn = function(t, i, s) return t:scatter_add(-1, i, s) end, args = { xt, gi1, lumen.randn(3, 3) } },
    { 'index_select dim 0, repeated', torch = 'lambda x, i: torch.index_select(x, 0, i)',
      fn = function(t, i) return t:index_select(0, i) end, args = { x, i64 { 2, 0, 2, 2 } } },
    { 'index_select dim -1, non-contiguous', torch = 'lambda x, i: torch.index_select(x, -1, i)',
      fn = function(t, i) return t:index_select(-1, i) end, args = { xt, i64 { 3, 1, 3 } } },
    { 'index_select dim 1 of 3-D', torch = 'lambda x, i: torch.index_select(x, 1, i)',
      fn = function(t, i) return t:index_select(1, i) end, args = { x3, i64 { 1, 1, 0, 2, 1 } } },
    { 'index_select with no indices', torch = 'lambda x, i: torch.index_select(x, 0, i)',
      fn = function(t, i) return t:index_select(0, i) end, args = { x, lumen.zeros(0, 'i64') } },
    { 'index_select of a 0-d input', torch = 'lambda x, i: torch.index_select(x, 0, i)',
      fn = function(t, i) return t:index_select(0, i) end, args = { s0, i64 { 0 } } },
    { 'masked_select', torch = 'lambda x, m: torch.masked_select(x, m)',
      fn = function(t, m) return t:masked_select(m) end, args = { x, mask } },
    { 'masked_select, non-contiguous', torch = 'lambda x, m: torch.masked_select(x, m)',
      fn = function(t, m) return t:masked_select(m) end, args = { xt, mask } },
    { 'masked_select, mask broadcast', torch = 'lambda x, m: torch.masked_select(x, m)',
      fn = function(t, m) return t:masked_select(m) end, args = { x3, mcol } },
    { 'masked_select, input broadcast', torch = 'lambda x, m: torch.masked_select(x, m)',
      fn = function(t, m) return t:masked_select(m) end, args = { xrow, mask } },
    { 'masked_select of an empty input', torch = 'lambda x, m: torch.masked_select(x, m)',
      fn = function(t, m) return t:masked_select(m) end, args = { z, mrow } },
    { 'masked_fill', torch = 'lambda x, m: x.masked_fill(m, -1.5)',
      fn = function(t, m) return t:masked_fill(m, -1.5) end, args = { x, mask } },
    { 'masked_fill, mask broadcast', torch = 'lambda x, m: x.masked_fill(m, 3)',
      fn = function(t, m) return t:masked_fill(m, 3) end, args = { xt, mrow } },
    { 'masked_fill, input broadcast', torch = 'lambda x, m: x.expand(3, 4).masked_fill(m, 0)',
      fn = function(t, m) return t:masked_fill(m, 0) end, args = { xrow, mask } },
    { 'sort dim -1', torch = 'lambda x: x.sort(-1)[0]', fn = function(t) return (t:sort(-1)) end, args = { u } },
    { 'sort dim 0 descending', torch = 'lambda x: x.sort(0, descending=True)[0]',
      fn = function(t) return (t:sort(0, true)) end, args = { u } },
    { 'sort of a non-contiguous input', torch = 'lambda x: x.sort(1)[0]', fn = function(t) return (t:sort(1)) end, args = { u:t() } },
    { 'topk 2', torch = 'lambda x: x.topk(2)[0]', fn = function(t) return (t:topk(2)) end, args = { u } },
    { 'topk 2 smallest along dim 0', torch = 'lambda x: x.topk(2, 0, largest=False)[0]',
      fn = function(t) return (t:topk(2, 0, false)) end, args = { u } },
    { 'topk 0', torch = 'lambda x: x.topk(0)[0]', fn = function(t) return (t:topk(0)) end, args = { u } },
    -- chains: gradients flow through non-leaf nodes
    { 'topk of gather of masked_fill', torch = 'lambda x, i, m: torch.gather(x.masked_fill(m, 0), 1, i).topk(2)[0]',
      fn = function(t, i, m) return (t:masked_fill(m, 0):gather(1, i):topk(2)) end, args = { x, gi1, mask } },
  })

  describe('finite differences (f64)', function()
    lumen.manual_seed(32)
    local d = lumen.randn(3, 4, 'f64')
    local ds = lumen.randn(3, 2, 'f64')
    local d4 = lumen.randn(2, 4, 'f64')
    local dbig = lumen.randn(3, 5, 'f64')
    for _, c in ipairs {
      { 'gather', function(t) return t:gather(1, gi1) end, { d } },
      { 'scatter', function(t, s) return t:scatter(1, si1, s) end, { d, ds } },
      { 'scatter, src larger than index', function(t, s) return t:scatter(1, si1, s) end, { d, dbig } },
      { 'scatter_add', function(t, s) return t:scatter_add(0, sadd, s) end, { d, d4 } },
      { 'index_select', function(t) return t:index_select(1, i64 { 3, 3, 0 }) end, { d } },
      { 'masked_select', function(t) return t:masked_select(mask) end, { d } },
      { 'masked_select, input broadcast', function(t) return t:masked_select(mask) end, { lumen.randn(4, 'f64') } },
      { 'masked_fill', function(t) return t:masked_fill(mask, 7) end, { d } },
      { 'sort', function(t) return (t:sort(1, true)) end, { d } },
      { 'topk', function(t) return (t:topk(3, 1)) end, { d } },
      -- through views and elementwise ops
      { 'gather of a transposed view', function(t) return t:t():gather(0, gi1:t()) end, { d } },
      { 'index_select of a product', function(t) return (t * t):index_select(0, i64 { 2, 2, 1 }) end, { d } },
      { 'sort of a slice', function(t) return (t[{ {}, { 1, 4 } }]:sort(0)) end, { d } },
    } do
      it(c[1], function() assert(gradcheck(c[2], c[3])) end)
    end
  end)

  describe('recording', function()
    local xg = x:detach():requires_grad_()
    local fns = {
      function(t) return t:gather(1, gi1) end, function(t) return t:scatter(1, si1, src) end,
      function(t) return t:scatter_add(0, sadd, src4) end, function(t) return t:index_select(0, i64 { 1 }) end,
      function(t) return t:masked_select(mask) end, function(t) return t:masked_fill(mask, 1) end,
      function(t) return (t:sort()) end, function(t) return (t:topk(2)) end,
    }

    it('records nothing under no_grad or without requires_grad', function()
      for _, f in ipairs(fns) do
        gradcase.no_grad_recorded(f(x))
        gradcase.no_grad_recorded(lumen.no_grad(f, xg))
        assert.is_true(f(xg).requires_grad)
      end
    end)

    it('frees nodes and saved tensors, after backward or without it', function()
      gradcase.assert_no_leak(function()
        for _, f in ipairs(fns) do
          local l = x:detach():requires_grad_()
          local y = f(l)
          y:backward(lumen.ones(y:size()))
          f(l)
        end
      end)
    end)

    it('never records indices, argsort or unique', function()
      local v, i = xg:sort(1)
      assert.is_true(v.requires_grad)
      gradcase.no_grad_recorded(i)
      local tv, ti = xg:topk(2)
      assert.is_true(tv.requires_grad)
      gradcase.no_grad_recorded(ti)
      gradcase.no_grad_recorded(xg:argsort())
      gradcase.no_grad_recorded(xg:unique())
      gradcase.no_grad_recorded(xg:nonzero())
    end)

    it('records scatter when only src requires grad, but not into integers', function()
      local sg = src:detach():requires_grad_()
      local y = x:scatter(1, si1, sg)
      assert.are.equal('scatter', y.grad_fn)
      gradcase.no_grad_recorded(lumen.zeros(3, 4, 'i64'):scatter(1, si1, sg))
    end)

    it('gives src its own dtype of gradient', function()
      local sg = lumen.ones(3, 2, 'f32'):requires_grad_()
      local y = lumen.zeros(3, 4, 'f64'):scatter_add(1, si1, sg)
      assert.are.equal('f64', y:dtype())
      y:backward(lumen.ones(3, 4, 'f64'))
      assert.are.equal('f32', sg.grad:dtype())
      check.assert_close(sg.grad, lumen.ones(3, 2, 'f32'))
    end)

    it('refuses in-place and out= forms that autograd would have to track', function()
      local msg = 'writing into an existing tensor'
      local t = x:clone():requires_grad_()
      assert.has_error(function() t:scatter_(1, si1, src) end)
      assert.has_error(function() t:scatter_add_(1, si1, src) end)
      assert.has_error(function() t:masked_fill_(mask, 0) end)
      for _, f in ipairs {
        function() t:scatter_(1, si1, src) end,
        function() x:clone():scatter_(1, si1, src:detach():requires_grad_()) end,
        function() t:masked_fill_(mask, 0) end,
        function() x:masked_fill(mask, 0, t) end,
        function() t:masked_fill(mask, 0, x:clone()) end,
      } do
        local ok, err = pcall(f)
        assert.is_false(ok)
        assert.truthy(tostring(err):find(msg, 1, true), err)
        assert.truthy(tostring(err):find('^.-lumen%.%a+'), err)
      end
      -- t is untouched, and grad mode off allows the write
      check.assert_close(t, x)
      lumen.no_grad(function() t:masked_fill_(mask, 0) end)
      check.assert_close(t, x:masked_fill(mask, 0))
    end)
  end)
end)
