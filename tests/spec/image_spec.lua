-- The image type: geometry derived from the affine, suffix dispatch, errors.
local lumen = require 'lumen'
local image = require 'lumen.image'

describe('image', function()
  it('derives spacing, origin and direction from the affine', function()
    -- axis i along -x with 2 mm, j along +z with 3 mm, k along +y with 0.5 mm
    local img = image.new(lumen.zeros(2, 3, 4), { affine = {
      { -2, 0, 0, 10 }, { 0, 0, 0.5, -20 }, { 0, 3, 0, 30 }, { 0, 0, 0, 1 } } })
    assert.are.same({ 2, 3, 0.5 }, img:spacing())
    assert.are.same({ 10, -20, 30 }, img:origin())
    assert.are.same({ { -1, 0, 0 }, { 0, 0, 1 }, { 0, 1, 0 } }, img:direction())
  end)

  it('defaults to the identity and refuses bad affines and unknown suffixes', function()
    local img = image.new(lumen.zeros(2, 2))
    assert.are.same({ 1, 1, 1 }, img:spacing())
    local _, e = pcall(image.new, lumen.zeros(2), { affine = { { 1, 2 } } })
    assert.matches('lumen.image.new: affine must be 4 rows of 4 numbers', e, 1, true)
    _, e = pcall(image.read, '/tmp/scan.unknownformat')
    assert.matches("lumen.image.read: '/tmp/scan.unknownformat' has no known image suffix", e, 1, true)
    _, e = pcall(image.new, 'x')
    assert.matches('lumen.image.new: data must be a tensor, got string', e, 1, true)
  end)
end)
