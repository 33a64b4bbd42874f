-- summarize.lua: the table bench/run.sh prints.
--   luajit bench/summarize.lua RESULTS
-- RESULTS has lines "<round> <side> <case> <median s> <iters>" or
-- "<round> <side> <case> NA <reason>"; sides are lumen, torch and optionally
-- spin (lumen with OpenMP threads spinning, GOMP_SPINCOUNT=300000).
local path = assert(arg[1], 'usage: summarize.lua RESULTS')

local order, data, reasons = {}, {}, {}
for line in io.lines(path) do
  local round, side, case, rest = line:match('^(%d+) (%S+) (%S+) (.*)$')
  if round then
    if not data[case] then
      order[#order + 1] = case
      data[case] = {}
    end
    data[case][side] = data[case][side] or {}
    local t = tonumber(rest:match('^(%S+)'))
    if t then
      data[case][side][tonumber(round)] = t
    else
      reasons[case] = reasons[case] or (side .. ': ' .. rest:gsub('^NA ', ''))
    end
  end
end

local function median(list)
  local v = {}
  for _, x in pairs(list) do v[#v + 1] = x end
  if #v == 0 then return nil end
  table.sort(v)
  local n = #v
  return n % 2 == 1 and v[(n + 1) / 2] or (v[n / 2] + v[n / 2 + 1]) / 2
end

-- Median over rounds of x[round] / y[round], rounds where both ran.
local function ratio(x, y)
  if not x or not y then return nil end
  local r = {}
  for k, a in pairs(x) do
    if y[k] then r[#r + 1] = a / y[k] end
  end
  return median(r)
end

local function ms(t) return t and string.format('%.3f', t * 1e3) or '-' end
local function rt(r) return r and string.format('%.2f', r) or '-' end

local spin = false
for _, c in ipairs(order) do if data[c].spin then spin = true end end

local head = { 'case', 'lumen ms', 'torch ms', 'lumen/torch' }
if spin then
  head[#head + 1] = 'spin ms'
  head[#head + 1] = 'spin/default'
end
local rows = {}
for _, c in ipairs(order) do
  local d = data[c]
  local row = { c, ms(median(d.lumen or {})), ms(median(d.torch or {})), rt(ratio(d.lumen, d.torch)) }
  if spin then
    row[#row + 1] = ms(median(d.spin or {}))
    row[#row + 1] = rt(ratio(d.spin, d.lumen))
  end
  if reasons[c] then row[#row + 1] = '(' .. reasons[c] .. ')' end
  rows[#rows + 1] = row
end

local width = {}
for _, r in ipairs({ head, unpack(rows) }) do
  for i = 1, #head do width[i] = math.max(width[i] or 0, #r[i]) end
end
local function emit(r)
  local out = { string.format('%-' .. width[1] .. 's', r[1]) }
  for i = 2, #head do out[#out + 1] = string.format('%' .. width[i] .. 's', r[i]) end
  if r[#head + 1] then out[#out + 1] = r[#head + 1] end
  print(table.concat(out, '  '))
end
print('')
emit(head)
for _, r in ipairs(rows) do emit(r) end
