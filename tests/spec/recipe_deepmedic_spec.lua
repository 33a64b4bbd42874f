-- recipes/segment/deepmedic.lua: the --quick run end to end (every file of
-- a run, a quality floor) and --predict on a scan of another grid.
local json = require 'lumen.json'
local lumen = require 'lumen'
local scratch = require 'helpers.scratch'

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- runs `build/lumen ARGS`, returns exit status and output
local function lumen_cmd(args)
  local p = io.popen('build/lumen ' .. args .. ' 2>&1; echo "rc=$?"')
  local out = p:read('*a')
  p:close()
  local rc = tonumber(out:match('rc=(%d+)%s*$'))
  return rc, out
end

local function read_json(path) return json.decode(scratch.read(path)) end

local function exists(path)
  local f = io.open(path, 'rb')
  if f then f:close() return true end
  return false
end

describe('recipe deepmedic', function()
  local dir, P = scratch.dir()
  local run_dir, run_out

  setup(function()
    local rc, out = lumen_cmd('run recipes/segment/deepmedic.lua --quick --out ' .. q(P('runs')) .. ' --progress none')
    run_out = out
    assert(rc == 0, 'quick run failed:\n' .. out)
    local p = io.popen('ls -d ' .. q(P('runs/deepmedic')) .. '/*/')
    run_dir = p:read('*l'):gsub('/$', '')
    p:close()
  end)

  teardown(function() os.execute('rm -rf ' .. q(dir)) end)

  it('writes config, log, metrics, checkpoint and figures', function()
    local config = read_json(run_dir .. '/config.json')
    assert.are.equal('deepmedic', config.recipe)
    assert.is_true(config.options.quick)
    assert.are.equal('dense', config.options.crf)
    local lines = 0
    for line in scratch.read(run_dir .. '/log.jsonl'):gmatch('[^\n]+') do
      local v = json.decode(line)
      assert.is_number(v.step)
      assert.is_number(v.loss)
      lines = lines + 1
    end
    assert.is_true(lines >= 2)
    local ck = scratch.read(run_dir .. '/checkpoint.safetensors')
    assert.is_true(#ck > 8)
    for _, f in ipairs { 'loss.png', 'metrics.png', 'test_overlay.png' } do
      local png = scratch.read(run_dir .. '/figures/' .. f)
      assert.are.equal('\137PNG', png:sub(1, 4), f)
    end
  end)

  it('reports the network, the CRF and the baseline side by side, above a floor', function()
    local m = read_json(run_dir .. '/metrics.json')
    for _, k in ipairs { 'test', 'test_crf', 'baseline' } do
      assert.is_table(m[k], k)
      for _, f in ipairs { 'dice', 'f1', 'precision', 'recall' } do
        assert.is_number(m[k][f], k .. '.' .. f)
        assert.is_true(m[k][f] >= 0 and m[k][f] <= 1, k .. '.' .. f)
      end
    end
    assert.is_string(m.trained_on)
    assert.is_string(m.tested_on)
    assert.is_truthy(m.trained_on:find('seeds 1%.%.'))
    assert.is_truthy(m.tested_on:find('seeds 501%.%.'))
    -- the quick run's lesions are large and bright: a network that learnt
    -- nothing finds none of them (Dice 0), and chance is far below this
    assert.is_true(m.test.dice > 0.3, 'quick test Dice ' .. m.test.dice .. '\n' .. run_out)
    assert.is_true(m.test.f1 > 0.3, 'quick lesion F1 ' .. m.test.f1)
    -- and the loss went down
    local first, last
    for line in scratch.read(run_dir .. '/log.jsonl'):gmatch('[^\n]+') do
      local v = json.decode(line)
      first = first or v.loss
      last = v.loss
    end
    assert.is_true(last < first, string.format('loss %g -> %g', first, last))
  end)

  it('--predict writes a label image on the input grid', function()
    -- an input on a grid of its own: the Colin27 T1 at 3 mm, flipped along
    -- its first axis (another orientation)
    local image = require 'lumen.image'
    local c = require('lumen.data').get('colin27').load { spacing = 3 }
    local img = c.image
    local a = {}
    for r = 1, 4 do a[r] = { unpack(img.affine[r]) } end
    local n = img.data:size()[1]
    for r = 1, 3 do
      a[r][4] = a[r][4] + a[r][1] * (n - 1)
      a[r][1] = -a[r][1]
    end
    local flipped = image.new(lumen.flip(img.data, { 0 }):contiguous(), { affine = a })
    local input = P('colin_flipped.nii.gz')
    flipped:write(input)
    local rc, out = lumen_cmd('run recipes/segment/deepmedic.lua --predict ' .. q(run_dir) .. ' --input ' .. q(input) ..
      ' --output ' .. q(P('pred')) .. ' --progress none')
    assert(rc == 0, 'predict failed:\n' .. out)
    local seg = image.read(P('pred/colin_flipped_seg.nii.gz'))
    assert.are.same(flipped.data:size(), seg.data:size())
    for r = 1, 4 do
      for k = 1, 4 do assert.is_true(math.abs(seg.affine[r][k] - a[r][k]) < 1e-4) end
    end
    local v = seg.data:to('f64')
    assert.is_true(v:amin():item() >= 0 and v:amax():item() <= 1)
  end)
end)
