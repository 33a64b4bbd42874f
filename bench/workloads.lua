-- workloads.lua: the five benchmark networks of ../shared/BENCH.md, built
-- from lumen.nn exactly as ../shared/peers/torch_bench.py builds them (same
-- layers, same parameter names, so a torch state_dict loads as it is).
--
--   local W = dofile('bench/workloads.lua')
--   local w = W.build('unet2d')            -- {model, inputs, target, loss}
--   local w = W.build('unet2d', {small = true})  -- smaller inputs, for specs
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local F = nn.F
local models = require 'lumen.models'

local W = { names = { 'lenet', 'unet2d', 'unet3d', 'deepmedic', 'lstm' } }

local LeNet = nn.Module:extend('LeNet')
function LeNet:__init()
  self.c1 = nn.Conv2d(1, 32, 3, { padding = 1 })
  self.c2 = nn.Conv2d(32, 64, 3, { padding = 1 })
  self.c3 = nn.Conv2d(64, 128, 3, { padding = 1 })
  self.f1 = nn.Linear(128 * 8 * 8, 256)
  self.f2 = nn.Linear(256, 2)
end
function LeNet:forward(x)
  x = F.max_pool2d(F.relu(self.c1(x)), 2)
  x = F.max_pool2d(F.relu(self.c2(x)), 2)
  x = F.max_pool2d(F.relu(self.c3(x)), 2)
  return self.f2(F.relu(self.f1(F.flatten(x, 1))))
end
W.LeNet = LeNet

W.UNet = models.UNet

local Pathway = nn.Module:extend('Pathway')
function Pathway:__init()
  local layers, prev = {}, 1
  for _, c in ipairs { 30, 30, 40, 40, 40, 40, 50, 50 } do
    layers[#layers + 1] = nn.Conv3d(prev, c, 3)
    layers[#layers + 1] = nn.ReLU()
    prev = c
  end
  self.net = nn.Sequential(layers)
end
function Pathway:forward(x) return self.net(x) end

local DeepMedic = nn.Module:extend('DeepMedic')
function DeepMedic:__init(n_classes)
  self.normal = Pathway()
  self.sub = Pathway()
  self.fc1 = nn.Conv3d(100, 150, 1)
  self.fc2 = nn.Conv3d(150, 150, 1)
  self.out = nn.Conv3d(150, n_classes or 2, 1)
end
function DeepMedic:forward(x_norm, x_sub)
  local a = self.normal(x_norm)
  local b = F.interpolate(self.sub(x_sub), { scale_factor = 3, mode = 'nearest' })
  local x = lumen.cat({ a, b }, 1)
  x = F.relu(self.fc1(x))
  x = F.relu(self.fc2(x))
  return self.out(x)
end
W.DeepMedic = DeepMedic

local LSTMClassifier = nn.Module:extend('LSTMClassifier')
function LSTMClassifier:__init()
  self.lstm = nn.LSTM(256, 128, { num_layers = 1, batch_first = true })
  self.fc = nn.Linear(128, 12)
end
function LSTMClassifier:forward(x)
  local y = self.lstm(x)
  return self.fc(y:select(1, -1))
end
W.LSTMClassifier = LSTMClassifier

W.ce_plus_soft_dice = models.ce_plus_soft_dice

-- Inputs as torch_bench.py makes them (values do not affect timing; the
-- parity check loads torch's own tensors instead).
function W.build(name, opts)
  local small = opts and opts.small
  lumen.manual_seed(0)
  if name == 'lenet' then
    local n = small and 4 or 64
    return { model = LeNet(), inputs = { lumen.randn(n, 1, 64, 64) }, target = lumen.randint(0, 2, { n }),
      loss = F.cross_entropy }
  elseif name == 'unet2d' or name == 'unet3d' then
    local dim = name == 'unet2d' and 2 or 3
    local shape = dim == 2 and (small and { 2, 1, 32, 32 } or { 8, 1, 128, 128 })
      or (small and { 1, 1, 16, 16, 16 } or { 2, 1, 64, 64, 64 })
    local x = lumen.randn(shape)
    return { model = models.UNet(dim, dim == 2 and { 32, 64, 128, 256 } or { 16, 32, 64 }), inputs = { x },
      target = x:select(1, 0):gt(0.5):to('i64'), loss = W.ce_plus_soft_dice }
  elseif name == 'deepmedic' then
    local n = small and 2 or 10
    local xn, xs = lumen.randn(n, 1, 25, 25, 25), lumen.randn(n, 1, 19, 19, 19)
    local t = xn:select(1, 0)[{ {}, { 8, 17 }, { 8, 17 }, { 8, 17 } }]:gt(0.5):to('i64')
    return { model = DeepMedic(), inputs = { xn, xs }, target = t, loss = F.cross_entropy }
  elseif name == 'lstm' then
    local n = small and 4 or 32
    return { model = LSTMClassifier(), inputs = { lumen.randn(n, 30, 256) }, target = lumen.randint(0, 12, { n }),
      loss = F.cross_entropy }
  end
  error('workloads: unknown workload ' .. tostring(name))
end

-- check(name, file, dtype): one training step's loss and parameter
-- gradients against PyTorch's float64 ones in file (bench/workloads_torch.py
-- export), from the same weights and inputs. Errors are max |lumen - ref| /
-- max |ref| per tensor. In f64 each must be below 1e-9; in f32 below
-- max(1e-4, 3 x the error of torch's own float32 step). Returns ok, the
-- worst ratio of error to tolerance, and a report.
function W.check(name, file, dtype)
  dtype = dtype or 'f32'
  local ref = lumen.load(file)
  local w = W.build(name, { small = true })
  local state, inputs = {}, {}
  for k, v in pairs(ref) do
    local i = k:match('^input%.(%d+)$')
    if i then inputs[tonumber(i) + 1] = v:to(dtype)
    elseif not k:find('^grad') and not k:find('^loss') and k ~= 'target' then state[k] = v end
  end
  w.model:load_state_dict(state)
  w.model:to(dtype)
  w.model:train()
  local loss = w.loss(w.model(unpack(inputs)), ref.target)
  loss:backward()
  local function rel(a, b)
    local scale = b:abs():max():item()
    return (a:to('f64') - b):abs():max():item() / (scale > 0 and scale or 1)
  end
  local worst, lines = 0, {}
  local function add(what, mine, theirs, torch32)
    local e = mine and rel(mine, theirs) or math.huge
    local tol = dtype == 'f64' and 1e-9 or math.max(1e-4, 3 * rel(torch32, theirs))
    worst = math.max(worst, e / tol)
    lines[#lines + 1] = string.format('  %-32s rel err %.3g (tolerance %.3g)', what, e, tol)
  end
  add('loss', loss:detach():reshape(1), ref.loss, ref.loss32)
  for _, p in ipairs(w.model:named_parameters()) do
    add('grad ' .. p[1], p[2].grad, ref['grad.' .. p[1]], ref['grad32.' .. p[1]])
  end
  table.insert(lines, 1, string.format('%s %s: loss %.8g (torch float64 %.8g)', name, dtype, loss:item(), ref.loss:item()))
  return worst <= 1, worst, table.concat(lines, '\n')
end

return W
