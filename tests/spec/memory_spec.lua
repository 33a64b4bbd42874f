-- Memory: live/peak/cached accounting, and a flat RSS without collectgarbage().
local lumen = require 'lumen'

local page = tonumber(io.popen('getconf PAGESIZE'):read('*l'))

local function rss_bytes()
  local f = assert(io.open('/proc/self/statm'))
  local _, resident = f:read('*n', '*n')
  f:close()
  return resident * page
end

describe('memory', function()
  it('counts live, peak and cached bytes', function()
    collectgarbage('collect')
    lumen.empty_cache()
    lumen.reset_peak_memory()
    local m0 = lumen.memory()
    local t = lumen.empty(1024, 1024) -- 4 MiB
    local m1 = lumen.memory()
    assert.are.equal(m0.live + 4 * 2 ^ 20, m1.live)
    assert.is_true(m1.peak >= m1.live)
    t:free()
    local m2 = lumen.memory()
    assert.are.equal(m0.live, m2.live)
    assert.are.equal(m0.cached + 4 * 2 ^ 20, m2.cached)
    lumen.empty_cache()
    assert.are.equal(0, lumen.memory().cached)
  end)

  it('free() releases at once and the box is dead afterwards', function()
    local t = lumen.zeros(10)
    t:free()
    t:free() -- idempotent
    assert.has_error(function() t:clone() end, 'lumen.clone: tensor was freed')
  end)

  it('keeps RSS within 64 MB over 10,000 steps of 1 MB temporaries', function()
    for _ = 1, 100 do local a = lumen.zeros(262144); local b = a:clone() end
    local start = rss_bytes()
    local live0 = lumen.memory().live
    for _ = 1, 10000 do
      local a = lumen.zeros(262144) -- 1 MiB of f32
      local b = a:reshape(512, 512):transpose(0, 1):contiguous()
    end
    local grown = rss_bytes() - start
    assert.is_true(grown < 64 * 2 ^ 20, string.format('RSS grew by %.1f MB', grown / 2 ^ 20))
    -- and the tensors were really released, not merely cached away
    collectgarbage('collect')
    assert.is_true(lumen.memory().live <= live0 + 2 * 2 ^ 20)
  end)
end)
