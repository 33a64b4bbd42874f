-- optim.lua: optimizers, gradient clipping and learning-rate schedules,
-- with torch.optim's names, options and semantics.
--
--   local optim = require 'lumen.optim'
--   local opt = optim.AdamW(model:parameters(), {lr = 1e-3, weight_decay = 1e-2})
--   local sched = optim.lr_scheduler.WarmupCosine(opt, {warmup_steps = 100, total_steps = 1000})
--   loss:backward(); optim.clip_grad_norm_(model:parameters(), 1.0)
--   opt:step(); opt:zero_grad(); sched:step()
--
-- params is a list of tensors or a list of parameter groups
-- ({params = {...}, lr = ...}, options not given come from the defaults).
-- Each step is one fused C call per group (src/ops/optim.c) that updates
-- every parameter with a gradient in place. State (momentum buffers, moment
-- estimates, step counts) lives in opt.state[param].
local ffi = require 'ffi'
local lumen = require 'lumen'
local core = lumen.core
local C, ctx = core.C, core.ctx

local optim = {}

local function fmt_value(v)
  if type(v) == 'table' then
    local parts = {}
    for i, e in ipairs(v) do parts[i] = type(e) == 'table' and '{...}' or tostring(e) end
    return '{' .. table.concat(parts, ', ') .. '}'
  end
  return tostring(v)
end

-- Raises "lumen.optim.<who>: msg" at the user's call (level counted from
-- the caller of fail).
local function fail(who, level, fmt, ...)
  error(string.format('lumen.optim.%s: ' .. fmt, who, ...), level + 1)
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- Checks that every key of opts is one of the names in allowed.
local function check_options(who, opts, allowed, level, extra)
  if opts == nil then return {} end
  if type(opts) ~= 'table' or core.is_tensor(opts) then
    fail(who, level + 1, 'options must be a table, got %s', type(opts))
  end
  for k in pairs(opts) do
    if allowed[k] == nil and not (extra and extra[k]) then
      fail(who, level + 1, "unknown option '%s' (expected %s)", tostring(k), table.concat(sorted_keys(allowed), ', '))
    end
  end
  return opts
end

local function number_option(who, level, name, v, lo, lo_open, hi_open_at)
  if type(v) ~= 'number' or v ~= v then fail(who, level + 1, '%s must be a number, got %s', name, fmt_value(v)) end
  if lo and (v < lo or (lo_open and v == lo)) then
    fail(who, level + 1, 'invalid %s %s (expected a number %s %s)', name, fmt_value(v), lo_open and '>' or '>=', lo)
  end
  if hi_open_at and v >= hi_open_at then
    fail(who, level + 1, 'invalid %s %s (expected a number < %s)', name, fmt_value(v), hi_open_at)
  end
end

local function bool_option(who, level, name, v)
  if type(v) ~= 'boolean' then fail(who, level + 1, '%s must be true or false, got %s', name, fmt_value(v)) end
end

---------------------------------------------------------------------------
-- optimizer kinds: defaults, checks, the state they keep, the C call

local REQUIRED = {} -- a default that the user must give

local kinds = {}

kinds.SGD = {
  defaults = { lr = REQUIRED, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false, maximize = false },
  validate = function(g, who, level)
    number_option(who, level + 1, 'learning rate', g.lr, 0)
    number_option(who, level + 1, 'momentum', g.momentum, 0)
    number_option(who, level + 1, 'dampening', g.dampening)
    number_option(who, level + 1, 'weight_decay', g.weight_decay, 0)
    bool_option(who, level + 1, 'nesterov', g.nesterov)
    bool_option(who, level + 1, 'maximize', g.maximize)
    if g.nesterov and (g.momentum <= 0 or g.dampening ~= 0) then
      fail(who, level + 1, 'nesterov momentum requires a momentum > 0 and zero dampening (got momentum %s, dampening %s)',
        fmt_value(g.momentum), fmt_value(g.dampening))
    end
  end,
  states = function(g) return g.momentum ~= 0 and { 'momentum_buffer' } or {} end,
  hparams = function(g, h)
    h.lr, h.momentum, h.dampening, h.weight_decay = g.lr, g.momentum, g.dampening, g.weight_decay
    h.nesterov, h.maximize = g.nesterov and 1 or 0, g.maximize and 1 or 0
  end,
  run = function(n, ps, gs, st, steps, h)
    return C.lm_sgd_step(ctx, n, ps, gs, st.momentum_buffer, steps, h)
  end,
}

