-- lua/lumen/segment.lua: the working grid and back (recipes' fit is
-- checked through tests/spec/recipe_spec.lua).
local lumen = require 'lumen'
local image = require 'lumen.image'
local segment = require 'lumen.segment'

describe('segment', function()
  -- a ball of radius 9 mm centred at world (2, -3, 5) on a 1 mm grid in LPS order
  local function ball_image(shape, spacing, flip)
    local affine = { { flip and -spacing or spacing, 0, 0, 0 }, { 0, flip and -spacing or spacing, 0, 0 },
      { 0, 0, spacing, 0 }, { 0, 0, 0, 1 } }
    for a = 1, 3 do affine[a][4] = -affine[a][a] * (shape[a] - 1) / 2 end
    local coords = {}
    for a = 1, 3 do
      local view = { 1, 1, 1 }
      view[a] = shape[a]
      local centre = ({ 2, -3, 5 })[a]
      coords[a] = (lumen.arange(shape[a]):to('f64') * affine[a][a] + affine[a][4] - centre):reshape(view)
    end
    local r2 = coords[1] ^ 2 + coords[2] ^ 2 + coords[3] ^ 2
    return image.new(r2:le(81):to('u8'), { affine = affine })
  end

  it('to_grid brings probabilities from the working grid back onto another grid and orientation', function()
    local work = ball_image({ 20, 22, 18 }, 2, false)        -- RAS, 2 mm
    local target = ball_image({ 37, 41, 35 }, 1, true)       -- LPS, 1 mm
    local fg = work.data:to('f32')
    local probs = lumen.stack({ 1 - fg, fg }, 0)
    local lab = segment.to_grid(probs, work, target)
    assert.are.same(target.data:size(), lab.data:size())
    assert.are.same(target.affine, lab.affine)
    local d = require('lumen.metrics').dice(lab.data, target.data)
    assert.is_true(d > 0.93, 'Dice ' .. d) -- a 2 mm ball against the exact 1 mm one
  end)

  it('normalize does not depend on how much background surrounds the head', function()
    lumen.manual_seed(1)
    local head = lumen.rand(12, 12, 12) * 100 + 50
    local near = segment.normalize(image.new(head:pad({ 4, 4, 4, 4, 4, 4 }))).data
    local far = segment.normalize(image.new(head:pad({ 20, 20, 20, 20, 20, 20 }))).data
    local a, b = near[{ { 4, 16 }, { 4, 16 }, { 4, 16 } }], far[{ { 20, 32 }, { 20, 32 }, { 20, 32 } }]
    assert.is_true((a - b):abs():max():item() < 0.05)
    -- the head's own statistics: mean 0, deviation 1 over it
    assert.is_true(math.abs(a:mean():item()) < 1e-3 and math.abs(a:std():item() - 1) < 0.01)
  end)
end)
