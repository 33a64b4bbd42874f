-- coverage.lua [-v] LINES FILE...: Lua line coverage of a fuzz corpus.
--
-- LINES is what fuzz_image.c writes under LUMEN_FUZZ_LINES (chunk name, tab,
-- line, for every line the hook saw). For each FILE this prints the lines
-- that ran out of the lines that hold code (LuaJIT's bytecode line map:
-- jit.util walks the file's functions without running them), then the same
-- per named function (a nested unnamed function counts with its parent).
-- Lines outside any named function run when the module loads, before the
-- hook is set, and are left out. -v adds the line numbers never reached.
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

local function read_lines(path)
  local t = {}
  for l in io.lines(path) do t[#t + 1] = l end
  return t
end

-- The name a function is defined under, from its first line.
local function name_of(text)
  if not text then return nil end
  return text:match('function%s+([%w_.:]+)%s*%(') or text:match('([%w_.]+)%s*=%s*function%s*%(')
end

-- Lines with code, each owned by its nearest named function: every
-- bytecode's line, less the header (pc 0, on the line of `function`,
-- which the line hook does not report).
local function walk(f, src, owner, out)
  local info = jutil.funcinfo(f)
  local name = name_of(src[info.linedefined])
  if name and info.linedefined > 0 then owner = name .. ' (' .. info.linedefined .. ')' end
  for pc = 1, info.bytecodes - 1 do
    local l = jutil.funcinfo(f, pc).currentline
    if l and l > 0 and out[l] == nil then out[l] = owner end
  end
  local i = -1
  while true do
    local k = jutil.funck(f, i)
    if k == nil then break end
    if type(k) == 'proto' then walk(k, src, owner, out) end
    i = i - 1
  end
  return out
end

for i = first + 1, #arg do
  local path = arg[i]
  local lines = walk(assert(loadfile(path)), read_lines(path), false, {})
  -- the hook's chunk names are absolute paths: match on the path's tail
  local seen = {}
  for src, set in pairs(hit) do
    if src:sub(-#path) == path then for l in pairs(set) do seen[l] = true end end
  end
  local n, h, missed, per, order = 0, 0, {}, {}, {}
  for l, owner in pairs(lines) do
    if not owner then goto continue end
    if not per[owner] then
      per[owner] = { 0, 0, l }
      order[#order + 1] = owner
    end
    local p = per[owner]
    p[1], p[3] = p[1] + 1, math.min(p[3], l)
    n = n + 1
    if seen[l] then
      h = h + 1
      p[2] = p[2] + 1
    else
      missed[#missed + 1] = l
    end
    ::continue::
  end
  table.sort(missed)
  table.sort(order, function(a, b) return per[a][3] < per[b][3] end)
  print(string.format('%s: %d of %d lines (%.0f%%)', path, h, n, n > 0 and 100 * h / n or 0))
  for _, owner in ipairs(order) do
    local p = per[owner]
    print(string.format('  %-34s %4d of %4d', owner, p[2], p[1]))
  end
  if verbose and #missed > 0 then print('  not reached: ' .. table.concat(missed, ' ')) end
end
