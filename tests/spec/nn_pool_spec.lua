-- Pooling and unpooling (nn.F.*pool*, nn.*Pool*) against PyTorch: values,
-- indices and gradients, plus finite differences in float64.
local lumen = require 'lumen'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'
local nn = require 'lumen.nn'
local F = nn.F

lumen.manual_seed(7)

-- Python literal of a Lua value (tables become tuples, false None).
local function py(v)
  if v == true then return 'True' end
  if v == false then return 'None' end
  if type(v) == 'table' then
    local p = {}
    for i, e in ipairs(v) do p[i] = py(e) end
    return '(' .. table.concat(p, ', ') .. (#p == 1 and ',)' or ')')
  end
  return tostring(v)
end
local function kwargs(opts)
  local keys, out = {}, {}
  for k in pairs(opts or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = opts[k]
    out[#out + 1] = k .. '=' .. (v == false and 'False' or py(v))
  end
  return table.concat(out, ', ')
end
local function call_str(fn, args, opts)
  local parts = { 'x' }
  for _, a in ipairs(args) do parts[#parts + 1] = py(a) end
  local kw = kwargs(opts)
  if kw ~= '' then parts[#parts + 1] = kw end
  return 'F.' .. fn .. '(' .. table.concat(parts, ', ') .. ')'
end

local function tol(dtype) return dtype == 'f64' and { rtol = 1e-12, atol = 1e-12 } or { rtol = 1e-5, atol = 1e-6 } end

-- Distinct values (no ties in any window), shuffled: k * 7919 mod n.
local function distinct(shape, dtype)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  local v = {}
  for i = 0, n - 1 do v[i + 1] = ((i * 7919) % n) * 0.25 - n / 8 end
  return lumen.tensor(v, dtype or 'f64'):reshape(shape)
end

-- A case: fn, x (any layout), args, opts; the oracle gets the forward
-- output(s) and the gradient of sum(out * g) for x.
local cases, checks = {}, {}
local function add(name, fn, x, args, opts, extra)
  extra = extra or {}
  local dtype = x:dtype()
  local y = lumen.no_grad(function() return F[fn](x, unpack(args), opts) end)
  local g = lumen.randn(y:size(), dtype)
  local expr = call_str(fn, args, opts)
  local pyexpr = string.format('grad_of(lambda x: %s, [x], g)', expr)
  if extra.indices then
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    o.return_indices = true
    pyexpr = string.format('(%s[1], *grad_of(lambda x: %s, [x], g))', call_str(fn, args, o), expr)
  end
  cases[#cases + 1] = { pyexpr, x = x, g = g }
  checks[#checks + 1] = {
    name = string.format('%s %s %s (%s)', fn, table.concat(x:size(), 'x'), kwargs(opts), dtype) .. (extra.note or ''),
    run = function()
      local xl = x:detach():requires_grad_()
      local o = {}
      for k, v in pairs(opts or {}) do o[k] = v end
      local got = {}
      if extra.indices then
        o.return_indices = true
        local v, i = F[fn](xl, unpack(args), o)
        got = { i, v }
        v:backward(g)
      else
        local v = F[fn](xl, unpack(args), opts)
        got = { v }
        v:backward(g)
      end
      got[#got + 1] = xl.grad
      return got
    end,
    tol = tol(dtype),
  }
end

local function randn(shape, dtype) return lumen.randn(shape, dtype or 'f32') end
-- A view whose last two dims are swapped (non-contiguous), of the given shape.
local transposed = check.transposed_randn

for _, dt in ipairs { 'f32', 'f64' } do
  -- max pooling
  add('mp1', 'max_pool1d', randn({ 2, 3, 11 }, dt), { 3 }, nil, { indices = true })
  add('mp1', 'max_pool1d', randn({ 2, 3, 11 }, dt), { 3 }, { stride = 2, padding = 1 }, { indices = true })
  add('mp1', 'max_pool1d', randn({ 3, 10 }, dt), { 2 }, { stride = 1, dilation = 2 }, { indices = true })
  add('mp1', 'max_pool1d', randn({ 2, 2, 10 }, dt), { 3 }, { stride = 2, ceil_mode = true }, { indices = true })
  add('mp2', 'max_pool2d', randn({ 2, 3, 9, 7 }, dt), { 3 }, { stride = 2, padding = 1 }, { indices = true })
  add('mp2', 'max_pool2d', randn({ 2, 3, 8, 8 }, dt), { 2 }, nil, { indices = true })
  add('mp2', 'max_pool2d', randn({ 1, 2, 7, 8 }, dt), { { 3, 2 } }, { stride = {} }, { indices = true })
  add('mp2', 'max_pool2d', randn({ 2, 2, 9, 10 }, dt), { { 2, 3 } },
    { stride = { 1, 2 }, dilation = { 2, 1 }, ceil_mode = true }, { indices = true })
  add('mp2', 'max_pool2d', randn({ 3, 7, 6 }, dt), { 3 }, { stride = 2, padding = 1, ceil_mode = true }, { indices = true })
  add('mp2', 'max_pool2d', transposed({ 2, 3, 7, 9 }, dt), { 2 }, { stride = 1 }, { indices = true, note = ' non-contiguous' })
  add('mp2', 'max_pool2d', randn({ 1, 2, 5, 5 }, dt), { 4 }, { stride = 3, padding = 2, ceil_mode = true }, { indices = true })
  add('mp3', 'max_pool3d', randn({ 1, 2, 5, 6, 7 }, dt), { 2 }, nil, { indices = true })
  add('mp3', 'max_pool3d', randn({ 2, 2, 5, 6, 7 }, dt), { 3 }, { stride = 2, padding = 1, ceil_mode = true }, { indices = true })
  add('mp3', 'max_pool3d', randn({ 2, 5, 7, 6 }, dt), { { 2, 2, 3 } }, { stride = 1, dilation = { 2, 1, 2 } }, { indices = true })
  add('mp3', 'max_pool3d', transposed({ 1, 2, 4, 6, 5 }, dt), { 2 }, { stride = { 1, 2, 2 } }, { indices = true, note = ' non-contiguous' })
  -- average pooling
  add('ap1', 'avg_pool1d', randn({ 2, 3, 11 }, dt), { 3 }, { stride = 2, padding = 1 })
  add('ap1', 'avg_pool1d', randn({ 2, 3, 11 }, dt), { 3 }, { stride = 2, padding = 1, count_include_pad = false, ceil_mode = true })
  add('ap2', 'avg_pool2d', randn({ 2, 3, 9, 7 }, dt), { 3 }, { stride = 2, padding = 1 })
  add('ap2', 'avg_pool2d', randn({ 2, 3, 9, 7 }, dt), { 3 }, { stride = 2, padding = 1, count_include_pad = false })
  add('ap2', 'avg_pool2d', randn({ 3, 8, 7 }, dt), { { 2, 3 } }, { stride = { 2, 1 }, padding = { 1, 1 }, ceil_mode = true })
  add('ap2', 'avg_pool2d', randn({ 1, 2, 5, 5 }, dt), { 4 }, { stride = 3, padding = 2, ceil_mode = true, count_include_pad = false })
  add('ap2', 'avg_pool2d', randn({ 1, 2, 5, 5 }, dt), { 4 }, { stride = 3, padding = 2, ceil_mode = true })
  add('ap2', 'avg_pool2d', randn({ 2, 2, 6, 6 }, dt), { 3 }, { padding = 1, divisor_override = 5 })
  add('ap2', 'avg_pool2d', transposed({ 2, 3, 7, 9 }, dt), { 2 }, { stride = 1 }, { note = ' non-contiguous' })
  add('ap3', 'avg_pool3d', randn({ 1, 2, 5, 6, 7 }, dt), { 2 })
  add('ap3', 'avg_pool3d', randn({ 2, 2, 5, 6, 7 }, dt), { 3 }, { stride = 2, padding = 1, ceil_mode = true, count_include_pad = false })
  add('ap3', 'avg_pool3d', randn({ 2, 5, 7, 6 }, dt), { { 2, 2, 3 } }, { stride = { 1, 2, 2 }, padding = { 1, 0, 1 } })
  -- adaptive average pooling
  add('aa1', 'adaptive_avg_pool1d', randn({ 2, 3, 10 }, dt), { 4 })
  add('aa1', 'adaptive_avg_pool1d', randn({ 3, 5 }, dt), { 7 })
  add('aa2', 'adaptive_avg_pool2d', randn({ 2, 3, 9, 7 }, dt), { { 4, 3 } })
  add('aa2', 'adaptive_avg_pool2d', randn({ 2, 3, 9, 7 }, dt), { 1 })
  add('aa2', 'adaptive_avg_pool2d', randn({ 2, 3, 9, 7 }, dt), { { false, 3 } })
  add('aa2', 'adaptive_avg_pool2d', transposed({ 2, 3, 6, 11 }, dt), { { 5, 4 } }, nil, { note = ' non-contiguous' })
  add('aa3', 'adaptive_avg_pool3d', randn({ 1, 2, 5, 6, 7 }, dt), { { 2, 3, 4 } })
  add('aa3', 'adaptive_avg_pool3d', randn({ 2, 5, 4, 3 }, dt), { { 3, 5, 2 } })
end

-- NaN wins a window; -inf windows pick their first position.
do
  local v = {}
  for i = 1, 2 * 36 do v[i] = math.sin(i) end
  v[8], v[15], v[40], v[41] = 0 / 0, 0 / 0, -1 / 0, -1 / 0
  for i = 49, 60 do v[i] = -1 / 0 end
  local x = lumen.tensor(v):reshape { 1, 2, 6, 6 }
  add('mpnan', 'max_pool2d', x, { 3 }, { stride = 2, padding = 1 }, { indices = true, note = ' NaN and -inf' })
end

-- Ties (as after a ReLU): the first position of a window wins.
do
  local v = {}
  for i = 1, 2 * 3 * 8 * 9 do v[i] = math.max(0, (i * 7) % 5 - 2) end
  local x = lumen.tensor(v):reshape { 2, 3, 8, 9 }
  add('mpties', 'max_pool2d', x, { 3 }, { stride = 2, padding = 1 }, { indices = true, note = ' ties' })
  add('mpties', 'max_pool2d', x, { 2 }, nil, { indices = true, note = ' ties' })
  add('mpties', 'max_pool3d', x:reshape { 1, 2, 3, 8, 9 }, { 2 }, { stride = 1, ceil_mode = true }, { indices = true, note = ' ties' })
end

-- max_unpool, fed with values and indices from a max pool
local unpool_cases = {}
local function add_unpool(nd, shape, k, popts, uopts, dtype)
  local x = lumen.randn(shape, dtype)
  local y, i = lumen.no_grad(function()
    local o = { return_indices = true }
    for key, v in pairs(popts or {}) do o[key] = v end
    return F['max_pool' .. nd .. 'd'](x, k, o)
  end)
  local fn = 'max_unpool' .. nd .. 'd'
  local out = lumen.no_grad(function() return F[fn](y, i, k, uopts) end)
  local g = lumen.randn(out:size(), dtype)
  local kw = kwargs(uopts)
  local expr = string.format('grad_of(lambda y, i: F.%s(y, i, %s%s), [y, i], g)[0:2]', fn, py(k), kw ~= '' and ', ' .. kw or '')
  cases[#cases + 1] = { expr, y = y, i = i, g = g }
  checks[#checks + 1] = {
    name = string.format('%s %s %s (%s)', fn, table.concat(shape, 'x'), kw, dtype),
    run = function()
      local yl = y:detach():requires_grad_()
      local out = F[fn](yl, i, k, uopts)
      out:backward(g)
      return { out, yl.grad }
    end,
    tol = tol(dtype),
  }
end
for _, dt in ipairs { 'f32', 'f64' } do
  add_unpool(2, { 2, 3, 8, 6 }, 2, nil, nil, dt)
  add_unpool(2, { 1, 2, 5, 5 }, 2, nil, { output_size = { 5, 5 } }, dt)
  add_unpool(2, { 1, 2, 7, 7 }, 3, { stride = 2, padding = 1 }, { stride = 2, padding = 1 }, dt)
  add_unpool(2, { 3, 6, 4 }, { 2, 1 }, nil, { output_size = { 7, 4 } }, dt)
  add_unpool(3, { 1, 2, 4, 6, 4 }, 2, nil, nil, dt)
  add_unpool(3, { 2, 1, 5, 4, 4 }, 2, nil, { output_size = { 2, 1, 5, 4, 5 } }, dt)
end

describe('pooling parity with PyTorch', function()
  local ref = oracle.run(cases)
  for n, c in ipairs(checks) do
    it(c.name, function()
      assert(not ref[n].error, ref[n].error)
      local got = c.run()
      assert.are.equal(#ref[n], #got, 'number of outputs')
      for k = 1, #got do
        local is_index = got[k]:dtype() == 'i64'
        check.assert_close(got[k], ref[n][k], is_index and { rtol = 0, atol = 0 } or c.tol, 'output ' .. k)
      end
    end)
  end
end)

describe('pooling gradients against finite differences', function()
  it('max_pool1d/2d/3d', function()
    assert(gradcheck(function(x) return F.max_pool1d(x, 3, { stride = 2, padding = 1 }) end, { distinct { 2, 2, 9 } }))
    assert(gradcheck(function(x) return F.max_pool2d(x, { 2, 3 }, { stride = 1, dilation = { 1, 2 }, ceil_mode = true }) end,
      { distinct { 1, 2, 5, 6 } }))
    assert(gradcheck(function(x) return F.max_pool3d(x, 2, { stride = 1, padding = 1 }) end, { distinct { 1, 1, 3, 4, 3 } }))
  end)
  it('avg_pool1d/2d/3d', function()
    assert(gradcheck(function(x) return F.avg_pool1d(x, 3, { stride = 2, padding = 1, ceil_mode = true }) end,
      { lumen.randn({ 2, 2, 8 }, 'f64') }))
    assert(gradcheck(function(x) return F.avg_pool2d(x, 3, { stride = 2, padding = 1, count_include_pad = false }) end,
      { lumen.randn({ 1, 2, 5, 6 }, 'f64') }))
    assert(gradcheck(function(x) return F.avg_pool3d(x, 2, { stride = 1 }) end, { lumen.randn({ 1, 1, 3, 4, 3 }, 'f64') }))
  end)
  it('adaptive_avg_pool1d/2d/3d', function()
    assert(gradcheck(function(x) return F.adaptive_avg_pool1d(x, 4) end, { lumen.randn({ 2, 2, 7 }, 'f64') }))
    assert(gradcheck(function(x) return F.adaptive_avg_pool2d(x, { 3, 2 }) end, { lumen.randn({ 1, 2, 5, 5 }, 'f64') }))
    assert(gradcheck(function(x) return F.adaptive_avg_pool3d(x, { 2, 3, 2 }) end, { lumen.randn({ 1, 1, 3, 4, 3 }, 'f64') }))
  end)
  it('max_unpool2d/3d', function()
    local x = distinct { 1, 2, 4, 6 }
    local _, i = F.max_pool2d(x, 2, { return_indices = true })
    assert(gradcheck(function(y) return F.max_unpool2d(y, i, 2) end, { lumen.randn({ 1, 2, 2, 3 }, 'f64') }))
    local x3 = distinct { 1, 1, 4, 4, 4 }
    local _, i3 = F.max_pool3d(x3, 2, { return_indices = true })
    assert(gradcheck(function(y) return F.max_unpool3d(y, i3, 2) end, { lumen.randn({ 1, 1, 2, 2, 2 }, 'f64') }))
  end)
end)

describe('pooling modules', function()
  if not nn.Module then
    pending('nn.Module is not there yet')
    return
  end
  it('compute what the functions do', function()
    local x = lumen.randn(2, 3, 8, 8)
    check.assert_close(nn.MaxPool2d(3, { stride = 2, padding = 1 })(x), F.max_pool2d(x, 3, { stride = 2, padding = 1 }))
    check.assert_close(nn.AvgPool2d(2)(x), F.avg_pool2d(x, 2))
    check.assert_close(nn.AdaptiveAvgPool2d({ 3, 2 })(x), F.adaptive_avg_pool2d(x, { 3, 2 }))
    local y, i = nn.MaxPool2d(2, { return_indices = true })(x)
    check.assert_close(nn.MaxUnpool2d(2)(y, i), F.max_unpool2d(y, i, 2))
    local v = lumen.randn(1, 2, 4, 6, 4)
    check.assert_close(nn.MaxPool3d(2)(v), F.max_pool3d(v, 2))
    check.assert_close(nn.AvgPool3d(2, { stride = 1 })(v), F.avg_pool3d(v, 2, { stride = 1 }))
    check.assert_close(nn.AdaptiveAvgPool3d(2)(v), F.adaptive_avg_pool3d(v, 2))
    local w = lumen.randn(2, 5)
    check.assert_close(nn.AdaptiveAvgPool1d(3)(w), F.adaptive_avg_pool1d(w, 3))
  end)
end)

describe('pooling errors', function()
  local function fails(pattern, fn, ...)
    local ok, err = pcall(fn, ...)
    assert.is_false(ok, 'expected an error matching ' .. pattern)
    assert.is_truthy(tostring(err):find(pattern, 1, true), 'got: ' .. tostring(err))
  end
  local x = lumen.randn(1, 2, 6, 6)
  it('names the function and what was expected', function()
    fails('lumen.max_pool2d: input is 2-D (6x6), expected 3-D (C x H x W) or 4-D (N x C x H x W)', F.max_pool2d, lumen.randn(6, 6), 2)
    fails('lumen.max_pool3d: input is 3-D (2x6x6), expected 4-D (C x D x H x W) or 5-D', F.max_pool3d, x[0], 2)
    fails('lumen.max_pool2d: input dtype i64, expected f32 or f64', F.max_pool2d, lumen.zeros({ 1, 2, 6, 6 }, 'i64'), 2)
    fails('lumen.max_pool2d: kernel size[0] is 0, expected >= 1', F.max_pool2d, x, 0)
    fails('lumen.max_pool2d: stride[1] is 0', F.max_pool2d, x, 2, { stride = { 1, 0 } })
    fails('lumen.max_pool2d: dilation[0] is 0', F.max_pool2d, x, 2, { dilation = 0 })
    fails('lumen.max_pool2d: padding[0] is 2 with kernel size 3, expected at most half the kernel size', F.max_pool2d, x, 3, { padding = 2 })
    fails('lumen.max_pool2d: input 1x2x6x6 is too small for kernel size 7', F.max_pool2d, x, 7)
    fails("lumen.max_pool2d: unknown option 'strides'", F.max_pool2d, x, 2, { strides = 2 })
    fails('lumen.max_pool2d: kernel_size must be an integer or a list of 2 integers', F.max_pool2d, x, { 2, 2, 2 })
    fails('lumen.max_pool2d: input must be a tensor, got nil', F.max_pool2d, nil, 2)
    fails('lumen.max_pool2d: ceil_mode must be a boolean, got number', F.max_pool2d, x, 2, { ceil_mode = 1 })
    fails('lumen.avg_pool2d: padding[1] is 3 with kernel size 4', F.avg_pool2d, x, 4, { padding = { 1, 3 } })
    fails('lumen.avg_pool1d: input dtype u8', F.avg_pool1d, lumen.zeros({ 2, 6 }, 'u8'), 2)
    fails('lumen.avg_pool2d: divisor_override must be a positive integer, got 0', F.avg_pool2d, x, 2, { divisor_override = 0 })
    fails('lumen.adaptive_avg_pool2d: output size[1] is 0, expected >= 1', F.adaptive_avg_pool2d, x, { 2, 0 })
    fails('lumen.adaptive_avg_pool3d: input is 3-D', F.adaptive_avg_pool3d, x[0], 2)
    fails('lumen.adaptive_avg_pool1d: output_size must be an integer or a list of 1 integers', F.adaptive_avg_pool1d, lumen.randn(2, 5), 'x')
  end)
  it('checks max_unpool indices and sizes', function()
    local y, i = F.max_pool2d(x, 2, { return_indices = true })
    fails('lumen.max_unpool2d: indices dtype i32, expected i64', F.max_unpool2d, y, i:to('i32'), 2)
    fails('lumen.max_unpool2d: indices of shape 1x2x3x2 for an input of shape 1x2x3x3', F.max_unpool2d, y, i:narrow(3, 0, 2), 2)
    fails('lumen.max_unpool2d: an index lies outside the output plane of 25 elements', F.max_unpool2d, y, i, 2, { output_size = { 5, 5 } })
    fails('lumen.max_unpool2d: output_size[0] is 9, expected between 5 and 7', F.max_unpool2d, y, i, 2, { output_size = { 9, 6 } })
    fails('lumen.max_unpool2d: indices must be a tensor', F.max_unpool2d, y, nil, 2)
    local bad = lumen.full(y:size(), 36, 'i64')
    fails('lumen.max_unpool2d: an index lies outside the output plane of 36 elements', F.max_unpool2d, y, bad, 2)
    local neg = lumen.full(y:size(), -1, 'i64')
    fails('lumen.max_unpool2d: an index lies outside', F.max_unpool2d, y, neg, 2)
  end)
  it('refuses indices changed in place before backward', function()
    local xl = lumen.randn(1, 1, 4, 4):requires_grad_()
    local y, i = F.max_pool2d(xl, 2, { return_indices = true })
    i:fill_(99)
    fails('max_pool backward: an index lies outside its plane of 16 elements', function() y:backward(lumen.ones(1, 1, 2, 2)) end)
    local v = lumen.randn(1, 1, 2, 2):requires_grad_()
    local j = lumen.zeros({ 1, 1, 2, 2 }, 'i64')
    local u = F.max_unpool2d(v, j, 2)
    j:fill_(-3)
    fails('max_unpool backward: an index lies outside the output plane of 16 elements', function() u:backward(lumen.ones(1, 1, 4, 4)) end)
  end)
end)
