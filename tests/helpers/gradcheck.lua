-- gradcheck.lua: compares autograd's gradients with central finite
-- differences in float64.
--
--   local ok, msg = gradcheck(function(x, w) return lumen.matmul(x, w) end,
--                             { lumen.randn(3, 4, 'f64'), lumen.randn(4, 2, 'f64') })
--
-- The function's output is reduced to a scalar as sum(out * r) with a fixed
-- random r (backward is seeded with r), so every output element counts with
-- its own weight. Inputs that
-- are float tensors get requires_grad; others pass through. opts: eps (1e-6),
-- atol (1e-5), rtol (1e-4), only = {indices of inputs to check}.
local lumen = require 'lumen'

local function flat_get(t, i) return t:reshape(-1)[i] end

local function scalar_of(f, inputs, r)
  return lumen.no_grad(function()
    return (f(unpack(inputs, 1, table.maxn(inputs))):to('f64') * r):sum():item()
  end)
end

return function(f, inputs, opts)
  opts = opts or {}
  local eps, atol, rtol = opts.eps or 1e-6, opts.atol or 1e-5, opts.rtol or 1e-4
  local leaves = {}
  for i = 1, table.maxn(inputs) do
    local x = inputs[i]
    if lumen.is_tensor(x) and (x:dtype() == 'f64' or x:dtype() == 'f32') then
      leaves[i] = x:detach():clone():requires_grad_()
    else
      leaves[i] = x
    end
  end
  local out = f(unpack(leaves, 1, table.maxn(inputs)))
  lumen.manual_seed(1234)
  local r = lumen.randn(out:size(), 'f64')
  out:backward(r:to(out:dtype()))
  local check_only = {}
  for _, i in ipairs(opts.only or {}) do check_only[i] = true end
  for i, x in pairs(leaves) do
    if lumen.is_tensor(x) and x.requires_grad and (not opts.only or check_only[i]) then
      local analytic = x.grad and x.grad:reshape(-1) or lumen.zeros(x:numel(), 'f64')
      local base = x:detach()
      local flat = base:reshape(-1) -- a view: writing it changes the input
      for k = 0, x:numel() - 1 do
        local v = flat_get(base, k)
        flat[k] = v + eps
        local args = {}
        for j = 1, table.maxn(leaves) do args[j] = lumen.is_tensor(leaves[j]) and leaves[j]:detach() or leaves[j] end
        local fp = scalar_of(f, args, r)
        flat[k] = v - eps
        local fm = scalar_of(f, args, r)
        flat[k] = v
        local numeric = (fp - fm) / (2 * eps)
        local a = analytic[k]
        if math.abs(a - numeric) > atol + rtol * math.abs(numeric) or a ~= a then
          return false, string.format('input %d element %d: autograd %.10g, finite differences %.10g', i, k, a, numeric)
        end
      end
    end
  end
  return true
end