local function validate_adam(g, who, level)
  number_option(who, level + 1, 'learning rate', g.lr, 0)
  number_option(who, level + 1, 'epsilon', g.eps, 0)
  if type(g.betas) ~= 'table' or #g.betas ~= 2 then
    fail(who, level + 1, 'betas must be a list of two numbers, got %s', fmt_value(g.betas))
  end
  number_option(who, level + 1, 'beta parameter at index 1', g.betas[1], 0, false, 1)
  number_option(who, level + 1, 'beta parameter at index 2', g.betas[2], 0, false, 1)
  number_option(who, level + 1, 'weight_decay', g.weight_decay, 0)
  bool_option(who, level + 1, 'amsgrad', g.amsgrad)
  bool_option(who, level + 1, 'maximize', g.maximize)
end

local function adam_kind(decoupled, weight_decay)
  return {
    defaults = { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = weight_decay, amsgrad = false,
      maximize = false },
    validate = validate_adam,
    states = function(g)
      return g.amsgrad and { 'exp_avg', 'exp_avg_sq', 'max_exp_avg_sq' } or { 'exp_avg', 'exp_avg_sq' }
    end,
    hparams = function(g, h)
      h.lr, h.beta1, h.beta2, h.eps, h.weight_decay = g.lr, g.betas[1], g.betas[2], g.eps, g.weight_decay
      h.amsgrad, h.decoupled, h.maximize = g.amsgrad and 1 or 0, decoupled and 1 or 0, g.maximize and 1 or 0
    end,
    run = function(n, ps, gs, st, steps, h)
      return C.lm_adam_step(ctx, n, ps, gs, st.exp_avg, st.exp_avg_sq, st.max_exp_avg_sq, steps, h)
    end,
  }
end
kinds.Adam = adam_kind(false, 0)
kinds.AdamW = adam_kind(true, 1e-2)

