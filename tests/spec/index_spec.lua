-- Indexing, selection and sorting against PyTorch.
local lumen = require 'lumen'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'

-- Deterministic pseudo-random numbers (an LCG), as a flat Lua list.
local function seq(n, seed, lo, hi, int)
  local out, s = {}, seed
  for i = 1, n do
    s = (s * 1103515245 + 12345) % 2147483648
    local v = lo + (hi - lo) * (s / 2147483648)
    out[i] = int and math.floor(v) or v
  end
  return out
end
local function T(shape, vals, dtype)
  return lumen.tensor(vals, dtype or 'f32'):reshape(shape)
end
local function numel(shape)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  return n
end
local function rand(shape, seed, dtype, lo, hi)
  local int = dtype and dtype ~= 'f32' and dtype ~= 'f64'
  return T(shape, seq(numel(shape), seed, lo or -5, hi or 5, int), dtype)
end
local function idx(shape, seed, hi, dtype) return rand(shape, seed, dtype or 'i64', 0, hi) end
-- Each column j of a rows x cols index holds distinct rows (no duplicate
-- targets, so scatter's result does not depend on write order).
local function distinct_rows(rows, cols, n, dtype)
  local v = {}
  for i = 0, rows - 1 do
    for j = 0, cols - 1 do v[#v + 1] = (i * 2 + j) % n end
  end
  return T({ rows, cols }, v, dtype or 'i64')
end

local nan, inf = 0 / 0, 1 / 0
local dtypes = { 'f32', 'f64', 'i32', 'i64', 'u8', 'bool' }

-- Runs cases { expr, inputs..., lumen = fn } in one oracle batch and adds
-- one busted test per case comparing every output exactly.
local function parity(group, cases, opts)
  local ref = oracle.run(cases)
  for i, c in ipairs(cases) do
    it(group .. ': ' .. c[1], function()
      assert(not ref[i].error, ref[i].error)
      local got = { c.lumen() }
      assert.are.equal(#ref[i], #got, 'number of outputs')
      for k = 1, #got do
        check.assert_close(got[k], ref[i][k], opts or { rtol = 0, atol = 0 }, 'output ' .. k)
      end
    end)
  end
end

describe('gather / index_select', function()
  local x = rand({ 3, 4 }, 1)
  local x3 = rand({ 2, 3, 5 }, 2)
  local cases = {
    { 'torch.gather(x, 1, i)', x = x, i = idx({ 3, 2 }, 3, 4), lumen = nil },
    { 'torch.gather(x, 0, i)', x = x, i = idx({ 2, 4 }, 4, 3) },
    { 'torch.gather(x, -1, i)', x = x, i = idx({ 2, 3 }, 5, 4) },
    { 'torch.gather(x, 1, i)', x = x, i = idx({ 3, 7 }, 6, 4) },
    { 'torch.gather(x.t(), 1, i)', x = x, i = idx({ 4, 3 }, 7, 3) },
    { 'torch.gather(x, 1, i.long().t())', x = x, i = idx({ 2, 3 }, 8, 4, 'i32') },
    { 'torch.gather(x3, 1, i)', x3 = x3, i = idx({ 2, 4, 3 }, 9, 3) },
    { 'torch.gather(x, 1, i)', x = x, i = idx({ 3, 0 }, 9, 4) },
    { 'torch.gather(x.unsqueeze(0).expand(2, 3, 4), 2, i)', x = x, i = idx({ 2, 3, 4 }, 10, 4) },
    { 'torch.gather(s, 0, i)', s = T({}, { 7 }), i = T({}, { 0 }, 'i64') },
    { 'torch.index_select(x, 0, i)', x = x, i = T({ 5 }, { 2, 0, 0, 1, 2 }, 'i64') },
    { 'torch.index_select(x, 1, i.long())', x = x, i = T({ 3 }, { 3, 1, 3 }, 'i32') },
    { 'torch.index_select(x, -1, i)', x = x, i = T({}, { 2 }, 'i64') },
    { 'torch.index_select(x.t(), 0, i)', x = x, i = T({ 2 }, { 3, 0 }, 'i64') },
    { 'torch.index_select(x, 0, i)', x = x, i = T({ 0 }, {}, 'i64') },
    { 'torch.index_select(x3[:, :, ::2], 2, i)', x3 = x3, i = T({ 4 }, { 2, 1, 0, 2 }, 'i64') },
    { 'torch.index_select(s, 0, i)', s = T({}, { 7 }), i = T({ 1 }, { 0 }, 'i64') },
    { 'torch.index_select(b, 0, i)', b = rand({ 1000, 64 }, 11), i = idx({ 1000 }, 12, 1000) },
    { 'torch.gather(b, 1, i)', b = rand({ 300, 200 }, 13), i = idx({ 300, 150 }, 14, 200) },
  }
  cases[1].lumen = function() return x:gather(1, cases[1].i) end
  cases[2].lumen = function() return x:gather(0, cases[2].i) end
  cases[3].lumen = function() return x:gather(-1, cases[3].i) end
  cases[4].lumen = function() return lumen.gather(x, 1, cases[4].i) end
  cases[5].lumen = function() return x:t():gather(1, cases[5].i) end
  cases[6].lumen = function() return x:gather(1, cases[6].i:t()) end
  cases[7].lumen = function() return x3:gather(1, cases[7].i) end
  cases[8].lumen = function() return x:gather(1, cases[8].i) end
  cases[9].lumen = function() return x:unsqueeze(0):expand(2, 3, 4):gather(2, cases[9].i) end
  cases[10].lumen = function() return cases[10].s:gather(0, cases[10].i) end
  cases[11].lumen = function() return x:index_select(0, cases[11].i) end
  cases[12].lumen = function() return x:index_select(1, cases[12].i) end
  cases[13].lumen = function() return x:index_select(-1, cases[13].i) end
  cases[14].lumen = function() return x:t():index_select(0, cases[14].i) end
  cases[15].lumen = function() return x[cases[15].i] end
  cases[16].lumen = function() return x3:slice(2, 0, nil, 2):index_select(2, cases[16].i) end
  cases[17].lumen = function() return cases[17].s:index_select(0, cases[17].i) end
  cases[18].lumen = function() return cases[18].b[cases[18].i] end
  cases[19].lumen = function() return cases[19].b:gather(1, cases[19].i) end
  for _, dt in ipairs(dtypes) do
    local xd = x:to(dt)
    local gi, si = idx({ 3, 3 }, 20, 4), T({ 2 }, { 2, 0 }, 'i64')
    cases[#cases + 1] = { 'torch.gather(x, 1, i)', x = xd, i = gi, lumen = function() return xd:gather(1, gi) end }
    cases[#cases + 1] = { 'torch.index_select(x, 0, i)', x = xd, i = si, lumen = function() return xd:index_select(0, si) end }
  end
  parity('gather', cases)
end)

describe('scatter / scatter_add', function()
  local x = rand({ 3, 4 }, 21)
  local s = rand({ 4, 5 }, 22)
  local di = distinct_rows(2, 4, 3)
  local dup = idx({ 5, 4 }, 23, 3)
  local cases = {
    { 'x.scatter(0, i, s)', x = x, i = di, s = s, lumen = function() return x:scatter(0, di, s) end },
    { 'x.scatter(1, i, s)', x = x, i = distinct_rows(3, 2, 4), s = s },
    { 'x.scatter(0, i, 2.5)', x = x, i = di, lumen = function() return lumen.scatter(x, 0, di, 2.5) end },
    { 'x.scatter_add(0, i, s)', x = x, i = dup:slice(0, 0, 4), s = s },
    { 'torch.scatter_add(x, 0, i, s.t())', x = x, i = dup:slice(0, 0, 3), s = rand({ 5, 4 }, 24) },
    { 'x.t().scatter_add(1, i, s)', x = x, i = idx({ 4, 6 }, 25, 3), s = rand({ 4, 6 }, 26) },
    { 'x.scatter_add(-1, i.long(), s)', x = x, i = idx({ 3, 5 }, 27, 4, 'i32'), s = s },
    { 'x.scatter_add(0, i, s)', x = x, i = idx({ 0, 4 }, 28, 3), s = s },
    { 'x3.scatter_add(2, i, s3)', x3 = rand({ 2, 3, 4 }, 29), i = idx({ 2, 2, 6 }, 30, 4), s3 = rand({ 2, 3, 6 }, 31) },
    { 'torch.zeros(3).scatter_add(0, i, s)', i = idx({ 1000 }, 32, 3), s = rand({ 1000 }, 33, 'i32', -4, 4):f32() },
    { 'torch.zeros(64, 50, dtype=torch.float64).scatter_add(1, i, s)', i = idx({ 64, 2000 }, 34, 50),
      s = rand({ 64, 2000 }, 35, 'i32', -9, 9):f64() },
  }
  cases[2].lumen = function() return x:scatter(1, cases[2].i, s) end
  cases[4].lumen = function() return x:scatter_add(0, cases[4].i, s) end
  cases[5].lumen = function() return lumen.scatter_add(x, 0, cases[5].i, cases[5].s:t()) end
  cases[6].lumen = function() return x:t():scatter_add(1, cases[6].i, cases[6].s) end
  cases[7].lumen = function() return x:scatter_add(-1, cases[7].i, s) end
  cases[8].lumen = function() return x:scatter_add(0, cases[8].i, s) end
  cases[9].lumen = function() return cases[9].x3:scatter_add(2, cases[9].i, cases[9].s3) end
  cases[10].lumen = function() return lumen.zeros(3):scatter_add(0, cases[10].i, cases[10].s) end
  cases[11].lumen = function() return lumen.zeros({ 64, 50 }, 'f64'):scatter_add(1, cases[11].i, cases[11].s) end
  for _, dt in ipairs(dtypes) do
    local xd, sd = x:to(dt), s:to(dt)
    cases[#cases + 1] = { 'x.scatter(1, i, s)', x = xd, i = distinct_rows(3, 3, 4), s = sd }
    local ci = cases[#cases].i
    cases[#cases].lumen = function() return xd:scatter(1, ci, sd) end
    cases[#cases + 1] = { 'x.scatter_add(0, i, s)', x = xd, i = dup, s = rand({ 5, 4 }, 36, dt, 0, 3) }
    local c = cases[#cases]
    c.lumen = function() return xd:scatter_add(0, dup, c.s) end
  end
  -- in place: the input itself changes
  local y = x:clone()
  cases[#cases + 1] = { 'x.clone().scatter_(0, i, s)', x = x, i = di, s = s,
    lumen = function() local r = y:scatter_(0, di, s); assert(r == y); return y end }
  local z = x:clone()
  cases[#cases + 1] = { '(lambda z: (z.t().scatter_add_(0, i, s), z)[1])(x.clone())', x = x, i = dup:slice(0, 0, 2):slice(1, 0, 3), s = s,
    lumen = function() z:t():scatter_add_(0, dup:slice(0, 0, 2):slice(1, 0, 3), s); return z end }
  parity('scatter', cases)
end)

describe('masked_select / masked_fill', function()
  local x = rand({ 3, 4 }, 41)
  local m = rand({ 3, 4 }, 42, 'i32', 0, 2):bool()
  local row = T({ 1, 4 }, { true, false, false, true }, 'bool')
  local col = T({ 3, 1 }, { false, true, true }, 'bool')
  local big = rand({ 300, 400 }, 43)
  local bigm = rand({ 300, 400 }, 44, 'i32', 0, 2):bool()
  local cases = {
    { 'torch.masked_select(x, m)', x = x, m = m, lumen = function() return x:masked_select(m) end },
    { 'torch.masked_select(x, m)', x = x, m = row, lumen = function() return x[row] end },
    { 'torch.masked_select(x[0], m)', x = x, m = col, lumen = function() return lumen.masked_select(x[0], col) end },
    { 'torch.masked_select(x.t(), m.t())', x = x, m = m, lumen = function() return x:t():masked_select(m:t()) end },
    { 'torch.masked_select(x, m & False)', x = x, m = m,
      lumen = function() return x:masked_select(lumen.zeros({ 3, 4 }, 'bool')) end },
    { 'torch.masked_select(s, m)', s = T({}, { 3 }), m = T({}, { true }, 'bool'),
      lumen = function() return T({}, { 3 }):masked_select(T({}, { true }, 'bool')) end },
    { 'torch.masked_select(x, m)', x = big, m = bigm, lumen = function() return big:masked_select(bigm) end },
    { 'torch.masked_select(x[:, ::3], m[:, ::3])', x = big, m = bigm,
      lumen = function() return big:slice(1, 0, nil, 3):masked_select(bigm:slice(1, 0, nil, 3)) end },
    { 'x.masked_fill(m, -7.5)', x = x, m = m, lumen = function() return x:masked_fill(m, -7.5) end },
    { 'x.masked_fill(m, 1)', x = x, m = col, lumen = function() return lumen.masked_fill(x, col, 1) end },
    { 'x[0].masked_fill(m, 2)', x = x, m = col, lumen = function() return x[0]:masked_fill(col, 2) end },
    { 'x.t().masked_fill(m.t(), 3)', x = x, m = m, lumen = function() return x:t():masked_fill(m:t(), 3) end },
    { 'x.masked_fill(m, 4)', x = big, m = bigm, lumen = function() return big:masked_fill(bigm, 4) end },
  }
  -- in place, through a transposed view
  local y = x:clone()
  cases[#cases + 1] = { '(lambda y: (y.t().masked_fill_(m.t(), 9), y)[1])(x.clone())', x = x, m = m,
    lumen = function() local v = y:t(); assert(v:masked_fill_(m:t(), 9) == v); return y end }
  local w = x:clone()
  cases[#cases + 1] = { 'x.masked_fill(m, 5)', x = x, m = row,
    lumen = function() w[row] = 5; return w end }
  for _, dt in ipairs(dtypes) do
    local xd = x:to(dt)
    cases[#cases + 1] = { 'torch.masked_select(x, m)', x = xd, m = m, lumen = function() return xd:masked_select(m) end }
    cases[#cases + 1] = { 'x.masked_fill(m, 1)', x = xd, m = row, lumen = function() return xd:masked_fill(row, 1) end }
  end
  parity('masked', cases)
end)

describe('nonzero', function()
  local x = T({ 3, 4 }, { 0, 1, -0.0, nan, 0, 0, 2, 0, -3, 0, 0, 0.5 })
  local cases = {
    { 'torch.nonzero(x)', x = x, lumen = function() return x:nonzero() end },
    { 'torch.nonzero(x.t())', x = x, lumen = function() return x:t():nonzero() end },
    { 'torch.nonzero(x3)', x3 = rand({ 2, 3, 4 }, 51, 'i32', -1, 2),
      lumen = nil },
    { 'torch.nonzero(s)', s = T({}, { 3 }), lumen = function() return lumen.nonzero(T({}, { 3 })) end },
    { 'torch.nonzero(s)', s = T({}, { 0 }), lumen = function() return lumen.nonzero(T({}, { 0 })) end },
    { 'torch.nonzero(e)', e = lumen.zeros({ 0, 3 }), lumen = function() return lumen.zeros({ 0, 3 }):nonzero() end },
    { 'torch.nonzero(b)', b = rand({ 200, 300 }, 52, 'i64', -1, 2), lumen = nil },
    { 'torch.nonzero(b[::2, 1::3])', b = rand({ 200, 300 }, 53, 'u8', 0, 3), lumen = nil },
  }
  cases[3].lumen = function() return cases[3].x3:nonzero() end
  cases[7].lumen = function() return cases[7].b:nonzero() end
  cases[8].lumen = function() return cases[8].b:slice(0, 0, nil, 2):slice(1, 1, nil, 3):nonzero() end
  for _, dt in ipairs(dtypes) do
    local xd = x:to(dt)
    cases[#cases + 1] = { 'torch.nonzero(x)', x = xd, lumen = function() return xd:nonzero() end }
  end
  parity('nonzero', cases)
end)

describe('sort / argsort / topk', function()
  local x = T({ 3, 6 }, { 3, 1, 2, 1, nan, -inf, 0, -0.0, 2, 0, inf, 2, 5, 5, 5, -1, 5, nan })
  local big = rand({ 200, 300 }, 61, 'i32', -50, 50)
  local long = rand({ 10000 }, 62)
  local wide = T({ 4 }, { -2 ^ 40, 2 ^ 40, -1, 7 }, 'i64')
  local d = rand({ 4, 7 }, 63) -- distinct values for topk (no ties)
  local cases = {
    { 'torch.sort(x, stable=True)', x = x, lumen = function() return x:sort() end },
    { 'torch.sort(x, dim=1, descending=True, stable=True)', x = x, lumen = function() return x:sort(1, true) end },
    { 'torch.sort(x, dim=0, stable=True)', x = x, lumen = function() return lumen.sort(x, 0) end },
    { 'torch.sort(x, dim=0, descending=True, stable=True)', x = x, lumen = function() return x:sort(-2, true) end },
    { 'torch.sort(x.t(), stable=True)', x = x, lumen = function() return x:t():sort() end },
    { 'torch.sort(x[:, ::2].unsqueeze(0).expand(2, 3, 3), dim=1, stable=True)', x = x,
      lumen = function() return x:slice(1, 0, nil, 2):unsqueeze(0):expand(2, 3, 3):sort(1) end },
    { 'torch.sort(s, stable=True)', s = T({}, { 4 }), lumen = function() return T({}, { 4 }):sort() end },
    { 'torch.sort(e, dim=0, stable=True)', e = lumen.zeros({ 0, 3 }), lumen = function() return lumen.zeros({ 0, 3 }):sort(0) end },
    { 'torch.sort(e, dim=1, stable=True)', e = lumen.zeros({ 0, 3 }), lumen = function() return lumen.zeros({ 0, 3 }):sort(1) end },
    { 'torch.sort(b, dim=1, stable=True)', b = big, lumen = function() return big:sort(1) end },
    { 'torch.sort(b, dim=0, descending=True, stable=True)', b = big, lumen = function() return big:sort(0, true) end },
    { 'torch.sort(l, stable=True)', l = long, lumen = function() return long:sort() end },
    { 'torch.sort(w, descending=True, stable=True)', w = wide, lumen = function() return wide:sort(0, true) end },
    { 'torch.argsort(x, 1, descending=True)', x = d, lumen = function() return d:argsort(1, true) end },
    { 'torch.argsort(x, 0)', x = d, lumen = function() return lumen.argsort(d, 0) end },
    { 'torch.topk(x, 3)', x = d, lumen = function() return d:topk(3) end },
    { 'torch.topk(x, 2, 0, largest=False)', x = d, lumen = function() return d:topk(2, 0, false) end },
    { 'torch.topk(x.t(), 4, 1)', x = d, lumen = function() return d:t():topk(4, 1) end },
    { 'torch.topk(x, 0)', x = d, lumen = function() return d:topk(0) end },
    { 'torch.topk(x, 7)', x = d, lumen = function() return d:topk(7) end },
    { 'torch.topk(x, 2)', x = T({ 5 }, { 1, nan, 3, -inf, 2 }), lumen = function() return T({ 5 }, { 1, nan, 3, -inf, 2 }):topk(2) end },
    { 'torch.topk(x, 2, largest=False)', x = T({ 5 }, { 1, nan, 3, -inf, 2 }),
      lumen = function() return T({ 5 }, { 1, nan, 3, -inf, 2 }):topk(2, -1, false) end },
    { 'torch.topk(b, 10)', b = rand({ 50, 300 }, 65, 'f64'), lumen = nil },
    { 'torch.topk(b, 7, 0, largest=False)', b = rand({ 300, 40 }, 66, 'f64'), lumen = nil },
    { 'torch.topk(s, 1)', s = T({}, { 4 }), lumen = function() return T({}, { 4 }):topk(1) end },
  }
  for _, c in ipairs(cases) do
    if c[1] == 'torch.topk(b, 10)' then c.lumen = function() return c.b:topk(10) end end
    if c[1]:find('torch.topk(b, 7', 1, true) then c.lumen = function() return c.b:topk(7, 0, false) end end
  end
  for _, dt in ipairs(dtypes) do
    local xd = rand({ 4, 9 }, 64, dt == 'bool' and 'i32' or dt, dt == 'u8' and 0 or -3, dt == 'bool' and 2 or 4):to(dt)
    cases[#cases + 1] = { 'torch.sort(x, stable=True)', x = xd, lumen = function() return xd:sort() end }
    cases[#cases + 1] = { 'torch.sort(x, dim=0, descending=True, stable=True)', x = xd, lumen = function() return xd:sort(0, true) end }
    if dt ~= 'bool' then
      local dd = d:to(dt == 'u8' and 'f32' or dt) -- ints: -5..5 may tie, so scale first
      if dt ~= 'f32' and dt ~= 'f64' then
        dd = T({ 4, 7 }, (function() local v = {} for i = 1, 28 do v[i] = (i * 11) % 29 end return v end)(), dt)
      end
      cases[#cases + 1] = { 'torch.topk(x, 3)', x = dd, lumen = function() return dd:topk(3) end }
    end
  end
  parity('sort', cases)
end)

describe('unique', function()
  local x = T({ 3, 4 }, { 3, 1, 2, 1, -0.0, 0, 2, 5, -inf, inf, 3, 3 })
  local cases = {
    { 'torch.unique(x)', x = x, lumen = function() return x:unique() end },
    { 'torch.unique(x, return_inverse=True, return_counts=True)', x = x,
      lumen = function() return x:unique({ return_inverse = true, return_counts = true }) end },
    { 'torch.unique(x, return_inverse=True)', x = x, lumen = function() return lumen.unique(x, { return_inverse = true }) end },
    { 'torch.unique(x, return_counts=True)', x = x, lumen = function() return x:unique({ return_counts = true }) end },
    { 'torch.unique(x.t(), return_inverse=True, return_counts=True)', x = x,
      lumen = function() return x:t():unique({ return_inverse = true, return_counts = true }) end },
    { 'torch.unique(s, return_inverse=True, return_counts=True)', s = T({}, { 2 }),
      lumen = function() return T({}, { 2 }):unique({ return_inverse = true, return_counts = true }) end },
    { 'torch.unique(e, return_inverse=True, return_counts=True)', e = lumen.zeros({ 2, 0 }),
      lumen = function() return lumen.zeros({ 2, 0 }):unique({ return_inverse = true, return_counts = true }) end },
    { 'torch.unique(b, return_inverse=True, return_counts=True)', b = rand({ 300, 200 }, 71, 'i64', -100, 100), lumen = nil },
  }
  cases[8].lumen = function() return cases[8].b:unique({ return_inverse = true, return_counts = true }) end
  for _, dt in ipairs(dtypes) do
    local xd = rand({ 5, 6 }, 72, dt == 'bool' and 'i32' or dt, dt == 'u8' and 0 or -3, dt == 'bool' and 2 or 4):to(dt)
    cases[#cases + 1] = { 'torch.unique(x, return_inverse=True, return_counts=True)', x = xd,
      lumen = function() return xd:unique({ return_inverse = true, return_counts = true }) end }
  end
  parity('unique', cases)

  it('keeps each NaN apart', function()
    local u, c = T({ 5 }, { nan, 1, nan, 1, 0 }):unique({ return_counts = true })
    local v = check.values(u)
    assert.are.same({ 4 }, u:size())
    assert.are.equal(0, v[1])
    assert.are.equal(1, v[2])
    assert(v[3] ~= v[3] and v[4] ~= v[4])
    assert.are.same({ 1, 2, 1, 1 }, check.values(c))
  end)
end)

describe('index errors', function()
  local x = T({ 3, 4 }, seq(12, 81, -1, 1))
  local i64 = function(v, shape) return T(shape or { #v }, v, 'i64') end
  local E = assert.has_error

  it('rejects out-of-range indices, naming the op, the value and the range', function()
    E(function() x:gather(1, i64({ 0, 4 }, { 1, 2 })) end,
      'lumen.gather: index 4 is out of range for dimension 1 of size 4 (valid range 0 to 3)')
    E(function() x:gather(0, i64({ -1 }, { 1, 1 })) end,
      'lumen.gather: index -1 is out of range for dimension 0 of size 3 (valid range 0 to 2)')
    E(function() x:index_select(0, i64({ 0, 3 })) end,
      'lumen.index_select: index 3 is out of range for dimension 0 of size 3 (valid range 0 to 2)')
    E(function() x:index_select(1, T({ 2 }, { -1, 0 }, 'i32')) end,
      'lumen.index_select: index -1 is out of range for dimension 1 of size 4 (valid range 0 to 3)')
    E(function() local _ = x[i64({ 7 })] end,
      'lumen.index_select: index 7 is out of range for dimension 0 of size 3 (valid range 0 to 2)')
    E(function() x:scatter(1, i64({ 9 }, { 1, 1 }), 1) end,
      'lumen.scatter: index 9 is out of range for dimension 1 of size 4 (valid range 0 to 3)')
    E(function() lumen.zeros({ 0, 2 }):index_select(0, i64({ 0 })) end,
      'lumen.index_select: index 0 is out of range for dimension 0 of size 0 (it has no valid index)')
  end)

  it('leaves the input alone when an in-place scatter fails', function()
    local y = x:clone()
    local before = check.values(y)
    E(function() y:scatter_add_(0, i64({ 0, 1, 2, 3 }, { 1, 4 }), lumen.ones(1, 4)) end,
      'lumen.scatter_add: index 3 is out of range for dimension 0 of size 3 (valid range 0 to 2)')
    assert.are.same(before, check.values(y))
  end)

  it('checks dtypes and shapes', function()
    E(function() x:gather(1, lumen.zeros(3, 1)) end, 'lumen.gather: index has dtype f32, expected i64 or i32')
    E(function() x:gather(1, i64({ 0 })) end, 'lumen.gather: index has 1 dimensions but input has 2 (they must match)')
    E(function() x:gather(1, lumen.zeros({ 4, 1 }, 'i64')) end,
      'lumen.gather: index of shape 4x1 is larger than input of shape 3x4 in dimension 0 (only dimension 1 may be larger)')
    E(function() x:scatter(1, lumen.zeros({ 3, 2 }, 'i64'), lumen.zeros(3, 1)) end,
      'lumen.scatter: index of shape 3x2 is larger than src of shape 3x1 in dimension 1')
    E(function() x:scatter(1, lumen.zeros({ 3, 2 }, 'i64'), lumen.zeros(6)) end,
      'lumen.scatter: src has 1 dimensions but index has 2 (they must match, or src is 0-D)')
    E(function() x:index_select(0, lumen.zeros({ 1, 1 }, 'i64')) end,
      'lumen.index_select: index must be 0-D or 1-D, got shape 1x1')
    E(function() x:masked_select(lumen.zeros(3, 4)) end, 'lumen.masked_select: mask has dtype f32, expected bool')
    E(function() x:masked_select(lumen.zeros({ 2, 4 }, 'bool')) end,
      'lumen.masked_select: shapes 3x4 and 2x4 cannot broadcast (dimension 0: 3 vs 2)')
    E(function() x[0]:masked_fill_(lumen.zeros({ 3, 4 }, 'bool'), 1) end,
      "lumen.masked_fill: mask of shape 3x4 does not broadcast to the destination's shape 4")
    E(function() x:masked_fill(lumen.zeros({ 3, 4 }, 'bool'), 'a') end, 'lumen.masked_fill: value must be a number, got string')
  end)

  it('checks dimensions and k', function()
    E(function() x:gather(2, i64({ 0 }, { 1, 1 })) end, 'lumen.gather: dimension 2 out of range for a 2-D tensor')
    E(function() x:index_select(-3, i64({ 0 })) end, 'lumen.index_select: dimension -3 out of range for a 2-D tensor')
    E(function() x:sort(2) end, 'lumen.sort: dimension 2 out of range for a 2-D tensor')
    E(function() x:topk(5) end, 'lumen.topk: k = 5 is out of range for dimension 1 of size 4 (valid range 0 to 4)')
    E(function() x:topk(-1) end, 'lumen.topk: k = -1 is out of range for dimension 1 of size 4 (valid range 0 to 4)')
    E(function() x:topk(1.5) end, 'lumen.topk: k must be an integer, got 1.5')
    E(function() x:sort(0.5) end, 'lumen.sort: dimension must be an integer, got 0.5')
  end)

  it('rejects non-tensor arguments', function()
    E(function() x:gather(1, { 0 }) end, 'lumen.gather: index must be a tensor, got table')
    E(function() lumen.sort(3) end, 'lumen.sort: input must be a tensor, got number')
    E(function() x:scatter(0, i64({ 0 }, { 1, 1 })) end, 'lumen.scatter: src is missing (a tensor or a number)')
    E(function() x:unique(true) end, 'lumen.unique: options must be a table {return_inverse=, return_counts=}')
  end)
end)
