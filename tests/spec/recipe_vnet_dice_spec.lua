-- The vnet_dice recipe end to end: a --quick run writes every file, both
-- networks' test metrics side by side, a loose Dice floor that an untrained
-- network does not reach, the same metrics after an interruption and
-- --resume, and --predict writes a mask on the input's own grid.
local lumen = require 'lumen'
local json = require 'lumen.json'
local image = require 'lumen.image'
local scratch = require 'helpers.scratch'

local RECIPE = 'recipes/segment/vnet_dice.lua'

local function sh(cmd)
  local p = io.popen(cmd .. ' 2>&1')
  local out = p:read('*a')
  local ok = p:close()
  return ok == true or ok == 0, out
end

local function lumen_run(args)
  local ok, out = sh('build/lumen run ' .. RECIPE .. ' ' .. args)
  assert(ok, out)
  return out
end

local function only_run(root)
  local ok, out = sh('ls -d ' .. root .. '/vnet_dice/*/')
  assert(ok, out)
  local dirs = {}
  for d in out:gmatch('[^\n]+') do dirs[#dirs + 1] = d:gsub('/$', '') end
  assert.are.equal(1, #dirs)
  return dirs[1]
end

local function read_json(path) return json.decode(scratch.read(path)) end

describe('recipe vnet_dice', function()
  local dir, P = scratch.dir()
  local run

  lazy_setup(function()
    lumen_run('--quick --out ' .. P('a') .. ' --progress none')
    run = only_run(P('a'))
  end)

  lazy_teardown(function() os.execute('rm -rf ' .. dir) end)

  it('writes config, log, checkpoint and figures', function()
    local config = read_json(run .. '/config.json')
    assert.are.equal('vnet_dice', config.recipe)
    assert.is_true(config.options.quick)
    local lines = 0
    for line in scratch.read(run .. '/log.jsonl'):gmatch('[^\n]+') do
      local v = json.decode(line)
      assert.is_number(v.step)
      lines = lines + 1
    end
    assert.is_true(lines >= 2)
    local ck = lumen.load(run .. '/checkpoint.safetensors')
    local n = 0
    for _ in pairs(ck) do n = n + 1 end
    assert.is_true(n > 10)
    for _, f in ipairs { 'loss.png', 'test_overlay.png' } do
      local img = image.read(run .. '/figures/' .. f)
      assert.is_true(img.data:numel() > 0, f)
    end
  end)

  it('reports the soft-Dice and the cross-entropy network side by side, above a floor', function()
    local m = read_json(run .. '/metrics.json')
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
    lumen_run('--quick --out ' .. P('b') .. ' --progress none --stop_at 25 --checkpoint_every 25')
    local b = only_run(P('b'))
    lumen_run('--resume ' .. b .. ' --progress none')
    local m1, m2 = read_json(run .. '/metrics.json'), read_json(b .. '/metrics.json')
    assert.are.equal(m1.test.dice, m2.test.dice)
    assert.are.same(m1.test, m2.test)
  end)

  it('predicts labels on the grid of any input', function()
    -- Colin27 at 4 mm in LPS order: another size, spacing and orientation
    local c = require('lumen.data').get('colin27').load { spacing = 4 }
    local input = c.image:reorient('LPS')
    input:write(P('scan.nii.gz'))
    lumen_run('--predict ' .. run .. ' --input ' .. P('scan.nii.gz') .. ' --output ' .. P('pred'))
    local out = image.read(P('pred/scan_seg.nii.gz'))
    local back = image.read(P('scan.nii.gz'))
    assert.are.same(back.data:size(), out.data:size())
    for i = 1, 4 do
      for j = 1, 4 do assert.is_true(math.abs(back.affine[i][j] - out.affine[i][j]) < 1e-4) end
    end
    local labels = out.data:to('i32')
    assert.is_true(labels:max():item() <= 1 and labels:min():item() >= 0)
    assert.is_true(labels:gt(0):sum():item() > 0)
  end)
end)