kinds.RMSprop = {
  defaults = { lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0, centered = false, maximize = false },
  validate = function(g, who, level)
    number_option(who, level + 1, 'learning rate', g.lr, 0)
    number_option(who, level + 1, 'epsilon', g.eps, 0)
    number_option(who, level + 1, 'alpha', g.alpha, 0)
    number_option(who, level + 1, 'momentum', g.momentum, 0)
    number_option(who, level + 1, 'weight_decay', g.weight_decay, 0)
    bool_option(who, level + 1, 'centered', g.centered)
    bool_option(who, level + 1, 'maximize', g.maximize)
  end,
  states = function(g)
    local s = { 'square_avg' }
    if g.momentum > 0 then s[#s + 1] = 'momentum_buffer' end
    if g.centered then s[#s + 1] = 'grad_avg' end
    return s
  end,
  hparams = function(g, h)
    h.lr, h.alpha, h.eps, h.weight_decay, h.momentum = g.lr, g.alpha, g.eps, g.weight_decay, g.momentum
    h.centered, h.maximize = g.centered and 1 or 0, g.maximize and 1 or 0
  end,
  run = function(n, ps, gs, st, steps, h)
    return C.lm_rmsprop_step(ctx, n, ps, gs, st.square_avg, st.grad_avg, st.momentum_buffer, h)
  end,
}

---------------------------------------------------------------------------
-- the optimizer object

local Optimizer = {}
Optimizer.__index = Optimizer
optim.Optimizer = Optimizer

local function copy_value(v)
  if type(v) ~= 'table' then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = copy_value(x) end
  return c
end

-- A list of tensors from params (a tensor or a list of tensors).
local function param_list(who, level, params, where)
  if core.is_tensor(params) then return { params } end
  if type(params) ~= 'table' then
    fail(who, level + 1, '%s must be a list of tensors, got %s', where, type(params))
  end
  local list = {}
  for i, p in ipairs(params) do
    if not core.is_tensor(p) then
      fail(who, level + 1, '%s[%d] is a %s, expected a tensor', where, i, type(p))
    end
    if p.h == nil then fail(who, level + 1, '%s[%d] was freed', where, i) end
    if not core.is_float(core.info(p).dtype) then
      fail(who, level + 1, '%s[%d] is %s, expected a floating-point tensor (f32 or f64)', where, i, p:dtype())
    end
    list[i] = p
  end
  return list
end

-- add_param_group(group): group = {params = {...}, option = value, ...}
function Optimizer:add_param_group(group, level)
  level = (level or 1) + 1
  local who = self.kind
  if type(group) ~= 'table' or core.is_tensor(group) then
    fail(who, level, 'a parameter group must be a table {params = {...}, ...}, got %s', type(group))
  end
  check_options(who, group, self.defaults, level, { params = true, initial_lr = true })
  local index = #self.param_groups + 1
  local g = { params = param_list(who, level, group.params, 'param group ' .. index .. ': params') }
  for k, v in pairs(self.defaults) do
    local given = group[k]
    if given == nil then
      if v == REQUIRED then fail(who, level, "param group %d: option '%s' is required", index, k) end
      given = v
    end
    g[k] = copy_value(given)
  end
  if group.initial_lr ~= nil then g.initial_lr = group.initial_lr end
  self._kind.validate(g, who, level)
  for _, p in ipairs(g.params) do
    if self._owner[p] then fail(who, level, 'some parameters appear in more than one parameter group') end
  end
  for _, p in ipairs(g.params) do self._owner[p] = g end
  self.param_groups[index] = g
end

local function new_optimizer(kind_name, params, opts, level)
  level = level + 1
  local kind = kinds[kind_name]
  opts = check_options(kind_name, opts, kind.defaults, level)
  local self = setmetatable({ kind = kind_name, _kind = kind, param_groups = {}, state = {}, _owner = {} }, Optimizer)
  self.defaults = {}
  for k, v in pairs(kind.defaults) do
    if opts[k] ~= nil then self.defaults[k] = copy_value(opts[k]) else self.defaults[k] = v end
  end
  if params == nil or (type(params) == 'table' and not core.is_tensor(params) and #params == 0) then
    fail(kind_name, level, 'optimizer got an empty parameter list')
  end
  if type(params) == 'table' and not core.is_tensor(params) and type(params[1]) == 'table' and
      not core.is_tensor(params[1]) then
    for _, group in ipairs(params) do self:add_param_group(group, level) end
  else
    self:add_param_group({ params = params }, level)
  end
  return self
end

for name in pairs(kinds) do
  optim[name] = function(params, opts) return new_optimizer(name, params, opts, 1) end
end

local hp = ffi.new('lm_optim_hparams')

-- Rewrites the C message ("adam: grad of parameter 2 ...") in the
-- optimizer's terms: Lua list positions and the group.
local function step_error(self, gi, level)
  local msg = ffi.string(C.lm_ctx_errmsg(ctx)):gsub('^[%w_]+: ', '')
  C.lm_ctx_clear_error(ctx)
  msg = msg:gsub('parameter (%d+)', function(i) return 'params[' .. (tonumber(i) + 1) .. ']' end)
  fail(self.kind, level + 1, 'step: %s (param group %d)', msg, gi)
end

-- Updates the parameters of one group that have a gradient.
function Optimizer:_step_group(gi, group, level)
  local kind, n = self._kind, #group.params
  local names = kind.states(group)
  local ps = ffi.new('lm_tensor*[?]', math.max(n, 1))
  local gs = ffi.new('lm_tensor*[?]', math.max(n, 1))
  local steps = ffi.new('int64_t[?]', math.max(n, 1))
  local arrays = {}
  for _, name in ipairs(names) do arrays[name] = ffi.new('lm_tensor*[?]', math.max(n, 1)) end
  local anchors = {} -- gradient boxes, alive until the call returns
  for i, p in ipairs(group.params) do
    if p.h == nil then fail(self.kind, level + 1, 'step: params[%d] of param group %d was freed', i, gi) end
    ps[i - 1] = p.h
    local g = p.grad
    if g ~= nil then
      anchors[#anchors + 1] = g
      gs[i - 1] = g.h
      local st = self.state[p]
      if not st then
        st = { step = 0 }
        self.state[p] = st
      end
      for _, name in ipairs(names) do
        if st[name] == nil then st[name] = lumen.zeros(p:size(), { dtype = p:dtype(), device = p:device() }) end
        arrays[name][i - 1] = st[name].h
      end
      steps[i - 1] = st.step + 1
    end
  end
  if #anchors == 0 then return end
  kind.hparams(group, hp)
  if kind.run(n, ps, gs, arrays, steps, hp) ~= 0 then step_error(self, gi, level + 1) end
  for i, p in ipairs(group.params) do
    if gs[i - 1] ~= nil then self.state[p].step = tonumber(steps[i - 1]) end
  end
end

-- step(closure): one update of every parameter with a gradient. closure,
-- when given, is called first with grad mode on; its result is returned.
function Optimizer:step(closure)
  local loss
  if closure ~= nil then
    if type(closure) ~= 'function' then fail(self.kind, 2, 'step: closure must be a function, got %s', type(closure)) end
    loss = lumen.enable_grad(closure)
  end
  for gi, group in ipairs(self.param_groups) do
    self._kind.validate(group, self.kind, 2)
    self:_step_group(gi, group, 2)
  end
  return loss
end

-- zero_grad(set_to_none = true): drops the gradients (t.grad = nil), or
-- fills them with zeros when set_to_none is false.
function Optimizer:zero_grad(set_to_none)
  for _, group in ipairs(self.param_groups) do
    for _, p in ipairs(group.params) do
      if set_to_none == false then
        local g = p.grad
        if g ~= nil then g:zero_() end
      else
        p.grad = nil
      end
    end
  end
end

-- state_dict() -> {state = {[id] = {step = n, name = tensor, ...}},
--                  param_groups = {{option = value, ..., params = {ids}}}}
-- ids number the parameters from 0 across groups, in order, as torch does.
-- Tensors are the optimizer's own (not copies).
function Optimizer:state_dict()
  local state, groups, id = {}, {}, 0
  for gi, group in ipairs(self.param_groups) do
    local g = { params = {} }
    for k, v in pairs(group) do
      if k ~= 'params' then g[k] = copy_value(v) end
    end
    for _, p in ipairs(group.params) do
      g.params[#g.params + 1] = id
      local st = self.state[p]
      if st then
        local s = {}
        for k, v in pairs(st) do s[k] = v end
        state[id] = s
      end
      id = id + 1
    end
    groups[gi] = g
  end
  return { state = state, param_groups = groups }
end

-- load_state_dict(sd): hyperparameters and state from state_dict() (of an
-- optimizer of the same kind over parameters of the same shapes). State
-- tensors are copied, in each parameter's dtype.
function Optimizer:load_state_dict(sd)
  local who = self.kind
  local function bad(fmt, ...) fail(who, 3, 'load_state_dict: ' .. fmt, ...) end
  if type(sd) ~= 'table' or type(sd.param_groups) ~= 'table' or type(sd.state) ~= 'table' then
    bad('expected a table {state = ..., param_groups = ...} from state_dict()')
  end
  local saved = sd.param_groups
  if #saved ~= #self.param_groups then
    bad('the saved state has %d parameter groups, this optimizer %d', #saved, #self.param_groups)
  end
  local by_id, new_groups = {}, {}
  for gi, group in ipairs(self.param_groups) do
    local sg = saved[gi]
    if type(sg) ~= 'table' or type(sg.params) ~= 'table' then bad('saved param group %d has no params list', gi) end
    if #sg.params ~= #group.params then
      bad('saved param group %d has %d parameters, this optimizer\'s has %d', gi, #sg.params, #group.params)
    end
    local g = { params = group.params }
    for k, v in pairs(sg) do
      if k ~= 'params' then
        if self.defaults[k] == nil and k ~= 'initial_lr' then bad("saved param group %d has unknown option '%s'", gi, k) end
        g[k] = copy_value(v)
      end
    end
    for k, v in pairs(group) do
      if g[k] == nil then g[k] = v end
    end
    local ok, err = pcall(self._kind.validate, g, who, 1)
    if not ok then bad('saved param group %d: %s', gi, (tostring(err):gsub('^lumen%.optim%.[%w]+: ', ''))) end
    for j, id in ipairs(sg.params) do
      if type(id) ~= 'number' then bad('saved param group %d lists a parameter id %s', gi, tostring(id)) end
      by_id[id] = { p = group.params[j], group = gi, index = j }
    end
    new_groups[gi] = g
  end
  local new_state = {}
  local ids = {}
  for id in pairs(sd.state) do ids[#ids + 1] = id end
  table.sort(ids, function(a, b) return (tonumber(a) or math.huge) < (tonumber(b) or math.huge) end)
  for _, id in ipairs(ids) do
    local s = sd.state[id]
    local target = by_id[tonumber(id)]
    if not target then bad('the saved state has an entry for parameter id %s, which no saved group lists', tostring(id)) end
    if type(s) ~= 'table' then bad('state of parameter id %s is a %s, expected a table', tostring(id), type(s)) end
    local p, st = target.p, {}
    local want = table.concat(p:size(), 'x')
    for _, k in ipairs(sorted_keys(s)) do
      local v = s[k]
      if core.is_tensor(v) then
        local got = table.concat(v:size(), 'x')
        if got ~= want then
          bad("state '%s' of params[%d] in param group %d has shape %s, expected %s (the parameter's shape)",
            k, target.index, target.group, got == '' and 'scalar' or got, want == '' and 'scalar' or want)
        end
        local c = v:to(p:dtype())
        if c == v then c = v:clone() end
        st[k] = c
      else
        st[k] = copy_value(v)
      end
    end
    if type(st.step) ~= 'number' then bad("state of params[%d] in param group %d has no step count", target.index, target.group) end
    new_state[p] = st
  end
  for gi, g in ipairs(new_groups) do self.param_groups[gi] = g end
  self.state = new_state
end

function Optimizer:__tostring()
  local lines = { self.kind .. ' (' }
  for gi, g in ipairs(self.param_groups) do
    lines[#lines + 1] = string.format('  param group %d: %d parameters', gi, #g.params)
    for _, k in ipairs(sorted_keys(g)) do
      if k ~= 'params' then lines[#lines + 1] = string.format('    %s: %s', k, fmt_value(g[k])) end
    end
  end
  lines[#lines + 1] = ')'
  return table.concat(lines, '\n')
end

---------------------------------------------------------------------------
-- gradient clipping

local norm_out = ffi.new('double[1]')

-- clip_grad_norm_(params, max_norm, norm_type = 2, {error_if_nonfinite = false})
-- scales the gradients of params (a tensor or a list) in place so that
-- their global norm is at most max_norm; returns that norm before clipping.
function optim.clip_grad_norm_(params, max_norm, norm_type, opts)
  local who = 'clip_grad_norm_'
  local list = param_list(who, 2, params, 'params')
  number_option(who, 2, 'max_norm', max_norm)
  if norm_type == 'inf' then norm_type = math.huge end
  if norm_type == nil then norm_type = 2 end
  number_option(who, 2, 'norm_type', norm_type)
  opts = check_options(who, opts, { error_if_nonfinite = false }, 2)
  local grads, anchors, n = ffi.new('lm_tensor*[?]', math.max(#list, 1)), {}, 0
  for _, p in ipairs(list) do
    local g = p.grad
    if g ~= nil then
      anchors[#anchors + 1] = g
      grads[n] = g.h
      n = n + 1
    end
  end
  if C.lm_clip_grad_norm(ctx, n, grads, max_norm, norm_type, opts.error_if_nonfinite and 1 or 0, norm_out) ~= 0 then
    local msg = ffi.string(C.lm_ctx_errmsg(ctx)):gsub('^[%w_]+: ', '')
    C.lm_ctx_clear_error(ctx)
    error('lumen.optim.clip_grad_norm_: ' .. msg, 2)
  end
  return norm_out[0]
end

optim.lr_scheduler = require 'lumen.lr_scheduler'
-- dynamic loss scaling for f16 training (lua/lumen/amp.lua)
optim.GradScaler = lumen.amp.GradScaler

return optim
