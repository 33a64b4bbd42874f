-- lr_scheduler.lua: learning-rate schedules over an optimizer's parameter
-- groups, as torch.optim.lr_scheduler (reached as optim.lr_scheduler).
--
-- A schedule sets group.lr for every group when it is made (epoch 0) and
-- on each sched:step() (the next epoch or iteration; call it after
-- opt:step()). sched:step(epoch) jumps to an epoch through the closed form.
-- sched:get_last_lr() lists the rates last set. The first rate of each
-- group is kept in group.initial_lr (as torch does), so a schedule made on
-- an optimizer whose lr another schedule already changed starts from the
-- same base.
--
-- StepLR, MultiStepLR and CosineAnnealingLR update the current rates
-- recursively, exactly as torch's do, so that they compose with other
-- changes to group.lr; PolyLR and WarmupCosine set the closed form.
local lumen = require 'lumen'
local core = lumen.core

local S = {}

local function fail(who, level, fmt, ...)
  error(string.format('lumen.optim.lr_scheduler.%s: ' .. fmt, who, ...), level + 1)
end

local function int_arg(who, level, name, v, min)
  if not core.is_int(v) or v < min then
    fail(who, level + 1, '%s must be an integer >= %d, got %s', name, min, tostring(v))
  end
  return v
end

-- Options and numbers are checked by lumen.core under this name.
local function op(who) return 'optim.lr_scheduler.' .. who end

local function check_optimizer(who, level, opt)
  if type(opt) ~= 'table' or type(opt.param_groups) ~= 'table' then
    fail(who, level + 1, 'expected an optimizer (from lumen.optim), got %s', type(opt))
  end
end

local function current_lrs(opt)
  local lrs = {}
  for i, g in ipairs(opt.param_groups) do lrs[i] = g.lr end
  return lrs
end

local function copy_list(t)
  local c = {}
  for i, v in ipairs(t) do c[i] = v end
  return c
end

---------------------------------------------------------------------------
-- the common part

local Scheduler = {}
Scheduler.__index = Scheduler
S.LRScheduler = Scheduler

-- A class whose instances share Scheduler's methods.
local function class(name)
  local c = setmetatable({ name = name }, { __index = Scheduler })
  c.__index = c
  return c
end

-- Attaches self to opt and sets the rates of epoch 0.
local function start(self, opt)
  self.optimizer = opt
  self.base_lrs = {}
  for i, g in ipairs(opt.param_groups) do
    if g.initial_lr == nil then g.initial_lr = g.lr end
    self.base_lrs[i] = g.initial_lr
  end
  self.last_epoch = -1
  self:step()
  return self
end

-- step(): the next epoch's rates; step(epoch): the rates of that epoch.
function Scheduler:step(epoch)
  local lrs
  if epoch == nil then
    self.last_epoch = self.last_epoch + 1
    lrs = self:get_lr()
  else
    self.last_epoch = int_arg(self.name, 2, 'epoch', epoch, 0)
    lrs = self:closed_form()
  end
  for i, g in ipairs(self.optimizer.param_groups) do g.lr = lrs[i] end
  self._last_lr = copy_list(lrs)
end

function Scheduler:get_last_lr() return copy_list(self._last_lr) end

-- By default the recursive rule is the closed form.
function Scheduler:get_lr() return self:closed_form() end

-- state_dict(): the schedule's fields (numbers, strings and lists of
-- numbers), for checkpoints; derived tables are rebuilt on loading.
function Scheduler:state_dict()
  local sd = {}
  for k, v in pairs(self) do
    if k ~= 'optimizer' and k ~= 'milestone_counts' then sd[k] = type(v) == 'table' and copy_list(v) or v end
  end
  return sd
end

