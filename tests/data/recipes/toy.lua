-- toy.lua: a recipe small enough for the recipe format's own specs
-- (tests/spec/recipe_spec.lua): a 3-D convolution learns to segment bright
-- blobs in seeded noise, through the loader, augmentation and segment.fit.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local optim = require 'lumen.optim'
local recipe = require 'lumen.recipe'
local segment = require 'lumen.segment'
local loader = require 'lumen.loader'
local augment = require 'lumen.augment'
local image = require 'lumen.image'

local function build()
  return nn.Sequential(nn.Conv3d(1, 4, 3, { padding = 1 }), nn.ReLU(), nn.Dropout(0.2), nn.Conv3d(4, 2, 1))
end

local function volume(seed)
  lumen.manual_seed(seed)
  local x = lumen.randn(12, 12, 12)
  local y = x:gt(0.8):to('u8')
  return x + y:to('f32') * 2, y
end

local function train(run)
  local o = run.opts
  local x, y = volume(100)
  local model = build()
  local opt = optim.Adam(model:parameters(), { lr = o.lr })
  local sched = optim.lr_scheduler.StepLR(opt, 3, 0.5)
  local finished = segment.fit(run, {
    model = model, optimizer = opt, scheduler = sched, steps = o.steps, log_every = 2, validate_every = 3,
    loader = function(first)
      return loader.new { cases = { { image = x, label = y } }, patch = { 8, 8, 8 }, batch = 2, workers = o.workers,
        seed = o.seed, first_batch = first, transforms = { augment.flip {}, augment.noise { std = { 0, 0.1 } } } }
    end,
    loss = function(b) return nn.F.cross_entropy(model(b.image), b.label) end,
    validate = function() return { val_loss = nn.F.cross_entropy(model(x:view(1, 1, 12, 12, 12)), y:to('i64'):unsqueeze(0)):item() } end,
  })
  if not finished then return end
  run:metrics { test = { loss = run.history[#run.history].loss }, baseline = { loss = math.log(2) } }
  require('lumen.plot').overlay(run:figure('overlay.png'), x, { outlines = { { mask = y, color = { 255, 0, 0 }, name = 'truth' } } })
end

local function predict(run, img)
  local model = build()
  run:restore { model = model }
  model:eval()
  local logits = lumen.no_grad(function(v) return model(v) end, img.data:to('f32'):unsqueeze(0):unsqueeze(0))
  return image.new(logits[0]:argmax(0):to('u8'), { affine = img.affine })
end

return recipe.define {
  name = 'toy',
  description = 'a tiny segmentation recipe for the specs',
  options = {
    { 'steps', 8, 'training steps' },
    { 'lr', 0.05, 'Adam learning rate' },
    { 'workers', 1, 'loader threads' },
    { 'patch', { 8, 8, 8 }, 'a list option' },
    { 'note', 'none', 'a string option' },
  },
  quick = { steps = 4 },
  train = train,
  predict = predict,
}
