-- gradcase.lua: PyTorch parity of autograd gradients, for the specs of
-- differentiable ops.
--
--   gradcase.parity(it, {      -- busted's it
--     { 'sum over dim 1', torch = 'lambda x: x.sum(1)',
--       fn = function(x) return x:sum(1) end, args = { x } },
--   })
--
-- For each case the float tensors of args become leaves that require grad
-- (as they are: a transposed or expanded view stays one), fn's output is
-- seeded with a fixed random gradient g, and the output and every leaf's
-- .grad are compared with PyTorch's grad_of on the same values. Other args
-- (index tensors, masks) pass through. Case options: tol (check.close
-- options), frozen = {i, ...} (float args that must not require grad).
-- Seeding backward directly keeps the check to the op under test.
local lumen = require 'lumen'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local assert = require 'luassert'

local M = {}

local function is_float(t)
  return lumen.is_tensor(t) and (t:dtype() == 'f32' or t:dtype() == 'f64')
end

-- The lumen side of one case: output and gradients, or an error message.
local function run_case(c, k)
  local frozen = {}
  for _, i in ipairs(c.frozen or {}) do frozen[i] = true end
  local leaves = {}
  for i, a in ipairs(c.args) do
    leaves[i] = (is_float(a) and not frozen[i]) and a:detach():requires_grad_() or a
  end
  local ok, res = pcall(function()
    local y = c.fn(unpack(leaves, 1, #c.args))
    lumen.manual_seed(1000 + k)
    local g = lumen.randn(y:size(), 'f64'):to(y:dtype())
    local r = { y = y, g = g, requires_grad = y.requires_grad, grads = {} }
    y:backward(g)
    for i, a in ipairs(c.args) do
      if is_float(a) then
        r.grads[i] = leaves[i].grad or lumen.zeros(a:size(), a:dtype())
      end
    end
    return r
  end)
  if not ok then return { error = res } end
  return res
end

function M.parity(it, cases)
  local got, batch = {}, {}
  for k, c in ipairs(cases) do
    got[k] = run_case(c, k)
    local names, case = {}, {}
    for i, a in ipairs(c.args) do
      names[i] = 'a' .. i
      case[names[i]] = a
    end
    case.g = got[k].g or lumen.zeros(1)
    -- frozen args get no grad in PyTorch either: detach them inside
    local frozen = {}
    for _, i in ipairs(c.frozen or {}) do frozen[i] = true end
    local call = {}
    for i = 1, #c.args do call[i] = frozen[i] and (names[i] .. '.detach()') or names[i] end
    case[1] = string.format('grad_of(lambda %s: (%s)(%s), [%s], g)', table.concat(names, ', '), c.torch,
      table.concat(call, ', '), table.concat(names, ', '))
    batch[k] = case
  end
  local ref = oracle.run(batch)
  for k, c in ipairs(cases) do
    it(c[1], function()
      local r, e = got[k], ref[k]
      assert.is_nil(r.error)
      assert.is_nil(e.error)
      assert.is_true(r.requires_grad, 'output does not require grad')
      local tol = c.tol or { rtol = 1e-5, atol = 1e-6 }
      check.assert_close(r.y, e[1], tol, 'output')
      local frozen = {}
      for _, i in ipairs(c.frozen or {}) do frozen[i] = true end
      for i, a in ipairs(c.args) do
        if is_float(a) and not frozen[i] then check.assert_close(r.grads[i], e[i + 1], tol, 'gradient of argument ' .. i) end
      end
    end)
  end
end

-- {output, gradient of each input} of sum(f(xs...) * g), as the oracle's
-- grad_of: each x becomes a leaf by detach, which keeps its layout (a
-- strided input reaches the op as it is). An input with no gradient gives nil.
function M.grad_of(f, xs, g)
  local leaves = {}
  for i, x in ipairs(xs) do leaves[i] = x:detach():requires_grad_() end
  local y = f(unpack(leaves))
  y:backward(g)
  local out = { y }
  for i, l in ipairs(leaves) do out[i + 1] = l.grad end
  return out
end

-- A leaf's gradient must not have been touched: no .grad at all.
function M.no_grad_recorded(y)
  assert.is_false(y.requires_grad)
  assert.is_nil(y.grad_fn)
end

-- Live bytes after running fn (forward and backward) n times and
-- collecting garbage, against before: nodes and saved tensors must go.
function M.assert_no_leak(fn, n)
  collectgarbage('collect')
  collectgarbage('collect')
  local before = lumen.memory().live
  for _ = 1, n or 10 do fn() end
  collectgarbage('collect')
  collectgarbage('collect')
  assert.are.equal(before, lumen.memory().live)
end

return M
