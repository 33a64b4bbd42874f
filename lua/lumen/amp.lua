-- amp.lua: mixed precision. autocast runs f32 convolutions and matrix
-- products with their operands rounded to bf16 or f16 (src/ops/amp.c);
-- GradScaler is dynamic loss scaling with torch.cuda.amp.GradScaler's rules.
--
--   local scaler = optim.GradScaler()            -- or lumen.amp.GradScaler()
--   local loss = lumen.autocast('f16', function() return F.cross_entropy(model(x), y) end)
--   scaler:scale(loss):backward()
--   scaler:step(opt)                             -- skipped when a gradient is inf or NaN
--   scaler:update()
--   opt:zero_grad()
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

local modes = { bf16 = C.LM_AUTOCAST_BF16, f16 = C.LM_AUTOCAST_F16 }
local mode_names = { [tonumber(C.LM_AUTOCAST_BF16)] = 'bf16', [tonumber(C.LM_AUTOCAST_F16)] = 'f16' }

-- A value as an f32 holds it (the scale is an f32 in torch).
local f32_box = ffi.new('float[1]')
local function f32(x)
  f32_box[0] = x
  return tonumber(f32_box[0])
end

local function mode_arg(op, dtype, allow_off, level)
  if dtype == false and allow_off then return C.LM_AUTOCAST_OFF end
  local m = modes[dtype]
  if not m then
    error(string.format("lumen.%s: dtype %s, expected 'bf16' or 'f16'%s", op,
      type(dtype) == 'string' and "'" .. dtype .. "'" or tostring(dtype), allow_off and ' (or false: off)' or ''),
      level + 1)
  end
  return m
end

---------------------------------------------------------------------------
-- GradScaler

local GradScaler = {}
GradScaler.__index = GradScaler

local READY, UNSCALED, STEPPED = 0, 1, 2

local function fail(level, fmt, ...)
  error('lumen.GradScaler: ' .. string.format(fmt, ...), level + 1)
end

local defaults = { init_scale = 2 ^ 16, growth_factor = 2, backoff_factor = 0.5, growth_interval = 2000, enabled = true }

local function new_scaler(opts)
  opts = opts or {}
  if type(opts) ~= 'table' then fail(3, 'expected an options table, got %s', type(opts)) end
  for k in pairs(opts) do
    if defaults[k] == nil then
      fail(3, "unknown option '%s' (expected init_scale, growth_factor, backoff_factor, growth_interval, enabled)",
        tostring(k))
    end
  end
  local o = {}
  for k, v in pairs(defaults) do
    if opts[k] == nil then o[k] = v else o[k] = opts[k] end
  end
  if type(o.enabled) ~= 'boolean' then fail(3, 'enabled must be true or false, got %s', tostring(o.enabled)) end
  for _, k in ipairs { 'init_scale', 'growth_factor', 'backoff_factor', 'growth_interval' } do
    if type(o[k]) ~= 'number' or o[k] ~= o[k] then fail(3, '%s must be a number, got %s', k, tostring(o[k])) end
  end
  if not (o.init_scale > 0 and o.init_scale < math.huge) then fail(3, 'init_scale %s, expected a positive finite number', o.init_scale) end
  if not (o.growth_factor > 1) then fail(3, 'growth_factor %s, expected > 1', o.growth_factor) end
  if not (o.backoff_factor < 1 and o.backoff_factor > 0) then fail(3, 'backoff_factor %s, expected in (0, 1)', o.backoff_factor) end
  if o.growth_interval < 1 or o.growth_interval ~= math.floor(o.growth_interval) then
    fail(3, 'growth_interval %s, expected a positive integer', o.growth_interval)
  end
  return setmetatable({
    _enabled = o.enabled, _scale = f32(o.init_scale), _growth_factor = o.growth_factor,
    _backoff_factor = o.backoff_factor, _growth_interval = o.growth_interval, _growth_tracker = 0,
    _per_opt = {}, -- per optimizer this iteration: {stage =, found_inf = true/false, or nil when no gradient was checked}
  }, GradScaler)
end

