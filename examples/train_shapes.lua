-- Training a small CNN: disks against squares (datasets/shapes.lua).
--   build/lumen run examples/train_shapes.lua [--steps=800] [--lr=0.001]
local opts = ... or {}
local nn = require 'lumen.nn'
local optim = require 'lumen.optim'
local checkpoint = require 'lumen.checkpoint'
local F = nn.F
local shapes = dofile(lumen.core.root .. '/datasets/shapes.lua')

local Net = nn.Module:extend('SmallLeNet')
function Net:__init()
  self.features = nn.Sequential(
    nn.Conv2d(1, 8, 3, { padding = 1 }), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(8, 16, 3, { padding = 1 }), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, { padding = 1 }), nn.ReLU(), nn.MaxPool2d(2))
  self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 2))
end
function Net:forward(x) return self.classifier(self.features(x)) end

local steps, batch = tonumber(opts.steps) or 800, 32
local train_x, train_y = shapes.make(1024, { size = 32, noise = 0.3, seed = 11 })
local test_x, test_y = shapes.make(512, { size = 32, noise = 0.3, seed = 12 })
lumen.manual_seed(5)
local model = Net()
print(model)
local opt = optim.Adam(model:parameters(), { lr = tonumber(opts.lr) or 1e-3 })
local t0 = lumen.clock()
for step = 1, steps do
  local i = ((step - 1) * batch) % 1024
  opt:zero_grad()
  local loss = F.cross_entropy(model(train_x:slice(0, i, i + batch)), train_y:slice(0, i, i + batch))
  loss:backward()
  opt:step()
  if step % 100 == 0 then print(string.format('step %4d  loss %.4f  %.1f s', step, loss:item(), lumen.clock() - t0)) end
end
model:eval()
local acc = lumen.no_grad(function() return model(test_x):argmax(1):eq(test_y):to('f32'):mean():item() end)
print(string.format('held-out accuracy %.1f%%', 100 * acc))
-- model, optimizer state, step and RNG state in one safetensors file,
-- written atomically; a fresh model restored from it predicts the same
local path = os.tmpname()
checkpoint.save(path, { model = model, optimizer = opt, step = steps })
local restored = Net()
local step = checkpoint.load(path, { model = restored })
restored:eval()
local same = lumen.no_grad(function() return restored(test_x):eq(model(test_x)):all():item() end)
print(string.format('checkpoint at step %d restored: %s', step, same and 'same predictions' or 'DIFFERENT predictions'))
os.remove(path)
