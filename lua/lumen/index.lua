-- index.lua: gathering and scattering by index tensors, selecting by masks,
-- sorting, topk and unique. Index tensors are i64 (i32 accepted); indices
-- must lie in [0, size) of their dimension, as in PyTorch.
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx
local call, handle, export = core.call, core.handle, core.export

return function(lumen)
  -- A number, boolean or one-element tensor as a Lua number.
  local function number_arg(v, op, what)
    if type(v) == 'boolean' then return v and 1 or 0 end
    if core.is_tensor(v) and v:numel() == 1 then v = v:item() end
    if type(v) == 'boolean' then return v and 1 or 0 end
    if type(v) ~= 'number' then
      error(string.format('lumen.%s: %s must be a number, got %s', op, what, type(v)), 3)
    end
    return v
  end

  local int_arg = core.int_arg

  local function dim_arg(d, op, default)
    return core.int_arg(d, op, 'dimension', default)
  end

  -- Results of a C call with two tensor out-slots (either may be unused).
  local function two_outputs(st)
    if st ~= 0 then core.fail(2) end
    local a, b = core.out1[0], core.out2[0]
    return a ~= nil and core.wrap(a) or nil, b ~= nil and core.wrap(b) or nil
  end
  local function clear_outs()
    core.out1[0], core.out2[0], core.out3[0] = nil, nil, nil
  end

  ---------------------------------------------------------------------------
  -- gather(t, dim, index): out[i][j] = t[index[i][j]][j] (dim 0), ...
  export(lumen, 'gather', function(t, dim, index)
    return call(C.lm_gather, handle(t, 'gather', 'input'), dim_arg(dim, 'gather'),
      handle(index, 'gather', 'index'), core.out1)
  end)

  -- src: a tensor, or a number written at every index.
  local function scatter_src(t, src, op)
    if core.is_tensor(src) then return src end
    local v = number_arg(src, op, 'src')
    local info = core.info(t)
    local s = call(C.lm_empty_on, info.device, info.dtype, 0, core.shape_buf, core.out1) -- where t is
    core.check(C.lm_fill(ctx, s.h, v))
    return s
  end

  local function scatter_fn(op, mode, inplace)
    return function(t, dim, index, src)
      local th = handle(t, op, 'input')
      local ih = handle(index, op, 'index')
      if src == nil then error(string.format('lumen.%s: src is missing (a tensor or a number)', op), 2) end
      local s = scatter_src(t, src, op)
      local d = dim_arg(dim, op)
      if inplace then
        core.check(C.lm_scatter(ctx, th, d, ih, s.h, mode, th, nil))
        return t
      end
      return call(C.lm_scatter, th, d, ih, s.h, mode, nil, core.out1)
    end
  end
  export(lumen, 'scatter', scatter_fn('scatter', C.LM_SCATTER_SET, false))
  export(lumen, 'scatter_add', scatter_fn('scatter_add', C.LM_SCATTER_ADD, false))
  export(lumen, 'scatter_', scatter_fn('scatter_', C.LM_SCATTER_SET, true))
  export(lumen, 'scatter_add_', scatter_fn('scatter_add_', C.LM_SCATTER_ADD, true))

  -- index_select(t, dim, index): the positions index (1-D) along dim.
  export(lumen, 'index_select', function(t, dim, index)
    return call(C.lm_index_select, handle(t, 'index_select', 'input'), dim_arg(dim, 'index_select'),
      handle(index, 'index_select', 'index'), core.out1)
  end)

  ---------------------------------------------------------------------------
  -- masks (bool tensors that broadcast against t)
  export(lumen, 'masked_select', function(t, mask)
    return call(C.lm_masked_select, handle(t, 'masked_select', 'input'),
      handle(mask, 'masked_select', 'mask'), core.out1)
  end)

  -- masked_fill(t, mask, value[, dst]): a copy of t (broadcast with mask)
  -- with value where mask is true; written into dst when given.
  local function masked_fill(t, mask, value, dst)
    local th = handle(t, 'masked_fill', 'input')
    local mh = handle(mask, 'masked_fill', 'mask')
    local v = number_arg(value, 'masked_fill', 'value')
    if dst ~= nil then
      core.check(C.lm_masked_fill(ctx, th, mh, v, handle(dst, 'masked_fill', 'destination'), nil))
      return dst
    end
    return call(C.lm_masked_fill, th, mh, v, nil, core.out1)
  end
  export(lumen, 'masked_fill', masked_fill)
  export(lumen, 'masked_fill_', function(t, mask, value) return masked_fill(t, mask, value, t) end)

  -- nonzero(t): N x ndim i64 positions of the nonzero elements, row-major.
  export(lumen, 'nonzero', function(t)
    return call(C.lm_nonzero, handle(t, 'nonzero', 'input'), core.out1)
  end)

  ---------------------------------------------------------------------------
  -- sorting: stable; NaN sorts above every number.
  -- sort(t, dim=-1, descending=false) -> values, indices
  export(lumen, 'sort', function(t, dim, descending)
    local h = handle(t, 'sort', 'input')
    clear_outs()
    return two_outputs(C.lm_sort(ctx, h, dim_arg(dim, 'sort', -1), descending and 1 or 0, core.out1, core.out2))
  end)

  -- argsort(t, dim=-1, descending=false) -> indices
  export(lumen, 'argsort', function(t, dim, descending)
    local h = handle(t, 'argsort', 'input')
    clear_outs()
    local _, idx = two_outputs(C.lm_sort(ctx, h, dim_arg(dim, 'argsort', -1), descending and 1 or 0, nil, core.out2))
    return idx
  end)

  -- topk(t, k, dim=-1, largest=true) -> values, indices (sorted)
  export(lumen, 'topk', function(t, k, dim, largest)
    local h = handle(t, 'topk', 'input')
    int_arg(k, 'topk', 'k')
    if largest == nil then largest = true end
    clear_outs()
    return two_outputs(C.lm_topk(ctx, h, k, dim_arg(dim, 'topk', -1), largest and 1 or 0, core.out1, core.out2))
  end)

  -- unique(t, {return_inverse=, return_counts=}) -> values[, inverse][, counts]
  -- values: the distinct elements of t (flattened), ascending; inverse: for
  -- each element of t, its position in values; counts: how often each occurs.
  export(lumen, 'unique', function(t, opts)
    local h = handle(t, 'unique', 'input')
    if opts ~= nil and type(opts) ~= 'table' then
      error('lumen.unique: options must be a table {return_inverse=, return_counts=}', 2)
    end
    opts = opts or {}
    local want_inv, want_cnt = opts.return_inverse and true or false, opts.return_counts and true or false
    clear_outs()
    local st = C.lm_unique(ctx, h, core.out1, want_inv and core.out2 or nil, want_cnt and core.out3 or nil)
    if st ~= 0 then core.fail(1) end
    local v, i, c = core.out1[0], core.out2[0], core.out3[0]
    local values = core.wrap(v)
    local inverse = want_inv and core.wrap(i) or nil
    local counts = want_cnt and core.wrap(c) or nil
    if want_inv and want_cnt then return values, inverse, counts end
    if want_inv then return values, inverse end
    if want_cnt then return values, counts end
    return values
  end)
end
