-- check.lua: comparing tensors in specs, independent of the ops under test.
local lumen = require 'lumen'
local ffi = require 'ffi'

local check = {}

-- Values of t as a flat Lua list of numbers (read through strides).
function check.values(t)
  local flat = {}
  local function walk(x)
    if type(x) == 'table' then for _, v in ipairs(x) do walk(v) end
    else flat[#flat + 1] = (x == true and 1) or (x == false and 0) or x end
  end
  walk(t:totable())
  return flat
end

-- close(actual, expected, opts) -> ok, message
-- opts: rtol (1e-5), atol (1e-6), dtype (true: dtypes must match)
function check.close(a, e, opts)
  opts = opts or {}
  local rtol, atol = opts.rtol or 1e-5, opts.atol or 1e-6
  local sa, se = table.concat(a:size(), 'x'), table.concat(e:size(), 'x')
  if sa ~= se then return false, string.format('shape %s, expected %s', sa, se) end
  if opts.dtype ~= false and a:dtype() ~= e:dtype() then
    return false, string.format('dtype %s, expected %s', a:dtype(), e:dtype())
  end
  local va, ve = check.values(a), check.values(e)
  for i = 1, #ve do
    local x, y = va[i], ve[i]
    local same = (x == y) or (x ~= x and y ~= y)
    -- NaN against a number, and a number against an infinity, never pass
    if not same and (x ~= x or y ~= y or math.abs(y) == math.huge
        or not (math.abs(x - y) <= atol + rtol * math.abs(y))) then
      return false, string.format('element %d (flat, 0-based) is %.9g, expected %.9g', i - 1, x, y)
    end
  end
  return true
end

-- Deterministic inputs: sin(0.731 i + 1.37 seed) for the flat position i
-- (1-based), spread over [-1, 1] without ties; dtype defaults to f32.
function check.sine(shape, dtype, seed)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  if n == 0 then return lumen.zeros(shape, dtype or 'f32') end
  local flat = {}
  for i = 1, n do flat[i] = math.sin(i * 0.731 + (seed or 0) * 1.37) end
  return lumen.tensor(flat, dtype or 'f32'):reshape(shape)
end

-- A random normal tensor of the given shape whose last two dims are a
-- transposed view (non-contiguous); dtype defaults to f32.
function check.transposed_randn(shape, dtype)
  local s = { unpack(shape) }
  local n = #s
  s[n], s[n - 1] = s[n - 1], s[n]
  return lumen.randn(s, dtype or 'f32'):transpose(n - 2, n - 1)
end

-- assert_close for busted specs: fails with the first differing element.
function check.assert_close(a, e, opts, what)
  local ok, msg = check.close(a, e, opts)
  if not ok then error((what and (what .. ': ') or '') .. msg, 2) end
end

return check