local function opt_state(self, opt, op)
  if type(opt) ~= 'table' or type(opt.param_groups) ~= 'table' then
    fail(3, '%s: expected an optimizer, got %s', op, type(opt))
  end
  local st = self._per_opt[opt]
  if not st then
    st = { stage = READY }
    self._per_opt[opt] = st
  end
  return st
end

-- scale(loss): loss (a tensor or a list of tensors) times the scale.
function GradScaler:scale(outputs)
  if not self._enabled then return outputs end
  if core.is_tensor(outputs) then return outputs * self._scale end
  if type(outputs) ~= 'table' then fail(2, 'scale: expected a tensor or a list of tensors, got %s', type(outputs)) end
  local r = {}
  for i, t in ipairs(outputs) do
    if not core.is_tensor(t) then fail(2, 'scale: outputs[%d] is a %s, expected a tensor', i, type(t)) end
    r[i] = t * self._scale
  end
  return r
end

-- unscale_(opt): divides opt's gradients by the scale in place and notes
-- whether any of them holds inf or NaN (checked before dividing).
function GradScaler:unscale_(opt)
  if not self._enabled then return end
  local st = opt_state(self, opt, 'unscale_')
  if st.stage == UNSCALED then fail(2, 'unscale_: unscale_() has already been called on this optimizer since the last update()') end
  if st.stage == STEPPED then fail(2, 'unscale_: unscale_() is being called after step()') end
  local inv = f32(1 / self._scale)
  -- x * 0 is NaN exactly where x is inf or NaN: one sum per gradient, added
  -- up per device, read back once per device
  local probes, found, checked = {}, false, false
  for _, g in ipairs(opt.param_groups) do
    for _, p in ipairs(g.params) do
      local grad = p.grad
      if grad ~= nil then
        local dev = grad:device()
        local s = grad:mul(0):sum()
        probes[dev] = probes[dev] and probes[dev] + s or s
        if inv ~= 1 then grad:mul_(inv) end
      end
    end
  end
  for _, s in pairs(probes) do
    checked = true
    local v = s:item()
    if v ~= v then found = true end
  end
  if checked then st.found_inf = found else st.found_inf = nil end
  st.stage = UNSCALED
end

-- step(opt, ...): unscales opt's gradients (unless unscale_ did already)
-- and runs opt:step(...) when none of them holds inf or NaN; returns what
-- opt:step returned, or nothing when it skipped.
function GradScaler:step(opt, ...)
  if not self._enabled then return opt:step(...) end
  if select('#', ...) > 0 and type((...)) == 'function' then
    fail(2, 'step: a closure is not supported while the GradScaler is enabled')
  end
  local st = opt_state(self, opt, 'step')
  if st.stage == STEPPED then fail(2, 'step: step() has already been called since the last update()') end
  if st.stage == READY then self:unscale_(opt) end
  if st.found_inf == nil then fail(2, 'step: no inf checks were recorded for this optimizer (no parameter has a gradient)') end
  local ret
  if not st.found_inf then ret = opt:step(...) end
  st.stage = STEPPED
  return ret
end

-- update(new_scale): the next scale. new_scale (a number or a 1-element
-- tensor) sets it; otherwise it is multiplied by backoff_factor when an
-- optimizer found inf or NaN this iteration, and by growth_factor after
-- growth_interval iterations in a row without (unless that overflows f32).
function GradScaler:update(new_scale)
  if not self._enabled then return end
  if new_scale ~= nil then
    if core.is_tensor(new_scale) then
      if new_scale:numel() ~= 1 or new_scale.requires_grad then
        fail(2, 'update: new_scale must be a number or a 1-element tensor that does not require grad')
      end
      new_scale = new_scale:item()
    end
    if type(new_scale) ~= 'number' then fail(2, 'update: new_scale must be a number or a 1-element tensor, got %s', type(new_scale)) end
    self._scale = f32(new_scale)
  else
    local recorded, found = false, false
    for _, st in pairs(self._per_opt) do
      if st.found_inf ~= nil then
        recorded = true
        found = found or st.found_inf
      end
    end
    if not recorded then fail(2, 'update: no inf checks were recorded prior to update() (call step() or unscale_() first)') end
    if found then
      self._scale = f32(self._scale * self._backoff_factor)
      self._growth_tracker = 0
    else
      local successful = self._growth_tracker + 1
      if successful == self._growth_interval then
        local grown = f32(self._scale * self._growth_factor)
        if grown < math.huge then self._scale = grown end
        self._growth_tracker = 0
      else
        self._growth_tracker = successful
      end
    end
  end
  self._per_opt = {}
