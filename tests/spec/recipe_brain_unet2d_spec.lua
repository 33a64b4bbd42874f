-- recipes/segment/brain_unet2d.lua: the --quick run completes, writes every
-- file, beats a loose floor; an interrupted and resumed quick run ends as
-- the uninterrupted one; --predict handles a scan on another grid.
local lumen = require 'lumen'
local scratch = require 'helpers.scratch'
local R = require 'helpers.recipes'
local image = require 'lumen.image'

local RECIPE = 'recipes/segment/brain_unet2d.lua'
local function brain(args) return R.lumen('run ' .. RECIPE .. ' --progress none --quick ' .. args) end

describe('brain_unet2d', function()
  local dir, P = scratch.dir()
  local run

  it('--quick trains, tests against the baseline and writes the run folder', function()
    local out, err, rc = brain('--out ' .. P('a'))
    assert.are.equal(0, rc, err)
    run = R.only_run(P('a'), 'brain_unet2d')
    local _, m = R.check_run(run)
    for _, k in ipairs { 'dice', 'jaccard', 'hd95', 'assd', 'sensitivity', 'specificity', 'volume_difference_ml' } do
      assert.is_number(m.test[k], k)
      assert.is_number(m.baseline[k], k)
    end
    -- 40 steps on a 6 mm grid: a real but loose floor
    assert.is_true(m.test.dice > 0.85, 'test Dice ' .. m.test.dice)
    assert.matches('Colin27 slices', m.trained_on)
    local figs = table.concat(R.ls(run .. '/figures'), ' ')
    for _, f in ipairs { 'loss.png', 'metrics.png', 'overlay.png', 'baseline.png' } do assert.matches(f, figs, 1, true) end
  end)

  it('resumes to the same weights and metrics', function()
    R.check_resume(RECIPE, 'brain_unet2d', run, P('b'), 25, 10)
  end)

  -- the same quick run with --device cuda on the CUDA kernels compiled for
  -- the host (built where nvcc is)
  local emulated = R.exe:gsub('lumen$', 'tests/plugins/cuda_emulated.so')
  local f = io.open(emulated)
  local have_emulated = f ~= nil
  if f then f:close() end
  ;(have_emulated and it or pending)('--device cuda trains and tests on the device kernels like the CPU run', function()
    local _, err, rc = R.lumen('run tests/helpers/emulated_cuda_run.lua ' .. RECIPE ..
      ' --progress none --quick --device cuda --out ' .. P('c'))
    assert.are.equal(0, rc, err)
    local dev = R.json(R.only_run(P('c'), 'brain_unet2d') .. '/metrics.json')
    local cpu = R.json(run .. '/metrics.json')
    assert.is_true(math.abs(dev.test.dice - cpu.test.dice) < 0.02,
      string.format('test Dice %.4f on the device, %.4f on the CPU', dev.test.dice, cpu.test.dice))
  end)

  it('--predict segments a scan on another grid and orientation, in that grid', function()
    local c27 = require('lumen.data').get('colin27').load {}
    -- 1.5 mm, flipped to LPS, cropped: another size, spacing and orientation
    local other = c27.image:reorient('LPS'):resample { spacing = { 1.5, 1.5, 1.5 } }
    other = image.new(other.data[{ { 10, 110 }, {}, { 5, 115 } }]:contiguous(), { affine = other.affine })
    other.affine[1][4] = other.affine[1][4] - 15 -- the crop moved the origin by 10 voxels of -1.5 mm
    other.affine[3][4] = other.affine[3][4] + 7.5
    local pred = R.predict(RECIPE, run, other, dir)
    local truth = c27.brain:resample_to(other, { order = 0 })
    local d = require('lumen.metrics').dice(pred.data, truth.data)
    assert.is_true(d > 0.8, 'Dice on the other grid ' .. d)
  end)
end)
