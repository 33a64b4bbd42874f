-- linalg.lua: matrix products on OpenBLAS (f32, f64).
--   matmul(a, b)  torch.matmul rules: 1-D operands are promoted and the added
--                 dim removed, batch dims broadcast
--   mm, bmm, mv, dot, outer: the fixed-rank forms, checked up front
--   addmm(c, a, b, {beta = 1, alpha = 1}) = beta * c + alpha * (a @ b)
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx
local call, handle, export = core.call, core.handle, core.export

return function(lumen)
  -- "2x3" (or "scalar") for error messages.
  local function shape_str(t)
    local i = core.info(t)
    if i.ndim == 0 then return 'scalar' end
    local s = {}
    for k = 0, i.ndim - 1 do s[k + 1] = tostring(tonumber(i.shape[k])) end
    return table.concat(s, 'x')
  end

  -- Both operands are tensors of the given ranks, or an error naming op.
  local function operands(op, a, b, ra, rb, what)
    local ha, hb = handle(a, op, 'first operand'), handle(b, op, 'second operand')
    local na, nb = core.info(a).ndim, core.info(b).ndim
    if (ra and na ~= ra) or (rb and nb ~= rb) then
      error(string.format('lumen.%s: expected %s, got %s and %s', op, what, shape_str(a), shape_str(b)), 3)
    end
    return ha, hb
  end

  -- lm_matmul(ha, hb) whose errors name op (mm, bmm, ...) instead of matmul.
  local function product(op, ha, hb)
    local out = core.out1
    out[0] = nil
    if C.lm_matmul(ctx, ha, hb, out) ~= 0 then core.fail_as(op, 3) end
    return core.wrap(out[0])
  end

  export(lumen, 'matmul', function(a, b)
    local ha, hb = operands('matmul', a, b)
    return call(C.lm_matmul, ha, hb, core.out1)
  end)

  export(lumen, 'mm', function(a, b)
    local ha, hb = operands('mm', a, b, 2, 2, '2-D matrices')
    return product('mm', ha, hb)
  end)

  export(lumen, 'bmm', function(a, b)
    local ha, hb = operands('bmm', a, b, 3, 3, '3-D tensors')
    if a:size(0) ~= b:size(0) then
      error(string.format('lumen.bmm: batch sizes differ (%s and %s)', shape_str(a), shape_str(b)), 2)
    end
    return product('bmm', ha, hb)
  end)

  export(lumen, 'mv', function(a, b)
    local ha, hb = operands('mv', a, b, 2, 1, 'a 2-D matrix and a 1-D vector')
    return product('mv', ha, hb)
  end)

  export(lumen, 'dot', function(a, b)
    local ha, hb = operands('dot', a, b, 1, 1, '1-D vectors')
    if a:size(0) ~= b:size(0) then
      error(string.format('lumen.dot: lengths differ (%s and %s)', shape_str(a), shape_str(b)), 2)
    end
    return product('dot', ha, hb)
  end)

  -- outer(a, b): a as a column times b as a row, through views (no copy).
  export(lumen, 'outer', function(a, b)
    local ha, hb = operands('outer', a, b, 1, 1, '1-D vectors')
    local col = call(C.lm_unsqueeze, ha, 1, core.out1)
    local row = call(C.lm_unsqueeze, hb, 0, core.out1)
    return product('outer', col.h, row.h)
  end)

  export(lumen, 'addmm', function(c, a, b, opts)
    local hc = handle(c, 'addmm', 'input')
    local ha, hb = operands('addmm', a, b, 2, 2, '2-D matrices')
    local beta, alpha = 1, 1
    if opts ~= nil then
      if type(opts) ~= 'table' then
        error('lumen.addmm: options must be a table {beta = ..., alpha = ...}, got ' .. type(opts), 2)
      end
      beta, alpha = opts.beta or 1, opts.alpha or 1
      if type(beta) ~= 'number' or type(alpha) ~= 'number' then
        error('lumen.addmm: beta and alpha must be numbers', 2)
      end
    end
    return call(C.lm_addmm, hc, ha, hb, beta, alpha, core.out1)
  end)
end