function Scheduler:load_state_dict(sd)
  if type(sd) ~= 'table' then fail(self.name, 2, 'load_state_dict: expected a table from state_dict(), got %s', type(sd)) end
  if sd.name ~= nil and sd.name ~= self.name then
    fail(self.name, 2, 'load_state_dict: the saved state is of a %s', tostring(sd.name))
  end
  for k, v in pairs(sd) do self[k] = type(v) == 'table' and copy_list(v) or v end
  if self.milestone_counts then
    self.milestone_counts = {}
    for _, m in ipairs(self.milestones) do self.milestone_counts[m] = (self.milestone_counts[m] or 0) + 1 end
  end
end

---------------------------------------------------------------------------
-- StepLR(opt, step_size, gamma = 0.1): lr * gamma every step_size epochs

local StepLR = class('StepLR')
S.StepLR = function(opt, step_size, gamma)
  check_optimizer('StepLR', 2, opt)
  local self = setmetatable({ name = 'StepLR' }, StepLR)
  self.step_size = int_arg('StepLR', 2, 'step_size', step_size, 1)
  self.gamma = core.number(gamma, op('StepLR'), 'gamma', 0.1)
  return start(self, opt)
end
function StepLR:get_lr()
  local lrs = current_lrs(self.optimizer)
  if self.last_epoch == 0 or self.last_epoch % self.step_size ~= 0 then return lrs end
  for i, lr in ipairs(lrs) do lrs[i] = lr * self.gamma end
  return lrs
end
function StepLR:closed_form()
  local lrs = {}
  for i, base in ipairs(self.base_lrs) do lrs[i] = base * self.gamma ^ math.floor(self.last_epoch / self.step_size) end
  return lrs
end

---------------------------------------------------------------------------
-- MultiStepLR(opt, milestones, gamma = 0.1): lr * gamma at each milestone
-- (a milestone listed twice applies gamma twice)

local MultiStepLR = class('MultiStepLR')
S.MultiStepLR = function(opt, milestones, gamma)
  check_optimizer('MultiStepLR', 2, opt)
  if type(milestones) ~= 'table' then
    fail('MultiStepLR', 2, 'milestones must be a list of epochs, got %s', type(milestones))
  end
  local self = setmetatable({ name = 'MultiStepLR', milestones = {}, milestone_counts = {} }, MultiStepLR)
  for i, m in ipairs(milestones) do
    self.milestones[i] = int_arg('MultiStepLR', 2, 'milestones[' .. i .. ']', m, 0)
    self.milestone_counts[m] = (self.milestone_counts[m] or 0) + 1
  end
  table.sort(self.milestones)
  self.gamma = core.number(gamma, op('MultiStepLR'), 'gamma', 0.1)
  return start(self, opt)
end
function MultiStepLR:get_lr()
  local lrs = current_lrs(self.optimizer)
  local count = self.milestone_counts[self.last_epoch]
  if not count then return lrs end
  for i, lr in ipairs(lrs) do lrs[i] = lr * self.gamma ^ count end
  return lrs
end
function MultiStepLR:closed_form()
  local passed = 0
  for _, m in ipairs(self.milestones) do
    if m <= self.last_epoch then passed = passed + 1 end
  end
  local lrs = {}
  for i, base in ipairs(self.base_lrs) do lrs[i] = base * self.gamma ^ passed end
  return lrs
end

---------------------------------------------------------------------------
-- CosineAnnealingLR(opt, T_max, eta_min = 0):
-- eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2, past T_max
-- rising again (SGDR without restarts), as torch

local CosineAnnealingLR = class('CosineAnnealingLR')
S.CosineAnnealingLR = function(opt, T_max, eta_min)
  check_optimizer('CosineAnnealingLR', 2, opt)
  local self = setmetatable({ name = 'CosineAnnealingLR' }, CosineAnnealingLR)
  self.T_max = int_arg('CosineAnnealingLR', 2, 'T_max', T_max, 1)
  self.eta_min = core.number(eta_min, op('CosineAnnealingLR'), 'eta_min', 0)
  return start(self, opt)
