-- recipes.lua: running recipes as a user does, for the recipe specs.
--   local R = require 'helpers.recipes'
--   local out, err, rc = R.lumen('run recipes/segment/x.lua --quick --out ' .. dir)
--   local run = R.only_run(dir, 'x')       -- the run folder it wrote
--   R.check_run(run)                       -- every file a run must write; returns config, metrics, log lines
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

return R
