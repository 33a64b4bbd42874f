-- coverage.lua LINES FILE...: Lua line coverage of a fuzz corpus.
--
-- LINES is what fuzz_image.c writes under LUMEN_FUZZ_LINES (chunk name, tab,
-- line, for every line the hook saw). For each FILE this prints the lines
-- that ran out of the lines that hold code (from LuaJIT's bytecode line
-- map: jit.util walks the file's functions without running them), and with
-- -v the line numbers never reached.
local jutil = require 'jit.util'

local verbose = arg[1] == '-v'
local first = verbose and 2 or 1
local hit = {}
for line in io.lines(arg[first]) do
  local src, n = line:match('^@?(.-)\t(%d+)$')
  if src then
    hit[src] = hit[src] or {}
    hit[src][tonumber(n)] = true
  end
end

-- Lines with code: every bytecode's line, less each function's header
-- (pc 0, on the line of `function`, which the line hook does not report).
local function code_lines(f, lines)
  local info = jutil.funcinfo(f)
  for pc = 1, info.bytecodes - 1 do
    local l = jutil.funcinfo(f, pc).currentline
    if l and l > 0 then lines[l] = true end
  end
  local i = -1
  while true do
    local k = jutil.funck(f, i)
    if k == nil then break end
    if type(k) == 'proto' then code_lines(k, lines) end
    i = i - 1
  end
  return lines
end

for i = first + 1, #arg do
  local path = arg[i]
  local lines = code_lines(assert(loadfile(path)), {})
  -- the hook's chunk names are absolute paths: match on the path's tail
  local seen = {}
  for src, set in pairs(hit) do
    if src:sub(-#path) == path then for l in pairs(set) do seen[l] = true end end
  end
  local n, h, missed = 0, 0, {}
  for l in pairs(lines) do
    n = n + 1
    if seen[l] then h = h + 1 else missed[#missed + 1] = l end
  end
  table.sort(missed)
  print(string.format('%-32s %4d of %4d lines (%.0f%%)', path, h, n, n > 0 and 100 * h / n or 0))
  if verbose and #missed > 0 then print('  not reached: ' .. table.concat(missed, ' ')) end
end