end
function CosineAnnealingLR:get_lr()
  local e, T, lo = self.last_epoch, self.T_max, self.eta_min
  local lrs = current_lrs(self.optimizer)
  if e == 0 then return lrs end
  if (e - 1 - T) % (2 * T) == 0 then
    -- the bottom of the curve: the ratio below would divide by zero
    for i, lr in ipairs(lrs) do lrs[i] = lr + (self.base_lrs[i] - lo) * (1 - math.cos(math.pi / T)) / 2 end
    return lrs
  end
  local ratio = (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T))
  for i, lr in ipairs(lrs) do lrs[i] = ratio * (lr - lo) + lo end
  return lrs
end
function CosineAnnealingLR:closed_form()
  local lrs = {}
  for i, base in ipairs(self.base_lrs) do
    lrs[i] = self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
  end
  return lrs
end

---------------------------------------------------------------------------
-- PolyLR(opt, max_epochs, exponent = 0.9): base * (1 - epoch / max_epochs)^exponent,
-- 0 from max_epochs on (nnU-Net's schedule)

local PolyLR = class('PolyLR')
S.PolyLR = function(opt, max_epochs, exponent)
  check_optimizer('PolyLR', 2, opt)
  local self = setmetatable({ name = 'PolyLR' }, PolyLR)
  self.max_epochs = int_arg('PolyLR', 2, 'max_epochs', max_epochs, 1)
  self.exponent = core.number(exponent, op('PolyLR'), 'exponent', 0.9)
  return start(self, opt)
end
function PolyLR:closed_form()
  local e = math.min(self.last_epoch, self.max_epochs)
  local lrs = {}
  for i, base in ipairs(self.base_lrs) do lrs[i] = base * (1 - e / self.max_epochs) ^ self.exponent end
  return lrs
end

---------------------------------------------------------------------------
-- WarmupCosine(opt, {warmup_steps, total_steps, min_lr = 0, warmup_start_lr = 0}):
-- for step s < warmup_steps, warmup_start_lr + (base - warmup_start_lr) * s / warmup_steps;
-- then min_lr + (base - min_lr) * (1 + cos(pi * p)) / 2 with
-- p = (s - warmup_steps) / (total_steps - warmup_steps), held at min_lr
-- from total_steps on.

local WarmupCosine = class('WarmupCosine')
S.WarmupCosine = function(opt, opts)
  local who = 'WarmupCosine'
  check_optimizer(who, 2, opt)
  opts = core.options(opts, op(who), { warmup_steps = true, total_steps = true, min_lr = true, warmup_start_lr = true })
  local self = setmetatable({ name = who }, WarmupCosine)
  self.warmup_steps = int_arg(who, 2, 'warmup_steps', opts.warmup_steps, 0)
  self.total_steps = int_arg(who, 2, 'total_steps', opts.total_steps, 1)
  if self.total_steps <= self.warmup_steps then
    fail(who, 2, 'total_steps (%d) must be greater than warmup_steps (%d)', self.total_steps, self.warmup_steps)
  end
  self.min_lr = core.number(opts.min_lr, op(who), 'min_lr', 0)
  self.warmup_start_lr = core.number(opts.warmup_start_lr, op(who), 'warmup_start_lr', 0)
  return start(self, opt)
end
function WarmupCosine:closed_form()
  local s, W, N = self.last_epoch, self.warmup_steps, self.total_steps
  local lrs = {}
  for i, base in ipairs(self.base_lrs) do
    if s < W then
      lrs[i] = self.warmup_start_lr + (base - self.warmup_start_lr) * s / W
    else
      local p = math.min(s - W, N - W) / (N - W)
      lrs[i] = self.min_lr + (base - self.min_lr) * (1 + math.cos(math.pi * p)) / 2
    end
  end
  return lrs
end

---------------------------------------------------------------------------
-- ReduceLROnPlateau(opt, {mode = 'min', factor = 0.1, patience = 10,
--   threshold = 1e-4, threshold_mode = 'rel', cooldown = 0, min_lr = 0, eps = 1e-8})
-- sched:step(metric) after each evaluation; lr * factor (not below min_lr,
-- a number or one per group) once the metric has not improved for more
-- than patience steps.

local Plateau = {}
Plateau.__index = Plateau
S.ReduceLROnPlateau = function(opt, opts)
  local who = 'ReduceLROnPlateau'
  check_optimizer(who, 2, opt)
  opts = core.options(opts, op(who), { mode = true, factor = true, patience = true, threshold = true, threshold_mode = true,
    cooldown = true, min_lr = true, eps = true })
  local self = setmetatable({ name = who, optimizer = opt }, Plateau)
  self.mode = opts.mode or 'min'
  if self.mode ~= 'min' and self.mode ~= 'max' then fail(who, 2, "mode must be 'min' or 'max', got %s", tostring(self.mode)) end
  self.threshold_mode = opts.threshold_mode or 'rel'
  if self.threshold_mode ~= 'rel' and self.threshold_mode ~= 'abs' then
    fail(who, 2, "threshold_mode must be 'rel' or 'abs', got %s", tostring(self.threshold_mode))
  end
  self.factor = core.number(opts.factor, op(who), 'factor', 0.1)
  if self.factor >= 1 then fail(who, 2, 'factor must be < 1, got %s', tostring(self.factor)) end
  self.patience = int_arg(who, 2, 'patience', opts.patience == nil and 10 or opts.patience, 0)
  self.threshold = core.number(opts.threshold, op(who), 'threshold', 1e-4)
  self.cooldown = int_arg(who, 2, 'cooldown', opts.cooldown == nil and 0 or opts.cooldown, 0)
  self.eps = core.number(opts.eps, op(who), 'eps', 1e-8)
  local min_lr = opts.min_lr == nil and 0 or opts.min_lr
  self.min_lrs = {}
  if type(min_lr) == 'table' then
    if #min_lr ~= #opt.param_groups then
      fail(who, 2, 'expected %d min_lrs (one per param group), got %d', #opt.param_groups, #min_lr)
    end
    for i, v in ipairs(min_lr) do self.min_lrs[i] = core.number(v, op(who), 'min_lr[' .. i .. ']') end
  else
    min_lr = core.number(min_lr, op(who), 'min_lr')
    for i = 1, #opt.param_groups do self.min_lrs[i] = min_lr end
  end
  self.last_epoch = 0
  self.best = self.mode == 'min' and math.huge or -math.huge
  self.num_bad_epochs = 0
  self.cooldown_counter = 0
  self._last_lr = current_lrs(opt)
  return self
end

function Plateau:is_better(a, best)
  if self.mode == 'min' then
    if self.threshold_mode == 'rel' then return a < best * (1 - self.threshold) end
    return a < best - self.threshold
  end
  if self.threshold_mode == 'rel' then return a > best * (1 + self.threshold) end
  return a > best + self.threshold
end

-- step(metric): metric is a number or a one-element tensor.
function Plateau:step(metric)
  if core.is_tensor(metric) then metric = metric:item() end
  if type(metric) ~= 'number' then
    fail(self.name, 2, 'step: metric must be a number or a one-element tensor, got %s', type(metric))
  end
  self.last_epoch = self.last_epoch + 1
  if self:is_better(metric, self.best) then
    self.best = metric
    self.num_bad_epochs = 0
  else
    self.num_bad_epochs = self.num_bad_epochs + 1
  end
  if self.cooldown_counter > 0 then
    self.cooldown_counter = self.cooldown_counter - 1
    self.num_bad_epochs = 0 -- bad epochs in cooldown do not count
  end
  if self.num_bad_epochs > self.patience then
    for i, g in ipairs(self.optimizer.param_groups) do
      local new = math.max(g.lr * self.factor, self.min_lrs[i])
      if g.lr - new > self.eps then g.lr = new end
    end
    self.cooldown_counter = self.cooldown
    self.num_bad_epochs = 0
  end
  self._last_lr = current_lrs(self.optimizer)
end

Plateau.get_last_lr = Scheduler.get_last_lr
Plateau.state_dict = Scheduler.state_dict
Plateau.load_state_dict = Scheduler.load_state_dict

return S