end

function GradScaler:get_scale() return self._enabled and self._scale or 1.0 end
function GradScaler:is_enabled() return self._enabled end
function GradScaler:get_growth_factor() return self._growth_factor end
function GradScaler:set_growth_factor(v) self._growth_factor = v end
function GradScaler:get_backoff_factor() return self._backoff_factor end
function GradScaler:set_backoff_factor(v) self._backoff_factor = v end
function GradScaler:get_growth_interval() return self._growth_interval end
function GradScaler:set_growth_interval(v) self._growth_interval = v end
function GradScaler:_get_growth_tracker() return self._growth_tracker end

-- state_dict(): torch's keys ({} when disabled).
function GradScaler:state_dict()
  if not self._enabled then return {} end
  return { scale = self._scale, growth_factor = self._growth_factor, backoff_factor = self._backoff_factor,
    growth_interval = self._growth_interval, _growth_tracker = self._growth_tracker }
end

function GradScaler:load_state_dict(sd)
  if not self._enabled then return end
  if type(sd) ~= 'table' then fail(2, 'load_state_dict: expected a table from state_dict(), got %s', type(sd)) end
  if next(sd) == nil then
    fail(2, 'load_state_dict: the state dict is empty, possibly because it was saved from a disabled GradScaler')
  end
  for _, k in ipairs { 'scale', 'growth_factor', 'backoff_factor', 'growth_interval', '_growth_tracker' } do
    if type(sd[k]) ~= 'number' then fail(2, "load_state_dict: '%s' is %s, expected a number", k, tostring(sd[k])) end
  end
  self._scale = f32(sd.scale)
  self._growth_factor, self._backoff_factor = sd.growth_factor, sd.backoff_factor
  self._growth_interval, self._growth_tracker = sd.growth_interval, sd._growth_tracker
end

function GradScaler:__tostring()
  return string.format('GradScaler(scale=%g, growth_factor=%g, backoff_factor=%g, growth_interval=%d%s)', self._scale,
    self._growth_factor, self._backoff_factor, self._growth_interval, self._enabled and '' or ', enabled=false')
end

---------------------------------------------------------------------------

return function(lumen)
  -- autocast(dtype, fn, ...): runs fn(...) with autocast on ('bf16' or
  -- 'f16'; false turns it off inside), restoring the previous mode after,
  -- even when fn errors. Returns fn's results.
  function lumen.autocast(dtype, fn, ...)
    local m = mode_arg('autocast', dtype, true, 2)
    if type(fn) ~= 'function' then error('lumen.autocast: expected a function, got ' .. type(fn), 2) end
    local was = C.lm_autocast(ctx)
    C.lm_set_autocast(ctx, m)
    local res = { pcall(fn, ...) }
    C.lm_set_autocast(ctx, was)
    if not res[1] then error(res[2], 0) end
    return unpack(res, 2, table.maxn(res))
  end

  -- autocast_dtype() -> 'bf16', 'f16', or nil when off.
  function lumen.autocast_dtype() return mode_names[tonumber(C.lm_autocast(ctx))] end

  -- lowp_round(x, dtype): x (f32) rounded to bf16 or f16 and back to f32,
  -- as autocast reads operands.
  core.export(lumen, 'lowp_round', function(x, dtype)
    local h = core.handle(x, 'lowp_round', 'input')
    return core.call(C.lm_lowp_round, h, mode_arg('lowp_round', dtype, false, 2), core.out1)
  end)

  lumen.amp = { GradScaler = new_scaler, _GradScaler = GradScaler }
end
