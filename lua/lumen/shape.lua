-- shape.lua: joining, splitting, reordering and padding (PyTorch semantics).
-- Dimensions are 0-based and negatives count from the end; inputs in a list
-- are numbered from 0 in error messages, as in PyTorch.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C = core.C
local call, handle, export = core.call, core.handle, core.export

return function(lumen)
  local MAXD = 8
  local dims_buf = ffi.new('int32_t[8]')
  local shifts_buf = ffi.new('int64_t[8]')
  local pad_buf = ffi.new('int64_t[16]')

  local function is_int(v) return type(v) == 'number' and v == math.floor(v) end

  local int_arg = core.int_arg

  -- The size of dimension dim of t, or an error naming op.
  local function dim_size(t, dim, op)
    local s = t:size()
    local w = dim < 0 and dim + #s or dim
    if w < 0 or w >= #s then
      error(string.format('lumen.%s: dimension %d out of range for a %d-D tensor', op, dim, #s), 3)
    end
    return s[w + 1]
  end

  -- A list of tensors (as a Lua list), checked.
  local function tensor_list(list, op)
    if type(list) ~= 'table' or core.is_tensor(list) then
      error(string.format('lumen.%s: expected a list of tensors, got %s', op, core.is_tensor(list) and 'a tensor' or type(list)), 3)
    end
    local n = #list
    if n == 0 then error(string.format('lumen.%s: expected a non-empty list of tensors', op), 3) end
    for i = 1, n do
      if not core.is_tensor(list[i]) then
        error(string.format('lumen.%s: input %d is %s, expected a tensor', op, i - 1, type(list[i])), 3)
      end
    end
    return n
  end

  -- A dims argument: one integer or a list of them; at most 8.
  local function dims_list(dims, op, what)
    if type(dims) == 'number' then dims = { dims } end
    if type(dims) ~= 'table' then
      error(string.format('lumen.%s: %s must be an integer or a list of integers, got %s', op, what, type(dims)), 3)
    end
    if #dims > MAXD then error(string.format('lumen.%s: %d %s given, at most %d', op, #dims, what, MAXD), 3) end
    for i = 1, #dims do
      if not is_int(dims[i]) then
        error(string.format('lumen.%s: %s entry %d is %s, expected an integer', op, what, i, tostring(dims[i])), 3)
      end
    end
    return dims
  end

  -- cat(list, dim=0): joins tensors along an existing dimension; dtypes promote.
  local function cat(list, dim)
    local n = tensor_list(list, 'cat')
    local hs = ffi.new('lm_tensor*[?]', n)
    for i = 1, n do hs[i - 1] = handle(list[i], 'cat', 'input') end
    -- a tail call, so errors point at the caller
    return call(C.lm_cat, n, hs, int_arg(dim or 0, 'cat', 'dim'), core.out1)
  end
  lumen.cat = cat

  -- stack(list, dim=0): joins equal-shaped tensors along a new dimension.
  function lumen.stack(list, dim)
    local n = tensor_list(list, 'stack')
    dim = int_arg(dim or 0, 'stack', 'dim')
    local s0 = list[1]:size()
    local nd = #s0
    local key = table.concat(s0, 'x')
    for i = 2, n do
      local si = list[i]:size()
      if table.concat(si, 'x') ~= key or #si ~= nd then
        error(string.format('lumen.stack: input %d has shape %s, expected %s like input 0 (stack needs equal shapes)',
          i - 1, #si == 0 and 'scalar' or table.concat(si, 'x'), nd == 0 and 'scalar' or key), 2)
      end
    end
    if nd >= MAXD then error(string.format('lumen.stack: cannot stack %d-D tensors (at most %d dimensions)', nd, MAXD), 2) end
    if dim < -(nd + 1) or dim > nd then
      error(string.format('lumen.stack: dimension %d out of range for stacking %d-D tensors', dim, nd), 2)
    end
    if dim < 0 then dim = dim + nd + 1 end
    local u = {}
    for i = 1, n do u[i] = list[i]:unsqueeze(dim) end
    return cat(u, dim)
  end

  -- split(t, size_or_sizes, dim=0): a list of views. An integer gives chunks
  -- of that size (the last may be smaller); a list gives the sizes, which
  -- must add up to the dimension's size.
  export(lumen, 'split', function(t, sizes, dim)
    local h = handle(t, 'split', 'tensor')
    dim = int_arg(dim or 0, 'split', 'dim')
    local n = dim_size(t, dim, 'split')
    local parts = {}
    if type(sizes) == 'number' then
      local size = int_arg(sizes, 'split', 'split size')
      if size < 0 then error(string.format('lumen.split: split size %d is negative', size), 2) end
      if size == 0 and n ~= 0 then
        error(string.format('lumen.split: split size 0 is only allowed for a dimension of size 0, got size %d', n), 2)
      end
      local count = size == 0 and 1 or math.max(1, math.ceil(n / size))
      for k = 0, count - 1 do
        local lo = k * size
        parts[k + 1] = call(C.lm_slice, h, dim, lo, math.min(lo + size, n), 1, core.out1)
      end
    elseif type(sizes) == 'table' then
      local total = 0
      for i = 1, #sizes do
        local s = sizes[i]
        if not is_int(s) or s < 0 then
          error(string.format('lumen.split: size %d is %s, expected a non-negative integer', i, tostring(s)), 2)
        end
        total = total + s
      end
      if total ~= n then
        error(string.format('lumen.split: sizes {%s} add up to %d, expected %d (the size of dimension %d)',
          table.concat(sizes, ', '), total, n, dim), 2)
      end
      local lo = 0
      for i = 1, #sizes do
        parts[i] = call(C.lm_slice, h, dim, lo, lo + sizes[i], 1, core.out1)
        lo = lo + sizes[i]
      end
    else
      error('lumen.split: expected a split size or a list of sizes, got ' .. type(sizes), 2)
    end
    return parts
  end)

  -- chunk(t, n, dim=0): at most n views of ceil(size / n) along dim.
  export(lumen, 'chunk', function(t, chunks, dim)
    handle(t, 'chunk', 'tensor')
    chunks = int_arg(chunks, 'chunk', 'chunks')
    if chunks <= 0 then error(string.format('lumen.chunk: chunks must be positive, got %d', chunks), 2) end
    dim = int_arg(dim or 0, 'chunk', 'dim')
    local n = dim_size(t, dim, 'chunk')
    if n == 0 then -- PyTorch gives `chunks` empty pieces here
      local sizes = {}
      for i = 1, chunks do sizes[i] = 0 end
      return t:split(sizes, dim)
    end
    return t:split(math.ceil(n / chunks), dim)
  end)

  -- unbind(t, dim=0): the list of slices t:select(dim, i), as one op for
  -- autograd (its backward writes all the slices' gradients at once).
  export(lumen, 'unbind', function(t, dim)
    local h = handle(t, 'unbind', 'tensor')
    dim = int_arg(dim or 0, 'unbind', 'dim')
    local n = dim_size(t, dim, 'unbind')
    local outs = ffi.new('lm_tensor*[?]', math.max(n, 1))
    core.check(C.lm_unbind(core.ctx, h, dim, outs))
    local parts = {}
    for i = 0, n - 1 do parts[i + 1] = core.wrap(outs[i]) end
    return parts
  end)

  -- flip(t, dims): reverses the order along each of dims (a list or one dim).
  export(lumen, 'flip', function(t, dims, ...)
    local h = handle(t, 'flip', 'tensor')
    if type(dims) == 'number' and select('#', ...) > 0 then dims = { dims, ... } end
    dims = dims_list(dims, 'flip', 'dims')
    for i = 1, #dims do dims_buf[i - 1] = dims[i] end
    return call(C.lm_flip, h, #dims, dims_buf, core.out1)
  end)

  -- roll(t, shifts, dims): shifts elements along dims, wrapping around; with
  -- dims nil, rolls the flattened tensor (one shift) and keeps the shape.
  export(lumen, 'roll', function(t, shifts, dims)
    local h = handle(t, 'roll', 'tensor')
    shifts = dims_list(shifts, 'roll', 'shifts')
    if dims == nil then
      if #shifts ~= 1 then
        error(string.format('lumen.roll: %d shifts without dims, expected one shift for the flattened tensor', #shifts), 2)
      end
      shifts_buf[0] = shifts[1]
      return call(C.lm_roll, h, 0, shifts_buf, nil, core.out1)
    end
    dims = dims_list(dims, 'roll', 'dims')
    if #shifts ~= #dims or #dims == 0 then
      error(string.format('lumen.roll: %d shifts for %d dims, they must pair up', #shifts, #dims), 2)
    end
    for i = 1, #dims do
      shifts_buf[i - 1] = shifts[i]
      dims_buf[i - 1] = dims[i]
    end
    return call(C.lm_roll, h, #dims, shifts_buf, dims_buf, core.out1)
  end)

  -- pad(t, pads, mode='constant', value=0): pads holds (before, after) pairs
  -- from the last dimension backwards, as torch.nn.functional.pad.
  local modes = { constant = C.LM_PAD_CONSTANT, reflect = C.LM_PAD_REFLECT, replicate = C.LM_PAD_REPLICATE }
  export(lumen, 'pad', function(t, pads, mode, value)
    local h = handle(t, 'pad', 'tensor')
    if type(pads) ~= 'table' then error('lumen.pad: pads must be a list of integers, got ' .. type(pads), 2) end
    local n = #pads
    if n % 2 ~= 0 then
      error(string.format('lumen.pad: pads has %d entries, expected (before, after) pairs', n), 2)
    end
    if n > 2 * MAXD then error(string.format('lumen.pad: %d pairs, at most %d', n / 2, MAXD), 2) end
    for i = 1, n do
      if not is_int(pads[i]) then
        error(string.format('lumen.pad: pads entry %d is %s, expected an integer', i, tostring(pads[i])), 2)
      end
      pad_buf[i - 1] = pads[i]
    end
    local code = modes[mode or 'constant']
    if code == nil then
      error(string.format("lumen.pad: unknown mode '%s' (expected 'constant', 'reflect' or 'replicate')", tostring(mode)), 2)
    end
    if type(value) == 'boolean' then value = value and 1 or 0 end
    if value ~= nil and type(value) ~= 'number' then
      error('lumen.pad: value must be a number, got ' .. type(value), 2)
    end
    return call(C.lm_pad, h, n / 2, pad_buf, code, value or 0, core.out1)
  end)
end
