-- norm.lua: batch, instance, group and layer normalisation (the kernels
-- are in src/ops/norm.c, statistics in double).
--
--   nn.F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
--   nn.F.group_norm(x, groups, weight, bias, eps)
--   nn.F.instance_norm(x, {weight =, bias =, eps =})
--   nn.F.layer_norm(x, normalized_shape, weight, bias, eps)
--   nn.BatchNorm1d/2d/3d(C, {eps, momentum, affine, track_running_stats})
--   nn.InstanceNorm1d/2d/3d(C, {eps, affine})
--   nn.GroupNorm(groups, C, {eps, affine})
--   nn.LayerNorm(shape, {eps, elementwise_affine})
--
-- Defaults are torch's. Instance norm always uses the input's statistics:
-- track_running_stats = true is refused (torch's running statistics for
-- instance norm are not implemented).
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

return function(nn, lumen)
  local F = nn.F
  local out1 = core.out1

  -- Runs C function fn(ctx, ..., out) and boxes the result. Errors are
  -- raised level levels above the caller of call (2: the user of an F
  -- function), named name when given. Out of memory: collect, drop the
  -- cache, try once more.
  local function call_as(name, level, fn, ...)
    out1[0] = nil
    local st = fn(ctx, ...)
    if st == C.LM_E_OOM then
      collectgarbage('collect')
      C.lm_mem_empty_cache(ctx)
      C.lm_ctx_clear_error(ctx)
      out1[0] = nil
      st = fn(ctx, ...)
    end
    if st ~= 0 then
      if name then core.fail_as(name, level + 1) end
      core.fail(level + 1)
    end
    return core.wrap(out1[0])
  end
  local function call(level, fn, ...) return call_as(nil, level + 1, fn, ...) end

  -- An optional tensor argument's handle (nil stays NULL).
  local function opt_handle(t, op, what)
    if t == nil then return nil end
    if not lumen.is_tensor(t) then
      error(string.format('lumen.%s: %s must be a tensor or nil, got %s', op, what, type(t)), 3)
    end
    if t.h == nil then error(string.format('lumen.%s: %s was freed', op, what), 3) end
    return t.h
  end
  local function tensor_handle(t, op, what)
    if not lumen.is_tensor(t) then error(string.format('lumen.%s: %s must be a tensor, got %s', op, what, type(t)), 3) end
    if t.h == nil then error(string.format('lumen.%s: %s was freed', op, what), 3) end
    return t.h
  end
  local options, flag, number = core.options, core.flag, core.number
  local function set(...)
    local s = {}
    for _, k in ipairs { ... } do s[k] = true end
    return s
  end

  ---------------------------------------------------------------------------
  -- functional forms

  -- batch_norm(x, running_mean, running_var, weight, bias, training = false,
  -- momentum = 0.1, eps = 1e-5); the fourth argument may instead be a table
  -- {weight =, bias =, training =, momentum =, eps =}. Training updates the
  -- running statistics (when given) in place.
  local bn_opts = set('weight', 'bias', 'training', 'momentum', 'eps')
  function F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    local op = 'batch_norm'
    if type(weight) == 'table' then
      local o = options(weight, op, bn_opts)
      weight, bias, training, momentum, eps = o.weight, o.bias, o.training, o.momentum, o.eps
    end
    local xh = tensor_handle(x, op, 'input')
    local rm, rv = opt_handle(running_mean, op, 'running_mean'), opt_handle(running_var, op, 'running_var')
    local wh, bh = opt_handle(weight, op, 'weight'), opt_handle(bias, op, 'bias')
    training = flag(training, op, 'training', false)
    momentum = number(momentum, op, 'momentum', 0.1)
    eps = number(eps, op, 'eps', 1e-5)
    return call(2, C.lm_batch_norm, xh, rm, rv, wh, bh, training and 1 or 0, momentum, eps, out1)
  end

  -- group_norm(x, groups, weight, bias, eps = 1e-5)
  function F.group_norm(x, groups, weight, bias, eps)
    local op = 'group_norm'
    local xh = tensor_handle(x, op, 'input')
    groups = core.int_arg(groups, op, 'groups')
    local wh, bh = opt_handle(weight, op, 'weight'), opt_handle(bias, op, 'bias')
    eps = number(eps, op, 'eps', 1e-5)
    return call(2, C.lm_group_norm, xh, groups, wh, bh, eps, out1)
  end

  -- instance_norm(x, {weight =, bias =, eps = 1e-5}): group norm with one
  -- channel per group. Always the input's own statistics.
  local in_opts = set('weight', 'bias', 'eps')
  function F.instance_norm(x, opts)
    local op = 'instance_norm'
    local xh = tensor_handle(x, op, 'input')
    opts = options(opts, op, in_opts)
    local wh, bh = opt_handle(opts.weight, op, 'weight'), opt_handle(opts.bias, op, 'bias')
    local eps = number(opts.eps, op, 'eps', 1e-5)
    local s = x:size()
    if #s < 2 then
      error(string.format('lumen.instance_norm: input is %d-D (%s), expected N x C x * (at least 3-D)', #s,
        #s == 0 and 'scalar' or table.concat(s, 'x')), 2)
    end
    local spatial = 1
    for d = 3, #s do spatial = spatial * s[d] end
    if spatial <= 1 then
      error(string.format('lumen.instance_norm: input %s has %d spatial element(s), expected more than 1',
        table.concat(s, 'x'), spatial), 2)
    end
    return call_as('instance_norm', 2, C.lm_group_norm, xh, s[2], wh, bh, eps, out1)
  end

  -- layer_norm(x, normalized_shape, weight, bias, eps = 1e-5):
  -- normalized_shape is a number or a table of the trailing sizes.
  function F.layer_norm(x, normalized_shape, weight, bias, eps)
    local op = 'layer_norm'
    local xh = tensor_handle(x, op, 'input')
    local shape = normalized_shape
    if type(shape) == 'number' then shape = { shape } end
    if type(shape) ~= 'table' or #shape == 0 or #shape > 8 then
      local got = type(shape) == 'table' and ('a table of ' .. #shape .. ' sizes') or tostring(normalized_shape)
      error('lumen.layer_norm: normalized_shape must be a number or a table of 1 to 8 sizes, got ' .. got, 2)
    end
    local buf = ffi.new('int64_t[?]', #shape)
    for i, v in ipairs(shape) do buf[i - 1] = core.int_arg(v, op, 'normalized_shape entry') end
    local wh, bh = opt_handle(weight, op, 'weight'), opt_handle(bias, op, 'bias')
    eps = number(eps, op, 'eps', 1e-5)
    return call(2, C.lm_layer_norm, xh, #shape, buf, wh, bh, eps, out1)
  end

  ---------------------------------------------------------------------------
  -- modules

  local function dtype_of(opts) return opts and opts.dtype or 'f32' end

  -- BatchNorm1d/2d/3d(num_features, {eps = 1e-5, momentum = 0.1, affine = true,
  -- track_running_stats = true, dtype = 'f32'}); momentum = false is torch's
  -- None (a cumulative average over the batches seen).
  local bn_module_opts = set('eps', 'momentum', 'affine', 'track_running_stats', 'dtype')
  local function batch_norm_class(name, dims, expect)
    local cls = nn.Module:extend(name)
    nn[name] = cls
    function cls:__init(num_features, opts)
      opts = options(opts, 'nn.' .. name, bn_module_opts, 3)
      self.num_features = core.int_arg(num_features, 'nn.' .. name, 'num_features')
      self.eps = number(opts.eps, 'nn.' .. name, 'eps', 1e-5, 3)
      if opts.momentum == false then self.momentum = false
      else self.momentum = number(opts.momentum, 'nn.' .. name, 'momentum', 0.1, 3) end
      self.affine = flag(opts.affine, 'nn.' .. name, 'affine', true, 3)
      self.track_running_stats = flag(opts.track_running_stats, 'nn.' .. name, 'track_running_stats', true, 3)
      local dt = dtype_of(opts)
      if self.affine then
        self:param('weight', lumen.ones(num_features, dt))
        self:param('bias', lumen.zeros(num_features, dt))
      else
        self:param('weight', nil)
        self:param('bias', nil)
      end
      if self.track_running_stats then
        self:buffer('running_mean', lumen.zeros(num_features, dt))
        self:buffer('running_var', lumen.ones(num_features, dt))
        self:buffer('num_batches_tracked', lumen.zeros({}, 'i64'))
      end
    end
    function cls:reset_running_stats()
      if self.track_running_stats then
        self.running_mean:fill_(0)
        self.running_var:fill_(1)
        self.num_batches_tracked:fill_(0)
      end
    end
    function cls:forward(x)
      local d = lumen.is_tensor(x) and x:dim()
      if d and not dims[d] then
        error(string.format('lumen.nn.%s: expected %s input (got %dD input)', name, expect, d), 2)
      end
      local momentum = self.momentum
      if self.training and self.track_running_stats then
        self.num_batches_tracked:add_(1)
        if momentum == false then momentum = 1 / self.num_batches_tracked:item() end
      end
      if momentum == false then momentum = 0 end
      -- batch statistics when training or when there are no running ones
      local use_batch = self.training or not self.track_running_stats
      local keep = not self.training or self.track_running_stats
      return F.batch_norm(x, keep and self.running_mean or nil, keep and self.running_var or nil,
        self.weight, self.bias, use_batch, momentum, self.eps)
    end
    function cls:extra_repr()
      return string.format('%d, eps=%g, momentum=%s, affine=%s, track_running_stats=%s', self.num_features, self.eps,
        tostring(self.momentum), tostring(self.affine), tostring(self.track_running_stats))
    end
    return cls
  end
  batch_norm_class('BatchNorm1d', { [2] = true, [3] = true }, '2D or 3D')
  batch_norm_class('BatchNorm2d', { [4] = true }, '4D')
  batch_norm_class('BatchNorm3d', { [5] = true }, '5D')

  -- InstanceNorm1d/2d/3d(num_features, {eps = 1e-5, affine = false}); an
  -- unbatched input (one dimension fewer) is taken as a batch of one.
  local in_module_opts = set('eps', 'momentum', 'affine', 'track_running_stats', 'dtype')
  local function instance_norm_class(name, batched)
    local cls = nn.Module:extend(name)
    nn[name] = cls
    function cls:__init(num_features, opts)
      opts = options(opts, 'nn.' .. name, in_module_opts, 3)
      self.num_features = core.int_arg(num_features, 'nn.' .. name, 'num_features')
      self.eps = number(opts.eps, 'nn.' .. name, 'eps', 1e-5, 3)
      self.momentum = number(opts.momentum, 'nn.' .. name, 'momentum', 0.1, 3)
      self.affine = flag(opts.affine, 'nn.' .. name, 'affine', false, 3)
      if flag(opts.track_running_stats, 'nn.' .. name, 'track_running_stats', false, 3) then
        error('lumen.nn.' .. name .. ': track_running_stats = true is not supported (instance norm uses the input statistics)', 2)
      end
      self.track_running_stats = false
      local dt = dtype_of(opts)
      if self.affine then
        self:param('weight', lumen.ones(num_features, dt))
        self:param('bias', lumen.zeros(num_features, dt))
      end
    end
    function cls:forward(x)
      local d = lumen.is_tensor(x) and x:dim()
      if d and d ~= batched and d ~= batched - 1 then
        error(string.format('lumen.nn.%s: expected %dD or %dD input (got %dD input)', name, batched - 1, batched, d), 2)
      end
      local opts = { weight = self.weight, bias = self.bias, eps = self.eps }
      if d == batched - 1 then return F.instance_norm(x:unsqueeze(0), opts):squeeze(0) end
      return F.instance_norm(x, opts)
    end
    function cls:extra_repr()
      return string.format('%d, eps=%g, affine=%s', self.num_features, self.eps, tostring(self.affine))
    end
  end
  instance_norm_class('InstanceNorm1d', 3)
  instance_norm_class('InstanceNorm2d', 4)
  instance_norm_class('InstanceNorm3d', 5)

  -- GroupNorm(num_groups, num_channels, {eps = 1e-5, affine = true})
  local gn_opts = set('eps', 'affine', 'dtype')
  local GroupNorm = nn.Module:extend('GroupNorm')
  nn.GroupNorm = GroupNorm
  function GroupNorm:__init(num_groups, num_channels, opts)
    opts = options(opts, 'nn.GroupNorm', gn_opts, 3)
    self.num_groups = core.int_arg(num_groups, 'nn.GroupNorm', 'num_groups')
    self.num_channels = core.int_arg(num_channels, 'nn.GroupNorm', 'num_channels')
    if num_groups < 1 or num_channels % num_groups ~= 0 then
      error(string.format('lumen.nn.GroupNorm: num_channels (%d) must be divisible by num_groups (%d)', num_channels, num_groups), 2)
    end
    self.eps = number(opts.eps, 'nn.GroupNorm', 'eps', 1e-5, 3)
    self.affine = flag(opts.affine, 'nn.GroupNorm', 'affine', true, 3)
    if self.affine then
      self:param('weight', lumen.ones(num_channels, dtype_of(opts)))
      self:param('bias', lumen.zeros(num_channels, dtype_of(opts)))
    end
  end
  function GroupNorm:forward(x) return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps) end
  function GroupNorm:extra_repr()
    return string.format('%d, %d, eps=%g, affine=%s', self.num_groups, self.num_channels, self.eps, tostring(self.affine))
  end

  -- LayerNorm(normalized_shape, {eps = 1e-5, elementwise_affine = true})
  local ln_opts = set('eps', 'elementwise_affine', 'dtype')
  local LayerNorm = nn.Module:extend('LayerNorm')
  nn.LayerNorm = LayerNorm
  function LayerNorm:__init(normalized_shape, opts)
    opts = options(opts, 'nn.LayerNorm', ln_opts, 3)
    local shape = type(normalized_shape) == 'number' and { normalized_shape } or normalized_shape
    if type(shape) ~= 'table' or #shape == 0 then
      error('lumen.nn.LayerNorm: normalized_shape must be a number or a table of sizes, got ' .. tostring(normalized_shape), 2)
    end
    self.normalized_shape = {}
    for i, v in ipairs(shape) do self.normalized_shape[i] = core.int_arg(v, 'nn.LayerNorm', 'normalized_shape entry') end
    self.eps = number(opts.eps, 'nn.LayerNorm', 'eps', 1e-5, 3)
    self.elementwise_affine = flag(opts.elementwise_affine, 'nn.LayerNorm', 'elementwise_affine', true, 3)
    if self.elementwise_affine then
      self:param('weight', lumen.ones(self.normalized_shape, dtype_of(opts)))
      self:param('bias', lumen.zeros(self.normalized_shape, dtype_of(opts)))
    end
  end
  function LayerNorm:forward(x) return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps) end
  function LayerNorm:extra_repr()
    return string.format('{%s}, eps=%g, elementwise_affine=%s', table.concat(self.normalized_shape, ', '), self.eps,
      tostring(self.elementwise_affine))
  end
end
