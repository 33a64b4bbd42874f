-- The atlas_unet3d recipe end to end: a --quick run writes every file, its
-- test Dice clears a loose floor that an untrained network does not, an
-- interrupted and resumed run gives the same result, and --predict writes
-- labels on the input's own grid.
local scratch = require 'helpers.scratch'
local R = require 'helpers.recipes'

local RECIPE = 'recipes/segment/atlas_unet3d.lua'
local CLASSES = { 'frontal', 'parietal', 'temporal', 'occipital', 'limbic', 'deep_grey', 'cerebellum' }

describe('recipe atlas_unet3d', function()
  local dir, P = scratch.dir()
  local run

  lazy_teardown(function() os.execute('rm -rf ' .. dir) end)

  it('--quick writes the run folder and per-class metrics next to the unregistered atlas', function()
    local _, err, rc = R.lumen('run ' .. RECIPE .. ' --quick --progress none --out ' .. P('a'))
    assert.are.equal(0, rc, err)
    run = R.only_run(P('a'), 'atlas_unet3d')
    local config, m = R.check_run(run)
    assert.is_true(config.options.quick)
    local figs = table.concat(R.ls(run .. '/figures'), ' ')
    for _, f in ipairs { 'loss.png', 'test_prediction.png', 'test_truth.png', 'test_baseline.png' } do
      assert.matches(f, figs, 1, true)
    end
    assert.is_string(m.trained_on)
    assert.is_string(m.tested_on)
    for _, name in ipairs(CLASSES) do
      for _, side in ipairs { 'test', 'baseline' } do
        local c = m[side][name]
        assert.is_table(c, side .. ' ' .. name)
        assert.is_true(c.dice >= 0 and c.dice <= 1)
        assert.is_not_nil(c.hd95)
      end
    end
    -- 60 quick steps learn the large classes first; a network that predicts
    -- noise or one class everywhere stays under 0.15 on every class
    local best = 0
    for _, name in ipairs(CLASSES) do best = math.max(best, m.test[name].dice) end
    assert.is_true(best > 0.3, 'best class test Dice ' .. best)
    -- the identity atlas overlaps its warped self well, far from 0 or 1
    assert.is_true(m.baseline.mean.dice > 0.3 and m.baseline.mean.dice < 0.99)
  end)

  it('resumes an interrupted run to the same result', function()
    R.check_resume(RECIPE, 'atlas_unet3d', run, P('b'), 30, 30)
  end)

  it('predicts labels on the grid of any input', function()
    -- Colin27 at 4 mm in LPS order: another size, spacing and orientation
    local c = require('lumen.data').get('colin27').load { spacing = 4 }
    local labels = R.predict(RECIPE, run, c.image:reorient('LPS'), dir).data:to('i32')
    assert.is_true(labels:max():item() <= #CLASSES and labels:min():item() >= 0)
    assert.is_true(labels:gt(0):sum():item() > 0)
  end)
end)
