-- recipes.lua: running recipes as a user does, for the recipe specs.
--   local R = require 'helpers.recipes'
--   local out, err, rc = R.lumen('run recipes/segment/x.lua --quick --out ' .. dir)
--   local run = R.only_run(dir, 'x')       -- the run folder it wrote
--   R.check_run(run)                       -- every file a run must write; returns config, metrics, log lines
--   R.check_resume(recipe, name, run, dir, stop_at, every)  -- interrupted + resumed = uninterrupted
--   local pred = R.predict(recipe, run, img, dir)  -- --predict on img, checked to be on img's grid
local lumen = require 'lumen'
local json = require 'lumen.json'

local R = {}
local build = lumen.core.libpath:match('^(.*)/[^/]*$') or 'build'
R.exe = build .. '/lumen'

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
R.q = q

local function slurp(path)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local s = f:read('*a')
  f:close()
  return s
end
R.read = slurp

-- lumen(args) -> stdout, stderr, exit status
function R.lumen(args)
  local base = os.tmpname()
  os.execute(string.format('%s %s </dev/null >%s 2>%s; echo $? >%s', q(R.exe), args, q(base .. '.out'), q(base .. '.err'),
    q(base .. '.rc')))
  local out, err, rc = slurp(base .. '.out'), slurp(base .. '.err'), tonumber(slurp(base .. '.rc'))
  for _, s in ipairs { '.out', '.err', '.rc', '' } do os.remove(base .. s) end
  return out, err, rc
end

function R.ls(dir)
  local p = io.popen('ls -A ' .. q(dir) .. ' 2>/dev/null')
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end

-- The one run folder under dir/name/.
function R.only_run(dir, name)
  local runs = R.ls(dir .. '/' .. name)
  assert(#runs == 1, string.format('expected one run under %s/%s, found %d', dir, name, #runs))
  return dir .. '/' .. name .. '/' .. runs[1]
end

function R.json(path)
  local s = slurp(path)
  assert(s, 'missing ' .. path)
  return json.decode(s)
end

-- Checks the files every run writes; returns config, metrics, log lines.
function R.check_run(run)
  local config, metrics = R.json(run .. '/config.json'), R.json(run .. '/metrics.json')
  assert(type(config.options) == 'table' and config.git and config.versions and config.versions.lumen,
    'config.json lacks options, git revision or versions')
  local log = {}
  for line in assert(slurp(run .. '/log.jsonl'), 'missing log.jsonl'):gmatch('[^\n]+') do log[#log + 1] = json.decode(line) end
  assert(#log > 0, 'log.jsonl is empty')
  local tensors, meta = lumen.load(run .. '/checkpoint.safetensors')
  assert(meta['lumen.checkpoint'], 'checkpoint.safetensors is not a lumen checkpoint')
  local figures = R.ls(run .. '/figures')
  local pngs = 0
  for _, f in ipairs(figures) do
    if f:match('%.png$') then
      local img = require('lumen.image').read(run .. '/figures/' .. f)
      assert(img.data:numel() > 0)
      pngs = pngs + 1
    end
  end
  assert(pngs >= 2, 'figures/ should hold curves and an overlay, found ' .. table.concat(figures, ', '))
  return config, metrics, log, tensors
end

-- A --quick run of `recipe` stopped at step stop_at (checkpoints every
-- `every` steps) and resumed ends with the weights and test metrics of the
-- uninterrupted quick run in folder `run`.
function R.check_resume(recipe, name, run, dir, stop_at, every)
  local _, err, rc = R.lumen(string.format('run %s --progress none --quick --out %s --stop_at %d --checkpoint_every %d',
    recipe, q(dir), stop_at, every))
  assert(rc == 0, err)
  local stopped = R.only_run(dir, name)
  assert(not slurp(stopped .. '/metrics.json'), 'the stopped run wrote its test metrics')
  _, err, rc = R.lumen(string.format('run %s --progress none --resume %s', recipe, q(stopped)))
  assert(rc == 0, err)
  local a, b = lumen.load(run .. '/checkpoint.safetensors'), lumen.load(stopped .. '/checkpoint.safetensors')
  for k, t in pairs(a) do assert(b[k] and t:eq(b[k]):all():item(), k .. ' differs after resume') end
  local ma, mb = R.json(run .. '/metrics.json'), R.json(stopped .. '/metrics.json')
  require('luassert').are.same(ma.test, mb.test)
end

-- `--predict run` on the lumen.image img (written to dir/other.nii.gz):
-- the result must have img's shape and affine; returns it.
function R.predict(recipe, run, img, dir)
  img:write(dir .. '/other.nii.gz')
  local _, err, rc = R.lumen(string.format('run %s --progress none --predict %s --input %s --output %s', recipe, q(run),
    q(dir .. '/other.nii.gz'), q(dir .. '/pred')))
  assert(rc == 0, err)
  local image = require 'lumen.image'
  local pred, back = image.read(dir .. '/pred/other_seg.nii.gz'), image.read(dir .. '/other.nii.gz')
  assert(table.concat(pred.data:size(), 'x') == table.concat(back.data:size(), 'x'), 'the prediction has another shape')
  for i = 1, 4 do
    for j = 1, 4 do assert(math.abs(pred.affine[i][j] - back.affine[i][j]) < 1e-5, 'the prediction has another affine') end
  end
  return pred
end

return R
