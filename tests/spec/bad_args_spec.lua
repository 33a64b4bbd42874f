-- Every function and method, called with wrong arguments (nil, numbers,
-- strings, tables, tensors of other shapes and dtypes, a freed tensor),
-- raises an error that names lumen and never brings the process down.
local lumen = require 'lumen'

local skip = { -- they change global state or load files by name
  set_num_threads = true, manual_seed = true, seed = true, set_rng_state = true,
  set_printoptions = true, load_plugin = true, empty_cache = true, free = true,
}

local function bad_values()
  local freed = lumen.zeros(2)
  freed:free()
  -- a string that is also a path nowhere, so that saving to it fails
  return { nil, -1, 0, 1, 2.5, '/nonexistent-lumen/x', {}, { 1, 2 }, { { 1 } }, true, lumen.zeros(2, 3),
    lumen.ones(3, 'i64'), lumen.tensor(true), lumen.zeros(0), lumen.zeros(2, 3):t(), freed,
    lumen.tensor(3.5) }
end

describe('bad arguments', function()
  local fns = {}
  for k, v in pairs(lumen) do
    if type(v) == 'function' and not skip[k] then fns[#fns + 1] = { 'lumen.' .. k, v, false } end
  end
  for k, v in pairs(lumen.core.Tensor) do
    if type(v) == 'function' and not skip[k] then fns[#fns + 1] = { 't:' .. k, v, true } end
  end
  -- layers and losses, in functional form (also after a good first tensor),
  -- module constructors, optimizers and schedules
  local nn, optim = require 'lumen.nn', require 'lumen.optim'
  for k, v in pairs(nn.F) do
    if type(v) == 'function' then
      fns[#fns + 1] = { 'nn.F.' .. k, v, false }
      fns[#fns + 1] = { 'nn.F.' .. k .. '(x, ...)', v, true }
    end
  end
  for k, v in pairs(nn) do
    if type(v) == 'table' and getmetatable(v) and k:match('^%u') and k ~= 'Module' then
      fns[#fns + 1] = { 'nn.' .. k, function(...) return v(...) end, false }
    end
  end
  for _, k in ipairs { 'SGD', 'Adam', 'AdamW', 'RMSprop', 'clip_grad_norm_' } do
    fns[#fns + 1] = { 'optim.' .. k, optim[k], false }
  end
  for k, v in pairs(optim.lr_scheduler) do
    if type(v) == 'table' and getmetatable(v) then
      fns[#fns + 1] = { 'optim.lr_scheduler.' .. k, function(...) return v(...) end, false }
    elseif type(v) == 'function' then
      fns[#fns + 1] = { 'optim.lr_scheduler.' .. k, v, false }
    end
  end
  table.sort(fns, function(a, b) return a[1] < b[1] end)

  it('raise lumen errors for every pair of bad values (' .. #fns .. ' functions)', function()
    local unclear = {}
    local V = bad_values()
    for _, f in ipairs(fns) do
      local name, fn, method = f[1], f[2], f[3]
      for i = 1, #V + 1 do
        for j = 1, #V + 1 do
          local ok, e
          if method then ok, e = pcall(fn, lumen.zeros(2, 3), V[i], V[j])
          else ok, e = pcall(fn, V[i], V[j]) end
          if not ok and not tostring(e):find('lumen[.:]') and not unclear[name] then
            unclear[name] = tostring(e)
            unclear[#unclear + 1] = name .. ': ' .. tostring(e)
          end
        end
      end
    end
    assert.are.same({}, { unpack(unclear) })
  end)
end)
