-- recipes/segment/deepmedic.lua: the --quick run completes, writes every
-- file, reports the network, the CRF and the baseline side by side above a
-- loose floor, and --predict handles a scan on another grid.
local lumen = require 'lumen'
local scratch = require 'helpers.scratch'
local R = require 'helpers.recipes'
local image = require 'lumen.image'

local RECIPE = 'recipes/segment/deepmedic.lua'

describe('deepmedic', function()
  local dir, P = scratch.dir()
  local run

  it('--quick trains, tests against the baseline, with and without the CRF, and writes the run folder', function()
    local out, err, rc = R.lumen('run ' .. RECIPE .. ' --progress none --quick --out ' .. P('a'))
    assert.are.equal(0, rc, err)
    run = R.only_run(P('a'), 'deepmedic')
    local config, m, log = R.check_run(run)
    assert.are.equal('dense', config.options.crf)
    for _, k in ipairs { 'test', 'test_crf', 'test_argmax', 'baseline' } do
      assert.is_table(m[k], k)
      for _, f in ipairs { 'dice', 'f1', 'precision', 'recall' } do
        assert.is_number(m[k][f], k .. '.' .. f)
        assert.is_true(m[k][f] >= 0 and m[k][f] <= 1, k .. '.' .. f)
      end
    end
    assert.matches('seeds 1%.%.2', m.trained_on)
    assert.matches('seeds 501%.%.501', m.tested_on)
    assert.is_number(m.postprocess.threshold)
    -- the quick lesions are large and bright: 40 steps of a tiny network
    -- find them; one that learnt nothing predicts none (Dice and F1 0)
    assert.is_true(m.test.dice > 0.4, 'quick test Dice ' .. m.test.dice .. '\n' .. out)
    assert.is_true(m.test.f1 > 0.4, 'quick lesion F1 ' .. m.test.f1)
    assert.is_true(log[#log].loss < log[1].loss, 'the loss did not go down')
    assert.is_number(log[#log].val_dice)
    local figs = table.concat(R.ls(run .. '/figures'), ' ')
    for _, f in ipairs { 'loss.png', 'metrics.png', 'test_overlay.png' } do assert.matches(f, figs, 1, true) end
  end)

  it('--predict segments a scan on another grid and orientation, in that grid', function()
    assert.is_string(run, 'needs the quick run')
    -- a lesion case like the quick run's (another seed), stored LPS and
    -- cropped: another orientation, size and origin than the training grid
    local lesions = require('lumen.data').get('lesions')
    local img, lab = lesions.make { seed = 7, spacing = 3, n_lesions = { 3, 4 }, radius_mm = { 6, 12 },
      contrast = { 0.8, 1 }, polarity = 'hyper' }
    local function lps_cropped(im)
      local r = im:reorient('LPS')
      local out = image.new(r.data[{ { 3, 58 }, {}, { 2, 60 } }]:contiguous(), { affine = r.affine })
      out.affine[1][4] = out.affine[1][4] - 9 -- 3 voxels of -3 mm along x
      out.affine[3][4] = out.affine[3][4] + 6 -- 2 voxels of 3 mm along z
      return out
    end
    local other, truth = lps_cropped(img), lps_cropped(lab)
    local pred = R.predict(RECIPE, run, other, dir)
    local v = pred.data:to('f64')
    assert.is_true(v:amin():item() >= 0 and v:amax():item() <= 1, 'labels are 0 and 1')
    local d = require('lumen.metrics').dice(pred.data, truth.data)
    assert.is_true(d > 0.5, 'Dice of --predict on the other grid ' .. d)
  end)
end)
