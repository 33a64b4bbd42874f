-- The vnet_dice recipe end to end: a --quick run writes every file, both
-- networks' test metrics side by side, a loose Dice floor that an untrained
-- network does not reach, the same result after an interruption and
-- --resume, and --predict writes a mask on the input's own grid.
local scratch = require 'helpers.scratch'
local R = require 'helpers.recipes'

local RECIPE = 'recipes/segment/vnet_dice.lua'

describe('recipe vnet_dice', function()
  local dir, P = scratch.dir()
  local run

  lazy_teardown(function() os.execute('rm -rf ' .. dir) end)

  it('--quick reports the soft-Dice and the cross-entropy network side by side, above a floor', function()
    local _, err, rc = R.lumen('run ' .. RECIPE .. ' --quick --progress none --out ' .. P('a'))
    assert.are.equal(0, rc, err)
    run = R.only_run(P('a'), 'vnet_dice')
    local config, m = R.check_run(run)
    assert.is_true(config.options.quick)
    assert.matches('test_overlay.png', table.concat(R.ls(run .. '/figures'), ' '), 1, true)
    assert.is_string(m.trained_on)
    assert.is_string(m.tested_on)
    assert.matches('soft Dice', m.test_is)
    assert.matches('cross%-entropy', m.baseline_is)
    for _, side in ipairs { 'test', 'baseline', 'atlas' } do
      local c = m[side]
      assert.is_number(c.dice, side)
      assert.is_true(c.dice >= 0 and c.dice <= 1)
      assert.is_not_nil(c.hd95)
    end
    -- an untrained network predicts almost nothing of a structure under 1%
    -- of the volume (Dice near 0); the quick run must find it roughly
    assert.is_true(m.test.dice > 0.2, 'soft-Dice network test Dice ' .. m.test.dice)
    assert.is_true(m.atlas.dice > 0.2 and m.atlas.dice < 0.99)
  end)

  it('resumes an interrupted run to the same result', function()
    R.check_resume(RECIPE, 'vnet_dice', run, P('b'), 25, 25)
  end)

  it('predicts labels on the grid of any input', function()
    -- Colin27 at 4 mm in LPS order: another size, spacing and orientation
    local c = require('lumen.data').get('colin27').load { spacing = 4 }
    local labels = R.predict(RECIPE, run, c.image:reorient('LPS'), dir).data:to('i32')
    assert.is_true(labels:max():item() <= 1 and labels:min():item() >= 0)
    assert.is_true(labels:gt(0):sum():item() > 0)
  end)
end)
