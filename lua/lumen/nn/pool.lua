-- nn/pool.lua: max, average and adaptive average pooling, max unpooling
-- (1-D, 2-D, 3-D), as torch.nn.functional and torch.nn name them. Inputs
-- are (N x) C x spatial; indices are i64 flat positions within each plane.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

return function(nn, lumen)
  local F = nn.F
  local bufs = {}
  for i = 1, 4 do bufs[i] = ffi.new('int64_t[3]') end

  local is_int, options, tuple = core.is_int, core.options, core.int_tuple

  -- stride: nil or an empty list means the kernel size, as in PyTorch.
  local function stride_of(v, k, nd, op)
    if v == nil or (type(v) == 'table' and not core.is_tensor(v) and next(v) == nil) then return k end
    local s = tuple(v, nd, op, 'stride', 3)
    return s
  end

  local function fill(buf, list)
    for i = 1, #list do buf[i - 1] = list[i] end
    return buf
  end

  local function input(x, op)
    return core.handle(x, op, 'input')
  end

  ---------------------------------------------------------------------------
  -- max_poolNd(x, kernel_size, {stride=kernel_size, padding=0, dilation=1,
  --   ceil_mode=false, return_indices=false}) -> values[, indices]
  local max_known = { stride = true, padding = true, dilation = true, ceil_mode = true, return_indices = true }
  local function max_pool(nd)
    local op = 'max_pool' .. nd .. 'd'
    return function(x, k, opts)
      local h = input(x, op)
      opts = options(opts, op, max_known)
      k = tuple(k, nd, op, 'kernel_size')
      local s = stride_of(opts.stride, k, nd, op)
      local p = tuple(opts.padding or 0, nd, op, 'padding')
      local d = tuple(opts.dilation or 1, nd, op, 'dilation')
      local ceil = core.flag(opts.ceil_mode, op, 'ceil_mode', false)
      local want_idx = core.flag(opts.return_indices, op, 'return_indices', false)
      core.out1[0], core.out2[0] = nil, nil
      local st = C.lm_max_pool(ctx, h, nd, fill(bufs[1], k), fill(bufs[2], s), fill(bufs[3], p), fill(bufs[4], d),
        ceil and 1 or 0, core.out1, want_idx and core.out2 or nil)
      if st ~= 0 then core.fail(2) end
      local y = core.wrap(core.out1[0])
      if want_idx then return y, core.wrap(core.out2[0]) end
      return y
    end
  end
  F.max_pool1d, F.max_pool2d, F.max_pool3d = max_pool(1), max_pool(2), max_pool(3)

  -- avg_poolNd(x, kernel_size, {stride=kernel_size, padding=0, ceil_mode=false,
  --   count_include_pad=true, divisor_override=nil})
  local avg_known = { stride = true, padding = true, ceil_mode = true, count_include_pad = true, divisor_override = true }
  local function avg_pool(nd)
    local op = 'avg_pool' .. nd .. 'd'
    return function(x, k, opts)
      local h = input(x, op)
      opts = options(opts, op, avg_known)
      k = tuple(k, nd, op, 'kernel_size')
      local s = stride_of(opts.stride, k, nd, op)
      local p = tuple(opts.padding or 0, nd, op, 'padding')
      local ceil = core.flag(opts.ceil_mode, op, 'ceil_mode', false)
      local include = opts.count_include_pad == nil or core.flag(opts.count_include_pad, op, 'count_include_pad', false)
      local div = opts.divisor_override
      if div ~= nil and (not is_int(div) or div < 1) then
        error(string.format('lumen.%s: divisor_override must be a positive integer, got %s', op, tostring(div)), 2)
      end
      return core.call(C.lm_avg_pool, h, nd, fill(bufs[1], k), fill(bufs[2], s), fill(bufs[3], p),
        ceil and 1 or 0, include and 1 or 0, div or 0, core.out1)
    end
  end
  F.avg_pool1d, F.avg_pool2d, F.avg_pool3d = avg_pool(1), avg_pool(2), avg_pool(3)

  -- adaptive_avg_poolNd(x, output_size): output_size an integer or a list of
  -- nd entries, where false keeps that dimension's input size.
  local function adaptive_avg_pool(nd)
    local op = 'adaptive_avg_pool' .. nd .. 'd'
    return function(x, size)
      local h = input(x, op)
      if type(size) == 'table' and not core.is_tensor(size) then
        local sz, xs = {}, x:size()
        for i = 1, #size do sz[i] = size[i] == false and xs[#xs - nd + i] or size[i] end
        size = sz
      end
      size = tuple(size, nd, op, 'output_size')
      return core.call(C.lm_adaptive_avg_pool, h, nd, fill(bufs[1], size), core.out1)
    end
  end
  F.adaptive_avg_pool1d = adaptive_avg_pool(1)
  F.adaptive_avg_pool2d = adaptive_avg_pool(2)
  F.adaptive_avg_pool3d = adaptive_avg_pool(3)

  -- max_unpoolNd(x, indices, kernel_size, {stride=kernel_size, padding=0,
  --   output_size=nil}): output_size lists the nd spatial sizes (or the whole
  -- shape); by default (in - 1) * stride - 2 * padding + kernel_size, and a
  -- given one must lie within a stride of that.
  local unpool_known = { stride = true, padding = true, output_size = true }
  local function max_unpool(nd)
    local op = 'max_unpool' .. nd .. 'd'
    return function(x, indices, k, opts)
      local h = input(x, op)
      local ih = core.handle(indices, op, 'indices')
      opts = options(opts, op, unpool_known)
      k = tuple(k, nd, op, 'kernel_size')
      local s = stride_of(opts.stride, k, nd, op)
      local p = tuple(opts.padding or 0, nd, op, 'padding')
      local xs = x:size()
      if #xs ~= nd + 1 and #xs ~= nd + 2 then
        error(string.format('lumen.%s: input is %d-D, expected %d-D or %d-D', op, #xs, nd + 1, nd + 2), 2)
      end
      local default = {}
      for i = 1, nd do default[i] = (xs[#xs - nd + i] - 1) * s[i] - 2 * p[i] + k[i] end
      local size = default
      if opts.output_size ~= nil then
        local given = opts.output_size
        if type(given) == 'table' and #given == nd + 2 then
          given = { unpack(given, #given - nd + 1) }
        end
        size = tuple(given, nd, op, 'output_size')
        for i = 1, nd do
          if size[i] <= default[i] - s[i] or size[i] >= default[i] + s[i] then
            error(string.format('lumen.%s: output_size[%d] is %d, expected between %d and %d (within a stride of %d)',
              op, i - 1, size[i], default[i] - s[i] + 1, default[i] + s[i] - 1, default[i]), 2)
          end
        end
      end
      for i = 1, nd do
        if default[i] < 1 then
          error(string.format('lumen.%s: output size %d in spatial dim %d, expected >= 1', op, default[i], i - 1), 2)
        end
      end
      return core.call(C.lm_max_unpool, h, ih, nd, fill(bufs[1], size), core.out1)
    end
  end
  F.max_unpool1d, F.max_unpool2d, F.max_unpool3d = max_unpool(1), max_unpool(2), max_unpool(3)

  ---------------------------------------------------------------------------
  -- modules (torch.nn names); they need nn.Module (lua/lumen/nn/module.lua)
  if not nn.Module then return end

  local function list_repr(v)
    if type(v) == 'table' then
      local s = {}
      for i, e in ipairs(v) do s[i] = e == false and 'None' or tostring(e) end
      return '(' .. table.concat(s, ', ') .. ')'
    end
    return tostring(v)
  end

  local function copy_opts(opts, op)
    local o = {}
    if opts ~= nil and type(opts) ~= 'table' then
      error(string.format('lumen.nn.%s: options must be a table, got %s', op, type(opts)), 4)
    end
    for k, v in pairs(opts or {}) do o[k] = v end
    return o
  end

  for nd = 1, 3 do
    local MaxPool = nn.Module:extend('MaxPool' .. nd .. 'd')
    function MaxPool:__init(k, opts)
      self.kernel_size = k
      self.opts = copy_opts(opts, self.__name)
    end
    function MaxPool:forward(x) return F['max_pool' .. nd .. 'd'](x, self.kernel_size, self.opts) end
    function MaxPool:extra_repr()
      local o = self.opts
      return string.format('kernel_size=%s, stride=%s, padding=%s, dilation=%s, ceil_mode=%s', list_repr(self.kernel_size),
        list_repr(o.stride or self.kernel_size), list_repr(o.padding or 0), list_repr(o.dilation or 1),
        tostring(o.ceil_mode or false))
    end
    nn['MaxPool' .. nd .. 'd'] = MaxPool

    local AvgPool = nn.Module:extend('AvgPool' .. nd .. 'd')
    function AvgPool:__init(k, opts)
      self.kernel_size = k
      self.opts = copy_opts(opts, self.__name)
    end
    function AvgPool:forward(x) return F['avg_pool' .. nd .. 'd'](x, self.kernel_size, self.opts) end
    function AvgPool:extra_repr()
      local o = self.opts
      return string.format('kernel_size=%s, stride=%s, padding=%s', list_repr(self.kernel_size),
        list_repr(o.stride or self.kernel_size), list_repr(o.padding or 0))
    end
    nn['AvgPool' .. nd .. 'd'] = AvgPool

    local MaxUnpool = nn.Module:extend('MaxUnpool' .. nd .. 'd')
    function MaxUnpool:__init(k, opts)
      self.kernel_size = k
      self.opts = copy_opts(opts, self.__name)
    end
    -- forward(x, indices[, output_size])
    function MaxUnpool:forward(x, indices, output_size)
      local o = copy_opts(self.opts)
      o.output_size = output_size
      return F['max_unpool' .. nd .. 'd'](x, indices, self.kernel_size, o)
    end
    function MaxUnpool:extra_repr()
      local o = self.opts
      return string.format('kernel_size=%s, stride=%s, padding=%s', list_repr(self.kernel_size),
        list_repr(o.stride or self.kernel_size), list_repr(o.padding or 0))
    end
    nn['MaxUnpool' .. nd .. 'd'] = MaxUnpool

    local Adaptive = nn.Module:extend('AdaptiveAvgPool' .. nd .. 'd')
    function Adaptive:__init(size) self.output_size = size end
    function Adaptive:forward(x) return F['adaptive_avg_pool' .. nd .. 'd'](x, self.output_size) end
    function Adaptive:extra_repr() return 'output_size=' .. list_repr(self.output_size) end
    nn['AdaptiveAvgPool' .. nd .. 'd'] = Adaptive
  end
end
