-- tests/gpu/train_steps.lua: a bench workload (bench/workloads.lua) trained
-- for a few SGD steps on the CPU and on a device, from the same weights and
-- inputs (W.build seeds), and compared step by step. Used by
-- tests/gpu/checks.lua (the real GPU) and tests/spec/device_ops_spec.lua
-- (the fake and emulated devices, small inputs).
--
--   local T = dofile('tests/gpu/train_steps.lua')
--   local r = T.compare('lenet', 'cuda', {steps = 3, small = true, root = '.'})
--   -- r.cpu, r.dev: the losses per step; r.loss_err: the largest
--   -- |dev - cpu| / (1 + |cpu|) of the losses; r.grad_err: the same over
--   -- the first step's parameter gradients; r.seconds = {cpu =, dev =}
--
-- opts.loss = 'probe' replaces the workload's loss by sum(out * p) with a
-- fixed random p (for devices that lack the loss's kernels).
-- opts.amp = 'bf16' or 'f16' runs the forward and the loss under
-- lumen.autocast and steps through a GradScaler (init_scale opts.init_scale,
-- default 2^16): the gradients compared are the scaled ones, and r.scales
-- lists the scale after each step (the same on both devices unless one of
-- them overflowed where the other did not).
local lumen = require 'lumen'

local M = {}

local function workloads(root)
  return dofile((root or '.') .. '/bench/workloads.lua')
end

-- Trains on device; returns the losses, the first step's gradients (on the
-- CPU, by parameter name) and the seconds the steps took.
function M.train(name, device, opts)
  opts = opts or {}
  local W = workloads(opts.root)
  local w = W.build(name, { small = opts.small })
  local steps, lr = opts.steps or 1, opts.lr or 0.01
  w.model:to(device)
  w.model:train()
  local inputs = {}
  for i, x in ipairs(w.inputs) do inputs[i] = x:to(device) end
  local target = w.target:to(device)
  local probe
  local losses, grads, scales = {}, {}, {}
  local scaler, opt
  if opts.amp then
    local optim = require 'lumen.optim'
    opt = optim.SGD(w.model:parameters(), { lr = lr })
    scaler = optim.GradScaler { init_scale = opts.init_scale or 2 ^ 16 }
  end
  local function forward()
    local out = w.model(unpack(inputs))
    if opts.loss == 'probe' then
      if not probe then
        lumen.manual_seed(7)
        probe = lumen.randn(out:size()):to(out:dtype()):to(device)
      end
      return (out * probe):sum()
    end
    return w.loss(out, target)
  end
  local t0 = lumen.clock()
  for s = 1, steps do
    w.model:zero_grad()
    local loss = opts.amp and lumen.autocast(opts.amp, forward) or forward()
    if scaler then scaler:scale(loss):backward() else loss:backward() end
    losses[s] = loss:item()
    local params = w.model:named_parameters()
    if s == 1 then
      -- a copy: the scaler unscales the gradients in place (and :cpu() of a CPU tensor is itself)
      for _, p in ipairs(params) do grads[p[1]] = p[2].grad and p[2].grad:cpu():clone() end
    end
    if scaler then
      scaler:step(opt)
      scaler:update()
      scales[s] = scaler:get_scale()
    else
      lumen.no_grad(function()
        for _, p in ipairs(params) do
          if p[2].grad then p[2]:copy_(p[2] - p[2].grad * lr) end
        end
      end)
    end
  end
  if device ~= 'cpu' then lumen.cuda.synchronize() end
  return losses, grads, lumen.clock() - t0, scales
end

function M.compare(name, device, opts)
  local cpu, gc, tc, sc = M.train(name, 'cpu', opts)
  local dev, gd, td, sd = M.train(name, device, opts)
  local r = { cpu = cpu, dev = dev, loss_err = 0, grad_err = 0, seconds = { cpu = tc, dev = td },
    scales = { cpu = sc, dev = sd } }
  for s = 1, #cpu do
    r.loss_err = math.max(r.loss_err, math.abs(dev[s] - cpu[s]) / (1 + math.abs(cpu[s])))
  end
  for k, g in pairs(gc) do
    local e = (gd[k]:to('f64') - g:to('f64')):abs():max():item() / (1 + g:abs():max():item())
    if e > r.grad_err then r.grad_err, r.worst_grad = e, k end
  end
  return r
end

return M
