-- tensor.lua: creating tensors, reading their layout, views, indexing and
-- conversion. Dimensions and positions are 0-based; negatives count from
-- the end. Tables of sizes are ordinary Lua lists.
local ffi = require 'ffi'
local bit = require 'bit'
local core = require 'lumen.core'
local C, ctx, Tensor, mt = core.C, core.ctx, core.Tensor, core.tensor_mt
local call, handle, export, wrap = core.call, core.handle, core.export, core.wrap

return function(lumen)
  local MAXD = 8
  local int_arg = core.int_arg
  local shape_buf = ffi.new('int64_t[8]')
  local stride_buf = ffi.new('int64_t[8]')
  local dims_buf = ffi.new('int32_t[8]')

  -- Fills shape_buf from a Lua list; returns its length.
  -- infer: -1 may stand for one size (view, reshape, expand)
  local function put_shape(list, op, infer)
    local n = #list
    if n > MAXD then error(string.format('lumen.%s: %d dimensions, at most %d', op, n, MAXD), 4) end
    for i = 1, n do
      local v = list[i]
      if type(v) ~= 'number' or v ~= math.floor(v) or v >= 2 ^ 63 or (v < 0 and not (infer and v == -1)) then
        error(string.format('lumen.%s: size %d is %s, expected a non-negative integer', op, i, tostring(v)), 4)
      end
      shape_buf[i - 1] = v
    end
    return n
  end
  core.put_shape = put_shape
  core.shape_buf, core.stride_buf, core.dims_buf = shape_buf, stride_buf, dims_buf

  -- Parses (2, 3, 'f64'), ({2, 3}, 'f64') or ({2, 3}, {dtype = 'f64', device = 'cuda'}):
  -- returns the shape list, the dtype code, the device code and whether
  -- pin_memory was asked (empty, zeros, ones).
  local function shape_args(op, ...)
    local a = ...
    local shape, rest
    if type(a) == 'table' and not core.is_tensor(a) then
      shape, rest = a, select(2, ...)
    else
      shape = {}
      local n = select('#', ...)
      local i = 1
      while i <= n and type((select(i, ...))) == 'number' do
        shape[i] = (select(i, ...))
        i = i + 1
      end
      rest = select(i, ...)
    end
    local dtype, device, pin = rest, nil, nil
    if type(rest) == 'table' then dtype, device, pin = rest.dtype, rest.device, rest.pin_memory end
    local code = core.device_arg(device, op, 3)
    if pin ~= nil and type(pin) ~= 'boolean' then
      error(string.format('lumen.%s: pin_memory must be true or false, got %s', op, tostring(pin)), 3)
    end
    if pin and code ~= C.LM_CPU then
      error(string.format("lumen.%s: pin_memory is for CPU tensors, got device '%s'", op, tostring(device)), 3)
    end
    return shape, core.dtype_code(dtype, 3), code, pin
  end
  core.shape_args = shape_args

  -- pin: in page-locked memory when a backend can pin (core.pinning loads
  -- the CUDA backend first, as torch does)
  local function empty(op, shape, dtype, device, pin)
    local n = put_shape(shape, op)
    if pin then
      if core.pinning then core.pinning() end
      return call(C.lm_empty_pinned, dtype, n, shape_buf, core.out1)
    end
    return call(C.lm_empty_on, device or C.LM_CPU, dtype, n, shape_buf, core.out1)
  end
  core.empty_on = empty

  -- A creation function's last argument: a dtype name or {dtype =, device =};
  -- returns the dtype (a name or nil) and the device code.
  local function dtype_device(v, op)
    if type(v) == 'table' then return v.dtype, core.device_arg(v.device, op, 3) end
    return v, C.LM_CPU
  end
  core.dtype_device = dtype_device

  -- empty(2, 3[, dtype]) or empty({2, 3}[, {dtype =, device =, pin_memory =}]);
  -- zeros and ones alike
  function lumen.empty(...)
    local shape, dtype, device, pin = shape_args('empty', ...)
    return empty('empty', shape, dtype, device, pin)
  end
  function lumen.zeros(...)
    local shape, dtype, device, pin = shape_args('zeros', ...)
    local t = empty('zeros', shape, dtype, device, pin)
    core.check(C.lm_fill(ctx, t.h, 0))
    return t
  end
  function lumen.ones(...)
    local shape, dtype, device, pin = shape_args('ones', ...)
    local t = empty('ones', shape, dtype, device, pin)
    core.check(C.lm_fill(ctx, t.h, 1))
    return t
  end
  -- full({2, 3}, value[, dtype or {dtype =, device =}])
  function lumen.full(shape, value, dtype)
    if type(shape) == 'number' then shape = { shape } end
    if type(shape) ~= 'table' then error('lumen.full: shape must be a list of sizes', 2) end
    if type(value) == 'boolean' then value = value and 1 or 0 end
    if type(value) ~= 'number' then error('lumen.full: value must be a number', 2) end
    local dt, device = dtype_device(dtype, 'full')
    local t = empty('full', shape, core.dtype_code(dt, 2), device)
    core.check(C.lm_fill(ctx, t.h, value))
    return t
  end

  -- arange(stop) or arange(start, stop[, step][, dtype]): [start, stop);
  -- the dtype may be {dtype =, device =} (so may linspace's and eye's)
  function lumen.arange(a, b, c, d)
    local start, stop, step, dtype = 0, a, 1, nil
    if type(b) == 'number' then
      start, stop = a, b
      if type(c) == 'number' then step, dtype = c, d else dtype = c end
    else
      dtype = b
    end
    if type(start) ~= 'number' or type(stop) ~= 'number' then error('lumen.arange: bounds must be numbers', 2) end
    if step == 0 then error('lumen.arange: step must not be zero', 2) end
    local n = math.max(0, math.ceil((stop - start) / step))
    local device
    dtype, device = dtype_device(dtype, 'arange')
    if dtype == nil then
      local int = start == math.floor(start) and stop == math.floor(stop) and step == math.floor(step)
      dtype = int and 'i64' or 'f32'
    end
    return call(C.lm_arange_on, device, start, step, n, core.dtype_code(dtype, 2), core.out1)
  end
  function lumen.linspace(start, stop, n, dtype)
    if type(start) ~= 'number' or type(stop) ~= 'number' then error('lumen.linspace: bounds must be numbers', 2) end
    local dt, device = dtype_device(dtype, 'linspace')
    return call(C.lm_linspace_on, device, start, stop, core.int_arg(n, 'linspace', 'count'), core.dtype_code(dt, 2), core.out1)
  end
  function lumen.eye(n, m, dtype)
    if type(m) ~= 'number' then m, dtype = n, m end
    local dt, device = dtype_device(dtype, 'eye')
    return call(C.lm_eye_on, device, core.int_arg(n, 'eye', 'size'), core.int_arg(m, 'eye', 'size'), core.dtype_code(dt, 2),
      core.out1)
  end

  -- tensor(nested tables or a number[, dtype]): copies Lua values in.
  function lumen.tensor(data, dtype)
    if core.is_tensor(data) then return data:clone() end
    local shape, flat = {}, {}
    local any_bool = false
    local leaf -- the depth of the numbers: every one must sit at it
    local function walk(x, d)
      if type(x) == 'table' then
        if leaf and d >= leaf then error('lumen.tensor: ragged nested table (a table where a number was expected)', 4) end
        if shape[d] == nil then shape[d] = #x
        elseif shape[d] ~= #x then
          error(string.format('lumen.tensor: ragged nested table (dimension %d has lengths %d and %d)', d - 1, shape[d], #x), 4)
        end
        for i = 1, #x do walk(x[i], d + 1) end
      else
        leaf = leaf or d
        if d ~= leaf or shape[d] ~= nil then error('lumen.tensor: ragged nested table (a number where a table was expected)', 4) end
        if type(x) == 'boolean' then any_bool = true; x = x and 1 or 0
        elseif type(x) ~= 'number' then error('lumen.tensor: element is ' .. type(x) .. ', expected a number or boolean', 4) end
        flat[#flat + 1] = x
      end
    end
    walk(data, 1)
    local code = core.dtype_code(dtype or (any_bool and 'bool') or 'f32', 2)
    local t = empty('tensor', shape, code)
    if #flat > 0 then
      local buf = ffi.new('double[?]', #flat, flat)
      local n = put_shape(shape, 'tensor')
      local src = call(C.lm_from_ptr, C.LM_F64, n, shape_buf, nil, buf, core.out1)
      core.check(C.lm_copy_(ctx, t.h, src.h))
      src:free()
    end
    return t
  end

  -- from_ptr(ptr, shape[, dtype[, strides]]): wraps memory without copying.
  -- The memory must outlive every tensor made from it.
  local anchors = setmetatable({}, { __mode = 'k' })
  function lumen.from_ptr(ptr, shape, dtype, strides)
    if type(ptr) ~= 'cdata' then error('lumen.from_ptr: expected an FFI pointer, got ' .. type(ptr), 2) end
    if type(shape) ~= 'table' then error('lumen.from_ptr: shape must be a list of sizes', 2) end
    local n = put_shape(shape, 'from_ptr')
    local st = nil
    if strides then
      if type(strides) ~= 'table' or #strides ~= n then
        error(string.format('lumen.from_ptr: strides must be a list of %d integers like the shape', n), 2)
      end
      for i = 1, n do stride_buf[i - 1] = int_arg(strides[i], 'from_ptr', 'stride') end
      st = stride_buf
    end
    local t = call(C.lm_from_ptr, core.dtype_code(dtype, 2), n, shape_buf, st, ffi.cast('void*', ptr), core.out1)
    anchors[t] = ptr
    return t
  end

  ---------------------------------------------------------------------------
  -- layout
  function Tensor.dim(t) return core.info(t).ndim end
  Tensor.ndim = Tensor.dim
  function Tensor.numel(t) return tonumber(core.info(t).numel) end
  function Tensor.dtype(t) return core.dtype_names[core.info(t).dtype] end
  function Tensor.device(t) return core.device_names[core.info(t).device] end
  function Tensor.is_cuda(t) return core.info(t).device == C.LM_CUDA end
  function Tensor.is_contiguous(t) return core.info(t).contiguous ~= 0 end
  function Tensor.data_ptr(t) return core.info(t).data end
  -- size() -> list of sizes; size(d) -> one size; stride likewise
  local function per_dim(field, op)
    return function(t, d)
      local i = core.info(t)
      local v = i[field]
      if d ~= nil then
        d = int_arg(d, op)
        local w = d < 0 and d + i.ndim or d
        if w < 0 or w >= i.ndim then
          error(string.format('lumen.%s: dimension %d out of range for a %d-D tensor', op, d, i.ndim), 2)
        end
        return tonumber(v[w])
      end
      local s = {}
      for k = 0, i.ndim - 1 do s[k + 1] = tonumber(v[k]) end
      return s
    end
  end
  Tensor.size = per_dim('shape', 'size')
  Tensor.shape = Tensor.size
  Tensor.stride = per_dim('stride', 'stride')
  mt.__len = function(t)
    local i = core.info(t)
    return i.ndim > 0 and tonumber(i.shape[0]) or 0
  end

  ---------------------------------------------------------------------------
  -- views: they share storage with t
  local function view_like(fname, cfn)
    return function(t, ...)
      local shape = ...
      if type(shape) ~= 'table' then shape = { ... } end
      local n = put_shape(shape, fname, true)
      return call(cfn, handle(t, fname, 'tensor'), n, shape_buf, core.out1)
    end
  end
  export(lumen, 'view', view_like('view', C.lm_view))
  export(lumen, 'reshape', view_like('reshape', C.lm_reshape))
  export(lumen, 'expand', view_like('expand', C.lm_expand))
  function Tensor.expand_as(t, o)
    handle(o, 'expand_as', 'other')
    return t:expand(o:size())
  end
  function Tensor.view_as(t, o)
    handle(o, 'view_as', 'other')
    return t:view(o:size())
  end
  function Tensor.flatten(t) return t:reshape(-1) end

  -- slice(dim, start, stop[, step]): positions start, start+step, ... < stop
  export(lumen, 'slice', function(t, dim, start, stop, step)
    local h = handle(t, 'slice', 'tensor')
    return call(C.lm_slice, h, int_arg(dim, 'slice'), int_arg(start, 'slice', 'start', 0),
      int_arg(stop, 'slice', 'stop', 2 ^ 62), int_arg(step, 'slice', 'step', 1), core.out1)
  end)
  -- narrow(dim, start, length)
  export(lumen, 'narrow', function(t, dim, start, length)
    handle(t, 'narrow', 'tensor')
    dim, start, length = int_arg(dim, 'narrow'), int_arg(start, 'narrow', 'start'), int_arg(length, 'narrow', 'length')
    local n = t:size(dim)
    if start < 0 then start = start + n end
    if start < 0 or length < 0 or start + length > n then
      error(string.format('lumen.narrow: range [%d, %d) out of bounds for dimension %d of size %d',
        start, start + length, dim, n), 2)
    end
    return call(C.lm_slice, t.h, dim, start, start + length, 1, core.out1)
  end)
  export(lumen, 'select', function(t, dim, index)
    local h = handle(t, 'select', 'tensor')
    return call(C.lm_select, h, int_arg(dim, 'select'), int_arg(index, 'select', 'index'), core.out1)
  end)
  export(lumen, 'transpose', function(t, d0, d1)
    local h = handle(t, 'transpose', 'tensor')
    return call(C.lm_transpose, h, int_arg(d0, 'transpose', nil, 0), int_arg(d1, 'transpose', nil, 1), core.out1)
  end)
  function Tensor.t(t)
    if t:dim() ~= 2 then error('lumen.t: expected a 2-D tensor, got ' .. t:dim() .. '-D', 2) end
    return t:transpose(0, 1)
  end
  export(lumen, 'permute', function(t, ...)
    local p = ...
    if type(p) ~= 'table' then p = { ... } end
    local h = handle(t, 'permute', 'tensor')
    local nd = t:dim()
    if #p ~= nd then error(string.format('lumen.permute: %d dimensions given for a %d-D tensor', #p, nd), 2) end
    for k = 1, nd do dims_buf[k - 1] = int_arg(p[k], 'permute') end
    return call(C.lm_permute, h, dims_buf, core.out1)
  end)
  export(lumen, 'squeeze', function(t, dim)
    local h = handle(t, 'squeeze', 'tensor')
    return call(C.lm_squeeze, h, dim == nil and 1 or 0, int_arg(dim, 'squeeze', nil, 0), core.out1)
  end)
  export(lumen, 'unsqueeze', function(t, dim)
    local h = handle(t, 'unsqueeze', 'tensor')
    return call(C.lm_unsqueeze, h, int_arg(dim, 'unsqueeze'), core.out1)
  end)
  export(lumen, 'contiguous', function(t)
    return call(C.lm_contiguous, handle(t, 'contiguous', 'tensor'), core.out1)
  end)
  export(lumen, 'clone', function(t)
    return call(C.lm_clone, handle(t, 'clone', 'tensor'), core.out1)
  end)
  -- to(dtype) / type(dtype): a converted copy (t itself when already dtype)
  local function to(t, dtype)
    if type(dtype) == 'table' then dtype = dtype.dtype end
    if dtype == 'cpu' then return t end
    local code = core.dtype_code(dtype, 2)
    if core.info(t).dtype == code then return t end
    return call(C.lm_to_dtype, handle(t, 'to', 'tensor'), code, core.out1)
  end
  Tensor.to = to
  Tensor.type = function(t, dtype)
    if dtype == nil then return t:dtype() end
    return to(t, dtype)
  end
  for name, code in pairs(core.dtypes) do
    Tensor[name] = function(t) return to(t, name) end
  end
  Tensor.float, Tensor.double, Tensor.long, Tensor.int = Tensor.f32, Tensor.f64, Tensor.i64, Tensor.i32

  -- copy_(src): copies src (broadcast, converted) into t
  function Tensor.copy_(t, src)
    if type(src) == 'number' or type(src) == 'boolean' then return t:fill_(src) end
    local dh, sh = handle(t, 'copy_', 'destination'), handle(src, 'copy_', 'source')
    if C.lm_grad_enabled(ctx) ~= 0 and (C.lm_tensor_requires_grad(dh) ~= 0 or C.lm_tensor_requires_grad(sh) ~= 0) then
      error('lumen.copy_: copying into a tensor cannot be tracked by autograd, expected clone() or no_grad', 2)
    end
    core.check(C.lm_copy_(ctx, dh, sh))
    return t
  end
  function Tensor.fill_(t, v)
    if type(v) == 'boolean' then v = v and 1 or 0 end
    if type(v) ~= 'number' then error('lumen.fill_: value must be a number', 2) end
    core.check(C.lm_fill(ctx, handle(t, 'fill_', 'tensor'), v))
    return t
  end
  function Tensor.zero_(t) return t:fill_(0) end

  ---------------------------------------------------------------------------
  -- reading values back
  local function scalar_of(code, p)
    if code == C.LM_BOOL then return p[0] ~= 0 end
    -- LuaJIT keeps a NaN's payload, and some payloads (PyTorch writes NaNs
    -- with every bit set) collide with its value tags: test the bits and
    -- hand back a plain NaN.
    if code == C.LM_F32 or code == C.LM_F64 then
      local w = ffi.cast('uint32_t*', p)
      local f32 = code == C.LM_F32
      local hi = f32 and w[0] or w[1]
      local e, m = f32 and 0x7f800000 or 0x7ff00000, f32 and 0x7fffff or 0xfffff
      if bit.band(hi, e) == e and (bit.band(hi, m) ~= 0 or (not f32 and w[0] ~= 0)) then return 0 / 0 end
    end
    return tonumber(p[0])
  end
  -- item(): the value of a one-element tensor
  local scratch = ffi.new('double[1]')
  function Tensor.item(t)
    t = core.host(t)
    local i = core.info(t)
    if i.numel ~= 1 then error(string.format('lumen.item: tensor has %d elements, expected 1', tonumber(i.numel)), 2) end
    -- copy the value out while t is certainly alive (a tail call drops t)
    ffi.copy(scratch, i.data, C.lm_dtype_size(i.dtype))
    return scalar_of(i.dtype, ffi.cast(core.ctypes[i.dtype], scratch))
  end
  -- totable(): nested Lua tables (numbers, or booleans for bool tensors)
  function Tensor.totable(t)
    t = core.host(t)
    local i = core.info(t)
    local nd, code = i.ndim, i.dtype
    local shape, stride = {}, {}
    for k = 0, nd - 1 do shape[k + 1], stride[k + 1] = tonumber(i.shape[k]), tonumber(i.stride[k]) end
    local p = ffi.cast(core.ctypes[code], i.data) -- t stays alive in this frame
    local function build(d, off)
      if d > nd then return scalar_of(code, p + off) end
      local r = {}
      for k = 0, shape[d] - 1 do r[k + 1] = build(d + 1, off + k * stride[d]) end
      return r
    end
    local r = build(1, 0)
    return r
  end

  ---------------------------------------------------------------------------
  -- indexing: t[i] selects along dim 0 (a Lua number when the result is 0-D);
  -- t[{a, {lo, hi, step}, {}, ...}] indexes successive dims (a number
  -- selects, {lo, hi[, step]} slices [lo, hi), {} keeps the whole dim);
  -- t[mask] with a bool tensor selects elements; t[idx] with an integer
  -- tensor picks rows along dim 0.
  local function index_view(t, key)
    if type(key) == 'number' then return t:select(0, key) end
    local v = t
    local d = 0
    for k = 1, #key do
      local e = key[k]
      if type(e) == 'number' then
        v = v:select(d, e)
      elseif type(e) == 'table' then
        if e[1] ~= nil or e[2] ~= nil or e[3] ~= nil then
          v = v:slice(d, e[1] or 0, e[2] or 2 ^ 62, e[3] or 1)
        end
        d = d + 1
      elseif e == ':' then
        d = d + 1
      else
        error('lumen.index: entry ' .. k .. ' is ' .. type(e) .. ', expected a number, a range table or ":"', 3)
      end
    end
    return v
  end

  local methods, getters, setters = Tensor, core.getters, core.setters
  mt.__index = function(t, k)
    local m = methods[k]
    if m ~= nil then return m end
    local get = getters[k]
    if get then return get(t) end
    local kt = type(k)
    if kt == 'number' or (kt == 'table' and not core.is_tensor(k)) then
      local v = index_view(t, k)
      if core.info(v).ndim == 0 then return v:item() end
      return v
    end
    if core.is_tensor(k) then
      if k:dtype() == 'bool' then return lumen.masked_select(t, k) end
      return lumen.index_select(t, 0, k)
    end
    error(string.format("lumen: tensor has no method or index '%s'", tostring(k)), 2)
  end
  mt.__newindex = function(t, k, value)
    if core.is_tensor(k) then
      if k:dtype() ~= 'bool' then error('lumen.index: assignment through an index tensor needs a bool mask', 2) end
      if core.is_tensor(value) then
        t:copy_(lumen.where(k, value, t))
      else
        lumen.masked_fill(t, k, value, t)
      end
      return
    end
    local set = setters[k]
    if set then return set(t, value) end
    local kt = type(k)
    if kt ~= 'number' and kt ~= 'table' then
      error(string.format("lumen: cannot assign to field '%s' of a tensor", tostring(k)), 2)
    end
    index_view(t, k):copy_(value)
  end
  export(lumen, 'is_tensor', core.is_tensor)
end
