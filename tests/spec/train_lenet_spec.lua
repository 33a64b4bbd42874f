-- A first training run: a LeNet-style CNN learns disks against squares in
-- noise (datasets/shapes.lua, seeded) and must reach 95% accuracy on
-- held-out images. 800 Adam steps of 32 images take about 12 s on 2 cores.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local optim = require 'lumen.optim'
local F = nn.F
local shapes = dofile('datasets/shapes.lua')

local Net = nn.Module:extend('SmallLeNet')
function Net:__init()
  self.c1 = nn.Conv2d(1, 8, 3, { padding = 1 })
  self.c2 = nn.Conv2d(8, 16, 3, { padding = 1 })
  self.c3 = nn.Conv2d(16, 32, 3, { padding = 1 })
  self.f1 = nn.Linear(32 * 4 * 4, 64)
  self.f2 = nn.Linear(64, 2)
end
function Net:forward(x)
  x = F.max_pool2d(F.relu(self.c1(x)), 2)
  x = F.max_pool2d(F.relu(self.c2(x)), 2)
  x = F.max_pool2d(F.relu(self.c3(x)), 2)
  return self.f2(F.relu(self.f1(F.flatten(x, 1))))
end

describe('training', function()
  it('LeNet separates disks from squares (>= 95% held out)', function()
    local train_x, train_y = shapes.make(1024, { size = 32, noise = 0.3, seed = 11 })
    local test_x, test_y = shapes.make(512, { size = 32, noise = 0.3, seed = 12 })
    lumen.manual_seed(5)
    local model = Net()
    local opt = optim.Adam(model:parameters(), { lr = 1e-3 })
    local batch, steps = 32, 800
    local first, last, live_early
    for step = 0, steps - 1 do
      if step == 100 then
        collectgarbage('collect')
        live_early = lumen.memory().live
      end
      local i = (step * batch) % 1024
      local x, y = train_x:slice(0, i, i + batch), train_y:slice(0, i, i + batch)
      opt:zero_grad()
      local loss = F.cross_entropy(model(x), y)
      loss:backward()
      opt:step()
      if step == 0 then first = loss:item() end
      last = loss:item()
    end
    -- nothing accumulates from step to step: graphs, saved tensors and
    -- temporaries are all gone once a step's tensors are collected
    collectgarbage('collect')
    local live_late = lumen.memory().live
    assert.is_true(math.abs(live_late - live_early) < 65536,
      string.format('live memory went from %d to %d bytes', live_early, live_late))
    model:eval()
    local pred = lumen.no_grad(function() return model(test_x):argmax(1) end)
    local acc = pred:eq(test_y):to('f32'):mean():item()
    assert.is_true(last < first, string.format('loss went from %.3f to %.3f', first, last))
    assert.is_true(acc >= 0.95, string.format('held-out accuracy %.3f, expected at least 0.95', acc))
  end)
end)
