-- The recipe format (lua/lumen/recipe.lua), through the lumen program as a
-- user runs it, on tests/data/recipes/toy.lua: options and --help, the run
-- folder, resume giving exactly an uninterrupted run, and --predict.
local lumen = require 'lumen'
local scratch = require 'helpers.scratch'
local R = require 'helpers.recipes'
local image = require 'lumen.image'

local TOY = 'tests/data/recipes/toy.lua'

local function toy(args) return R.lumen('run ' .. TOY .. ' --progress none ' .. args) end

describe('recipe options', function()
  it('--help lists the recipe options and the common ones with defaults', function()
    local out, err, rc = toy('--help')
    assert.are.equal(0, rc, err)
    assert.matches('toy: a tiny segmentation recipe', out, 1, true)
    assert.matches('%-%-lr%s+Adam learning rate %(default 0.05%)', out)
    assert.matches('%-%-steps%s+training steps %(default 8; %-%-quick: 4%)', out)
    for _, name in ipairs { 'seed', 'device', 'threads', 'quick', 'resume', 'predict', 'input', 'output' } do
      assert.matches('--' .. name, out, 1, true)
    end
  end)

  it('refuses unknown options naming the closest, and values of the wrong type', function()
    local cases = {
      { '--lrr 0.1', 'unknown option --lrr (did you mean --lr?)' },
      { '--step 3', 'unknown option --step (did you mean --steps?)' },
      { '--lr abc', "--lr expects a number, got 'abc'" },
      { '--quick=maybe', '--quick is a flag' },
      { '--patch 8,x,8', '--patch expects numbers separated by commas' },
      { '--steps', '--steps needs a value' },
      { 'stray', "unexpected argument 'stray'" },
      { '--device tpu', "--device 'tpu', expected 'cpu' or 'cuda'" },
      { '--resume /nonexistent-run', "--resume: cannot read '/nonexistent-run/config.json'" },
      { '--predict /nonexistent-run', "--predict: cannot read '/nonexistent-run/config.json'" },
    }
    for _, c in ipairs(cases) do
      local out, err, rc = toy(c[1])
      assert.are_not.equal(0, rc, c[1])
      assert.matches(c[2], err, 1, true)
      assert.is_nil(err:find('stack traceback'), c[1] .. ' printed a traceback:\n' .. err)
    end
  end)
end)

describe('recipe.parse', function()
  local recipe = require 'lumen.recipe'
  local def = dofile(TOY)
  it('types values by their defaults, lists to the next option, --quick first', function()
    local o, given = recipe.parse(def, { '--input', 'a.nii', 'b dir/', '--lr=0.5', '--quick', 'false', '--patch', '4,5',
      '6', '--steps', '3' })
    assert.are.same({ 'a.nii', 'b dir/' }, o.input)
    assert.are.equal(0.5, o.lr)
    assert.is_false(o.quick)
    assert.are.same({ 4, 5, 6 }, o.patch)
    assert.are.equal(3, o.steps)
    assert.are.equal('cpu', o.device)
    assert.is_true(given.lr and given.input and not given.seed)
    -- --quick's values, unless the command line sets them
    assert.are.equal(4, recipe.parse(def, { '--quick' }).steps)
    assert.are.equal(7, recipe.parse(def, { '--steps', '7', '--quick' }).steps)
    assert.is_nil(recipe.parse(def, { '--help' }))
  end)
end)

describe('a recipe run', function()
  local dir = scratch.dir()
  local full, stopped

  it('writes config, log, metrics, checkpoint and figures', function()
    local out, err, rc = toy('--out ' .. dir .. '/a --quick --note hello --patch 8,8,8')
    assert.are.equal(0, rc, err)
    full = R.only_run(dir .. '/a', 'toy')
    local config, metrics, log = R.check_run(full)
    assert.are.equal('toy', config.recipe)
    assert.are.equal(4, config.options.steps) -- --quick
    assert.are.equal('hello', config.options.note)
    assert.are.same({ 8, 8, 8 }, config.options.patch)
    assert.are.equal(0, config.options.seed)
    assert.matches('run folder: ' .. full, out, 1, true)
    -- loss every 2 steps, validation at step 3 and at the end
    local steps = {}
    for _, l in ipairs(log) do steps[#steps + 1] = l.step .. (l.loss and 'L' or '') .. (l.val_loss and 'V' or '') end
    assert.are.same({ '2L', '3V', '4LV' }, steps)
    assert.is_number(metrics.test.loss)
  end)

  it('resumed after an interruption, ends exactly as the uninterrupted run', function()
    local out, err, rc = toy('--out ' .. dir .. '/b --quick --note hello --stop_at 3 --checkpoint_every 1')
    assert.are.equal(0, rc, err)
    stopped = R.only_run(dir .. '/b', 'toy')
    assert.matches('stopped at step 3', out, 1, true)
    assert.is_nil(R.read(stopped .. '/metrics.json'))
    -- options cannot change on resume
    local _, err2, rc2 = toy('--resume ' .. stopped .. ' --lr 0.1')
    assert.are_not.equal(0, rc2)
    assert.matches('--lr cannot change', err2, 1, true)
    out, err, rc = toy('--resume ' .. stopped)
    assert.are.equal(0, rc, err)
    local a, b = lumen.load(full .. '/checkpoint.safetensors'), lumen.load(stopped .. '/checkpoint.safetensors')
    local n = 0
    for name, t in pairs(a) do
      assert.is_true(b[name] ~= nil, name)
      assert.is_true(t:eq(b[name]):all():item(), name .. ' differs after resume')
      n = n + 1
    end
    assert.is_true(n > 8)
    local _, ma, la = R.check_run(full)
    local _, mb, lb = R.check_run(stopped)
    assert.are.same(ma, mb)
    for i = 1, #la do la[i].time, lb[i].time = nil, nil end
    assert.are.same(la, lb)
  end)

  it('--predict writes each input on its own grid', function()
    local _, P = scratch.dir()
    lumen.manual_seed(3)
    local affine = { { 0, -2, 0, 10 }, { 1.5, 0, 0, -4 }, { 0, 0, 3, 7 }, { 0, 0, 0, 1 } }
    image.new(lumen.randn(7, 9, 5), { affine = affine }):write(P('a.nii.gz'))
    image.new(lumen.randn(6, 6, 6)):write(P('b.mha'))
    local out, err, rc = toy(string.format('--predict %s --input %s %s --output %s', full, P('a.nii.gz'), P('b.mha'),
      P('out')))
    assert.are.equal(0, rc, err)
    local a = image.read(P('out/a_seg.nii.gz'))
    assert.are.same({ 7, 9, 5 }, a.data:size())
    assert.are.same(affine, a.affine)
    assert.are.same({ 6, 6, 6 }, image.read(P('out/b_seg.nii.gz')).data:size())
    -- wrong uses
    local cases = {
      { '--predict ' .. full .. ' --output ' .. P('o2'), '--predict needs --input' },
      { '--predict ' .. full .. ' --input ' .. P('a.nii.gz'), '--predict needs --output' },
      { '--predict ' .. full .. ' --input ' .. P('a.nii.gz') .. ' --output ' .. P('o3') .. ' --lr 1', '--lr cannot change' },
      { '--predict ' .. full .. ' --input ' .. P('none.nii') .. ' --output ' .. P('o4'), 'none.nii' },
    }
    for _, c in ipairs(cases) do
      local _, e, r = toy(c[1])
      assert.are_not.equal(0, r, c[1])
      assert.matches(c[2], e, 1, true)
    end
  end)
end)
