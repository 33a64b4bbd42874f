-- activation.lua: activations and softmax (kernels in src/ops/activation.c;
-- relu, sigmoid and tanh are lumen's unary ops).
--
--   nn.F.relu(x), sigmoid(x), tanh(x)
--   nn.F.leaky_relu(x, negative_slope = 0.01), elu(x, alpha = 1)
--   nn.F.gelu(x, {approximate = 'none' | 'tanh'}), prelu(x, weight)
--   nn.F.softmax(x, dim), log_softmax(x, dim)
--   nn.ReLU, LeakyReLU(slope), PReLU(n, init), ELU(alpha), GELU(approximate),
--   Sigmoid, Tanh, Softmax(dim), LogSoftmax(dim)
--
-- inplace = true (as the last argument or option) writes the result into x
-- and returns x; autograd cannot track that, so it is refused when x needs
-- a gradient.
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

return function(nn, lumen)
  local F = nn.F
  local out1 = core.out1

  -- fn(ctx, ..., out) boxed; errors at the user of the F function.
  local function call(fn, ...)
    out1[0] = nil
    local st = fn(ctx, ...)
    if st == C.LM_E_OOM then
      collectgarbage('collect')
      C.lm_mem_empty_cache(ctx)
      C.lm_ctx_clear_error(ctx)
      out1[0] = nil
      st = fn(ctx, ...)
    end
    if st ~= 0 then core.fail(3) end
    return core.wrap(out1[0])
  end
  local function handle(t, op, what)
    if not lumen.is_tensor(t) then error(string.format('lumen.%s: %s must be a tensor, got %s', op, what, type(t)), 3) end
    if t.h == nil then error(string.format('lumen.%s: %s was freed', op, what), 3) end
    return t.h
  end
  local options, flag, number = core.options, core.flag, core.number

  -- y's values written into x (inplace = true); x is returned.
  local function into(x, y, op)
    if lumen.is_grad_enabled() and x.requires_grad then
      error('lumen.' .. op .. ': inplace = true cannot be tracked by autograd (the input requires grad), expected inplace = false', 3)
    end
    x:copy_(y)
    return x
  end
  -- relu(x[, inplace]), sigmoid(x), tanh(x): lumen's own ops
  function F.relu(x, inplace)
    handle(x, 'relu', 'input')
    if type(inplace) == 'table' then inplace = options(inplace, 'relu', { inplace = true }).inplace end
    if flag(inplace, 'relu', 'inplace', false) then return into(x, lumen.relu(x), 'relu') end
    return lumen.relu(x)
  end
  function F.sigmoid(x)
    handle(x, 'sigmoid', 'input')
    return lumen.sigmoid(x)
  end
  function F.tanh(x)
    handle(x, 'tanh', 'input')
    return lumen.tanh(x)
  end

  -- leaky_relu(x, negative_slope = 0.01[, inplace]) or leaky_relu(x, {negative_slope =, inplace =})
  function F.leaky_relu(x, slope, inplace)
    local xh = handle(x, 'leaky_relu', 'input')
    if type(slope) == 'table' then
      local o = options(slope, 'leaky_relu', { negative_slope = true, inplace = true })
      slope, inplace = o.negative_slope, o.inplace
    end
    slope = number(slope, 'leaky_relu', 'negative_slope', 0.01)
    inplace = flag(inplace, 'leaky_relu', 'inplace', false)
    local y = call(C.lm_leaky_relu, xh, slope, out1)
    if inplace then return into(x, y, 'leaky_relu') end
    return y
  end

  -- elu(x, alpha = 1[, inplace]) or elu(x, {alpha =, inplace =})
  function F.elu(x, alpha, inplace)
    local xh = handle(x, 'elu', 'input')
    if type(alpha) == 'table' then
      local o = options(alpha, 'elu', { alpha = true, inplace = true })
      alpha, inplace = o.alpha, o.inplace
    end
    alpha = number(alpha, 'elu', 'alpha', 1)
    inplace = flag(inplace, 'elu', 'inplace', false)
    local y = call(C.lm_elu, xh, alpha, out1)
    if inplace then return into(x, y, 'elu') end
    return y
  end

  -- gelu(x, {approximate = 'none' | 'tanh'}); a string is taken as approximate
  local approximations = { none = 0, tanh = 1 }
  function F.gelu(x, opts)
    local xh = handle(x, 'gelu', 'input')
    if type(opts) == 'string' then opts = { approximate = opts } end
    opts = options(opts, 'gelu', { approximate = true })
    local a = approximations[opts.approximate or 'none']
    if not a then
      error(string.format("lumen.gelu: approximate must be 'none' or 'tanh', got %s", tostring(opts.approximate)), 2)
    end
    return call(C.lm_gelu, xh, a, out1)
  end

  -- prelu(x, weight): weight holds 1 value or one per channel (dim 1)
  function F.prelu(x, weight)
    return call(C.lm_prelu, handle(x, 'prelu', 'input'), handle(weight, 'prelu', 'weight'), out1)
  end

  -- softmax(x, dim[, dtype]) and log_softmax(x, dim[, dtype]); dtype
  -- converts x first (as torch's dtype argument).
  local function softmax_args(op, x, dim, dtype)
    handle(x, op, 'input')
    if type(dim) == 'table' then
      local o = options(dim, op, { dim = true, dtype = true })
      dim, dtype = o.dim, o.dtype
    end
    if dim == nil then error('lumen.' .. op .. ': dim must be given', 3) end
    dim = core.int_arg(dim, op, 'dim')
    if dtype ~= nil then x = x:to(dtype) end
    return x.h, dim
  end
  function F.softmax(x, dim, dtype)
    local xh, d = softmax_args('softmax', x, dim, dtype)
    return call(C.lm_softmax, xh, d, out1)
  end
  function F.log_softmax(x, dim, dtype)
    local xh, d = softmax_args('log_softmax', x, dim, dtype)
    return call(C.lm_log_softmax, xh, d, out1)
  end

  ---------------------------------------------------------------------------
  -- modules

  local function class(name)
    local cls = nn.Module:extend(name)
    nn[name] = cls
    return cls
  end

  -- ReLU({inplace = false}), also ReLU(true)
  local ReLU = class('ReLU')
  function ReLU:__init(opts)
    if type(opts) == 'boolean' then opts = { inplace = opts } end
    self.inplace = flag(options(opts, 'nn.ReLU', { inplace = true }, 3).inplace, 'nn.ReLU', 'inplace', false, 3)
  end
  function ReLU:forward(x) return F.relu(x, self.inplace) end
  function ReLU:extra_repr() return self.inplace and 'inplace=true' or '' end

  -- LeakyReLU(negative_slope = 0.01, {inplace = false}), or LeakyReLU({negative_slope =, inplace =})
  local LeakyReLU = class('LeakyReLU')
  function LeakyReLU:__init(slope, opts)
    if type(slope) == 'table' then slope, opts = slope.negative_slope, { inplace = slope.inplace } end
    opts = options(opts, 'nn.LeakyReLU', { inplace = true }, 3)
    self.negative_slope = number(slope, 'nn.LeakyReLU', 'negative_slope', 0.01, 3)
    self.inplace = flag(opts.inplace, 'nn.LeakyReLU', 'inplace', false, 3)
  end
  function LeakyReLU:forward(x) return F.leaky_relu(x, self.negative_slope, self.inplace) end
  function LeakyReLU:extra_repr()
    return string.format('negative_slope=%g%s', self.negative_slope, self.inplace and ', inplace=true' or '')
  end

  -- ELU(alpha = 1, {inplace = false})
  local ELU = class('ELU')
  function ELU:__init(alpha, opts)
    if type(alpha) == 'table' then alpha, opts = alpha.alpha, { inplace = alpha.inplace } end
    opts = options(opts, 'nn.ELU', { inplace = true }, 3)
    self.alpha = number(alpha, 'nn.ELU', 'alpha', 1, 3)
    self.inplace = flag(opts.inplace, 'nn.ELU', 'inplace', false, 3)
  end
  function ELU:forward(x) return F.elu(x, self.alpha, self.inplace) end
  function ELU:extra_repr() return string.format('alpha=%g%s', self.alpha, self.inplace and ', inplace=true' or '') end

  -- GELU(approximate = 'none') or GELU({approximate =})
  local GELU = class('GELU')
  function GELU:__init(approximate)
    if type(approximate) == 'table' then approximate = options(approximate, 'nn.GELU', { approximate = true }, 3).approximate end
    approximate = approximate or 'none'
    if not approximations[approximate] then
      error(string.format("lumen.nn.GELU: approximate must be 'none' or 'tanh', got %s", tostring(approximate)), 2)
    end
    self.approximate = approximate
  end
  function GELU:forward(x) return F.gelu(x, { approximate = self.approximate }) end
  function GELU:extra_repr() return self.approximate ~= 'none' and ("approximate='" .. self.approximate .. "'") or '' end

  -- PReLU(num_parameters = 1, init = 0.25, {dtype = 'f32'})
  local PReLU = class('PReLU')
  function PReLU:__init(num_parameters, init, opts)
    if type(num_parameters) == 'table' then
      opts, num_parameters, init = num_parameters, num_parameters.num_parameters, num_parameters.init
    end
    self.num_parameters = core.int_arg(num_parameters, 'nn.PReLU', 'num_parameters', 1)
    local value = number(init, 'nn.PReLU', 'init', 0.25, 3)
    self:param('weight', lumen.full({ self.num_parameters }, value, opts and opts.dtype or 'f32'))
  end
  function PReLU:forward(x) return F.prelu(x, self.weight) end
  function PReLU:extra_repr() return string.format('num_parameters=%d', self.num_parameters) end

  local Sigmoid = class('Sigmoid')
  function Sigmoid:forward(x) return F.sigmoid(x) end
  local Tanh = class('Tanh')
  function Tanh:forward(x) return F.tanh(x) end

  -- Softmax(dim), LogSoftmax(dim): dim is required (torch's implicit choice
  -- is deprecated there and easy to get wrong)
  for _, spec in ipairs { { 'Softmax', F.softmax }, { 'LogSoftmax', F.log_softmax } } do
    local cls = class(spec[1])
    local fn = spec[2]
    function cls:__init(dim)
      if type(dim) == 'table' then dim = dim.dim end
      if dim == nil then error('lumen.nn.' .. spec[1] .. ': dim must be given', 3) end
      self.dim = core.int_arg(dim, 'nn.' .. spec[1], 'dim')
    end
    function cls:forward(x) return fn(x, self.dim) end
    function cls:extra_repr() return 'dim=' .. self.dim end
  end
end
