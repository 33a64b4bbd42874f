-- scratch.lua: a temporary folder for a spec's files, whole-file reads and
-- writes, and Python scripts run with the folder as their argument.
--   local scratch = require 'helpers.scratch'
--   local dir, P = scratch.dir()          -- P('x.png') is dir .. '/x.png'
--   local out = scratch.python(script, dir)  -- stdout+stderr; errors if it fails
local scratch = {}
scratch.python_bin = os.getenv('LUMEN_PYTHON') or '/usr/bin/python3'

function scratch.dir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute('mkdir -p ' .. dir) == 0)
  return dir, function(name) return dir .. '/' .. name end
end

function scratch.read(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end

function scratch.write(path, s)
  local f = assert(io.open(path, 'wb'))
  f:write(s)
  f:close()
end

-- flags: extra options for the interpreter (e.g. '-W ignore').
function scratch.python(script, dir, flags)
  local path = dir .. '/script.py'
  scratch.write(path, script)
  local p = io.popen(string.format('%s %s %s %s 2>&1', scratch.python_bin, flags or '', path, dir))
  local out = p:read('*a')
  local ok = p:close()
  assert(ok == true or ok == 0, 'python failed:\n' .. out)
  return out
end

return scratch
