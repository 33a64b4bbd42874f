-- interpolate, grid_sample and affine_grid (nn.F and nn.Upsample) against
-- PyTorch: values and gradients, plus finite differences in float64.
local lumen = require 'lumen'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'
local nn = require 'lumen.nn'
local F = nn.F

lumen.manual_seed(11)

-- Python literal of a Lua value (tables become tuples).
local function py(v)
  if type(v) == 'boolean' then return v and 'True' or 'False' end
  if type(v) == 'string' then return "'" .. v .. "'" end
  if type(v) == 'table' then
    local p = {}
    for i, e in ipairs(v) do p[i] = py(e) end
    return '(' .. table.concat(p, ', ') .. (#p == 1 and ',)' or ')')
  end
  return string.format('%.17g', v)
end
local function kwargs(opts)
  local keys, out = {}, {}
  for k in pairs(opts or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do out[#out + 1] = k .. '=' .. py(opts[k]) end
  return table.concat(out, ', ')
end
local function tol(dtype) return dtype == 'f64' and { rtol = 1e-10, atol = 1e-10 } or { rtol = 2e-5, atol = 2e-6 } end
local function shape_str(t) return table.concat(t:size(), 'x') end

-- Every case: a lumen function of its tensor inputs (the float ones
-- requiring grad when grads is set) and the PyTorch expression over the
-- same names; outputs are the forward result and then the gradients of
-- sum(out * g) for each input named in grads.
local cases, checks = {}, {}
local function add(name, inputs, lua_fn, pyexpr, grads, opts)
  local dtype
  for _, k in ipairs(inputs.order) do dtype = dtype or inputs[k]:dtype() end
  local args = {}
  for i, k in ipairs(inputs.order) do args[i] = inputs[k] end
  local y = lumen.no_grad(function() return lua_fn(unpack(args)) end)
  local case = { pyexpr }
  for k, v in pairs(inputs) do if k ~= 'order' then case[k] = v end end
  if grads then
    local g = lumen.randn(y:size(), y:dtype())
    case.g = g
    case[1] = string.format('grad_of(lambda %s: %s, [%s], g)[0:%d]', table.concat(inputs.order, ', '), pyexpr,
      table.concat(inputs.order, ', '), #grads + 1)
    -- grad_of gives gradients in input order; keep those asked for
    local want = {}
    for _, k in ipairs(grads) do want[k] = true end
    for i, k in ipairs(inputs.order) do
      assert(want[k] or i > #grads, 'grads must name a prefix of the inputs')
    end
    checks[#checks + 1] = {
      name = name, tol = opts and opts[dtype] or tol(dtype),
      run = function()
        local leaves = {}
        for i, k in ipairs(inputs.order) do
          leaves[i] = want[k] and args[i]:detach():requires_grad_() or args[i]
        end
        local out = lua_fn(unpack(leaves))
        out:backward(g)
        local got = { out }
        for i = 1, #grads do got[#got + 1] = leaves[i].grad end
        return got
      end,
    }
  else
    checks[#checks + 1] = { name = name, tol = tol(dtype), run = function() return { lua_fn(unpack(args)) } end }
  end
  cases[#cases + 1] = case
end

local function randn(shape, dtype) return lumen.randn(shape, dtype or 'f32') end
local transposed = check.transposed_randn
-- The grid's gradient sums products over channels and corners that largely
-- cancel; PyTorch computes them in float32.
local grid_tol = { f32 = { rtol = 2e-5, atol = 1e-5 } }
-- A grid with values in [-lo, lo] (some points outside the input when lo > 1).
local function grid(shape, dtype, lo)
  return (lumen.rand(shape, dtype) * (2 * lo) - lo)
end

local function interp(name, x, opts, grads)
  add(string.format('interpolate %s %s %s (%s)%s', shape_str(x), kwargs(opts), '', x:dtype(), name),
    { order = { 'x' }, x = x }, function(v) return F.interpolate(v, opts) end,
    'F.interpolate(x, ' .. kwargs(opts) .. ')', grads ~= false and { 'x' } or nil)
end

for _, dt in ipairs { 'f32', 'f64' } do
  -- nearest: sizes equal, doubled, larger, smaller; scale factors
  interp('', randn({ 2, 3, 5 }, dt), { size = 7 })
  interp('', randn({ 2, 3, 5 }, dt), { size = 10 })
  interp('', randn({ 2, 3, 7 }, dt), { size = 3 })
  interp('', randn({ 2, 3, 5 }, dt), { scale_factor = 1.5 })
  interp('', randn({ 2, 3, 10 }, dt), { scale_factor = 0.6 })
  interp('', randn({ 2, 3, 4, 5 }, dt), { size = { 7, 9 } })
  interp('', randn({ 2, 3, 4, 5 }, dt), { scale_factor = { 2, 3 } })
  interp('', randn({ 1, 2, 5, 7 }, dt), { scale_factor = 1.7 })
  interp('', randn({ 1, 2, 5, 7 }, dt), { scale_factor = 1.7, recompute_scale_factor = true })
  interp(' non-contiguous', transposed({ 2, 2, 3, 4 }, dt), { size = { 6, 5 }, mode = 'nearest' })
  interp('', randn({ 1, 2, 3, 4, 2 }, dt), { scale_factor = 3 })
  interp('', randn({ 1, 2, 3, 4, 5 }, dt), { size = { 5, 7, 4 } })
  -- linear, bilinear, trilinear with both corner rules
  for _, align in ipairs { true, false } do
    interp('', randn({ 2, 3, 5 }, dt), { size = 9, mode = 'linear', align_corners = align })
    interp('', randn({ 2, 3, 6 }, dt), { size = 4, mode = 'linear', align_corners = align })
    interp('', randn({ 2, 3, 4 }, dt), { scale_factor = 2.3, mode = 'linear', align_corners = align })
    interp('', randn({ 2, 3, 4, 5 }, dt), { size = { 7, 9 }, mode = 'bilinear', align_corners = align })
    interp('', randn({ 1, 2, 6, 5 }, dt), { scale_factor = 1.5, mode = 'bilinear', align_corners = align })
    interp('', randn({ 1, 2, 6, 5 }, dt), { scale_factor = { 0.5, 2.3 }, mode = 'bilinear', align_corners = align })
    interp('', randn({ 1, 2, 4, 5 }, dt), { size = { 1, 3 }, mode = 'bilinear', align_corners = align })
    interp(' non-contiguous', transposed({ 2, 2, 3, 5 }, dt), { size = { 4, 6 }, mode = 'bilinear', align_corners = align })
    interp('', randn({ 1, 2, 3, 4, 5 }, dt), { size = { 4, 5, 7 }, mode = 'trilinear', align_corners = align })
    interp('', randn({ 1, 2, 3, 2, 4 }, dt), { scale_factor = 2, mode = 'trilinear', align_corners = align })
  end

  -- grid_sample: bilinear with gradients for input and grid; nearest forward only
  for _, pad in ipairs { 'zeros', 'border' } do
    for _, align in ipairs { true, false } do
      local o = { mode = 'bilinear', padding_mode = pad, align_corners = align }
      local x, gr = randn({ 2, 3, 5, 6 }, dt), grid({ 2, 4, 7, 2 }, dt, 1.2)
      add(string.format('grid_sample 2-D %s (%s)', kwargs(o), dt), { order = { 'x', 'grid' }, x = x, grid = gr },
        function(a, b) return F.grid_sample(a, b, o) end, 'F.grid_sample(x, grid, ' .. kwargs(o) .. ')', { 'x', 'grid' }, grid_tol)
      local x3, g3 = randn({ 2, 2, 4, 5, 3 }, dt), grid({ 2, 3, 4, 2, 3 }, dt, 1.2)
      add(string.format('grid_sample 3-D %s (%s)', kwargs(o), dt), { order = { 'x', 'grid' }, x = x3, grid = g3 },
        function(a, b) return F.grid_sample(a, b, o) end, 'F.grid_sample(x, grid, ' .. kwargs(o) .. ')', { 'x', 'grid' }, grid_tol)
      local on = { mode = 'nearest', padding_mode = pad, align_corners = align }
      add(string.format('grid_sample 2-D %s (%s)', kwargs(on), dt), { order = { 'x', 'grid' }, x = x, grid = gr },
        function(a, b) return F.grid_sample(a, b, on) end, 'F.grid_sample(x, grid, ' .. kwargs(on) .. ')')
      add(string.format('grid_sample 3-D %s (%s)', kwargs(on), dt), { order = { 'x', 'grid' }, x = x3, grid = g3 },
        function(a, b) return F.grid_sample(a, b, on) end, 'F.grid_sample(x, grid, ' .. kwargs(on) .. ')')
    end
  end
  do -- non-contiguous input and grid, default options
    local x = transposed({ 1, 2, 6, 5 }, dt)
    local gr = grid({ 1, 2, 3, 4 }, dt, 1):permute { 0, 2, 3, 1 }
    add(string.format('grid_sample non-contiguous (%s)', dt), { order = { 'x', 'grid' }, x = x, grid = gr },
      function(a, b) return F.grid_sample(a, b) end, 'F.grid_sample(x, grid, align_corners=False)', { 'x', 'grid' }, grid_tol)
  end

  -- affine_grid
  for _, align in ipairs { true, false } do
    local o = { align_corners = align }
    local t2 = randn({ 2, 2, 3 }, dt)
    add(string.format('affine_grid 2-D %s (%s)', kwargs(o), dt), { order = { 't' }, t = t2 },
      function(t) return F.affine_grid(t, { 2, 3, 5, 4 }, o) end, 'F.affine_grid(t, (2, 3, 5, 4), ' .. kwargs(o) .. ')', { 't' })
    add(string.format('affine_grid 2-D one column %s (%s)', kwargs(o), dt), { order = { 't' }, t = randn({ 1, 2, 3 }, dt) },
      function(t) return F.affine_grid(t, { 1, 1, 3, 1 }, o) end, 'F.affine_grid(t, (1, 1, 3, 1), ' .. kwargs(o) .. ')', { 't' })
    local t3 = randn({ 2, 3, 4 }, dt)
    add(string.format('affine_grid 3-D %s (%s)', kwargs(o), dt), { order = { 't' }, t = t3 },
      function(t) return F.affine_grid(t, { 2, 1, 3, 4, 5 }, o) end, 'F.affine_grid(t, (2, 1, 3, 4, 5), ' .. kwargs(o) .. ')', { 't' })
    add(string.format('affine_grid 3-D non-contiguous theta %s (%s)', kwargs(o), dt),
      { order = { 't' }, t = randn({ 1, 4, 3 }, dt):transpose(1, 2) },
      function(t) return F.affine_grid(t, { 1, 2, 2, 3, 2 }, o) end, 'F.affine_grid(t, (1, 2, 2, 3, 2), ' .. kwargs(o) .. ')', { 't' })
  end
end

describe('resampling parity with PyTorch', function()
  local ref = oracle.run(cases)
  for n, c in ipairs(checks) do
    it(c.name, function()
      assert(not ref[n].error, ref[n].error)
      local got = c.run()
      assert.are.equal(#ref[n], #got, 'number of outputs')
      for k = 1, #got do check.assert_close(got[k], ref[n][k], c.tol, 'output ' .. k) end
    end)
  end
end)

describe('resampling gradients against finite differences', function()
  local function d(shape) return lumen.randn(shape, 'f64') end
  it('interpolate', function()
    assert(gradcheck(function(x) return F.interpolate(x, { size = 7 }) end, { d { 1, 2, 4 } }))
    assert(gradcheck(function(x) return F.interpolate(x, { scale_factor = 1.5 }) end, { d { 1, 2, 3, 4 } }))
    assert(gradcheck(function(x) return F.interpolate(x, { size = 7, mode = 'linear', align_corners = true }) end, { d { 1, 2, 4 } }))
    assert(gradcheck(function(x) return F.interpolate(x, { size = { 5, 3 }, mode = 'bilinear' }) end, { d { 1, 2, 3, 4 } }))
    assert(gradcheck(function(x) return F.interpolate(x, { scale_factor = 1.5, mode = 'trilinear' }) end, { d { 1, 1, 2, 3, 2 } }))
  end)
  it('grid_sample (bilinear; input and grid)', function()
    for _, pad in ipairs { 'zeros', 'border' } do
      for _, align in ipairs { true, false } do
        local o = { padding_mode = pad, align_corners = align }
        assert(gradcheck(function(x, g) return F.grid_sample(x, g, o) end,
          { d { 1, 2, 3, 4 }, grid({ 1, 3, 2, 2 }, 'f64', 1.1) }))
        assert(gradcheck(function(x, g) return F.grid_sample(x, g, o) end,
          { d { 1, 1, 3, 2, 3 }, grid({ 1, 2, 2, 1, 3 }, 'f64', 1.1) }))
      end
    end
  end)
  it('affine_grid, alone and feeding grid_sample', function()
    assert(gradcheck(function(t) return F.affine_grid(t, { 2, 1, 3, 4 }) end, { d { 2, 2, 3 } }))
    assert(gradcheck(function(t) return F.affine_grid(t, { 1, 1, 2, 3, 2 }, { align_corners = true }) end, { d { 1, 3, 4 } }))
    local x = d { 1, 2, 5, 4 }
    local theta = lumen.tensor({ { { 0.9, 0.2, 0.05 }, { -0.1, 1.1, -0.07 } } }, 'f64')
    assert(gradcheck(function(t) return F.grid_sample(x, F.affine_grid(t, { 1, 2, 3, 3 })) end, { theta }))
  end)
end)

describe('Upsample modules', function()
  it('compute what interpolate does', function()
    local x = lumen.randn(1, 2, 3, 4)
    check.assert_close(nn.Upsample { scale_factor = 2 }(x), F.interpolate(x, { scale_factor = 2 }))
    check.assert_close(nn.Upsample { size = { 5, 7 }, mode = 'bilinear', align_corners = false }(x),
      F.interpolate(x, { size = { 5, 7 }, mode = 'bilinear', align_corners = false }))
    check.assert_close(nn.UpsamplingBilinear2d { scale_factor = 2 }(x),
      F.interpolate(x, { scale_factor = 2, mode = 'bilinear', align_corners = true }))
    check.assert_close(nn.UpsamplingNearest2d { size = 5 }(x), F.interpolate(x, { size = 5 }))
    assert.is_truthy(tostring(nn.Upsample { scale_factor = 2 }):find("Upsample(scale_factor=2, mode='nearest')", 1, true))
  end)
end)

describe('resampling errors', function()
  local function fails(pattern, fn, ...)
    local ok, err = pcall(fn, ...)
    assert.is_false(ok, 'expected an error matching ' .. pattern)
    assert.is_truthy(tostring(err):find(pattern, 1, true), 'got: ' .. tostring(err))
  end
  local x = lumen.randn(1, 2, 4, 4)
  it('interpolate', function()
    fails('lumen.interpolate: input is 2-D (4x4), expected 3-D (N x C x W)', F.interpolate, lumen.randn(4, 4), { size = 3 })
    fails("lumen.interpolate: mode 'bicubic' is not supported", F.interpolate, x, { size = 3, mode = 'bicubic' })
    fails("lumen.interpolate: mode 'linear' needs a 3-D input (N x C x W), got 4-D", F.interpolate, x, { size = 3, mode = 'linear' })
    fails('lumen.interpolate: expected exactly one of size and scale_factor', F.interpolate, x, { size = 3, scale_factor = 2 })
    fails('lumen.interpolate: expected exactly one of size and scale_factor', F.interpolate, x, {})
    fails('lumen.interpolate: align_corners can only be set with', F.interpolate, x, { size = 3, align_corners = true })
    fails('lumen.interpolate: size entry 2 is 0, expected a positive integer', F.interpolate, x, { size = { 3, 0 } })
    fails('lumen.interpolate: size must be a positive integer or a list of 2', F.interpolate, x, { size = { 3, 3, 3 } })
    fails('lumen.interpolate: scale_factor entry 1 is -2, expected a positive number', F.interpolate, x, { scale_factor = -2 })
    fails('lumen.interpolate: scale_factor 0.1 makes spatial dim 0 of size 4 empty', F.interpolate, x, { scale_factor = 0.1 })
    fails("lumen.interpolate: unknown option 'scale'", F.interpolate, x, { scale = 2 })
    fails('lumen.interpolate: input dtype i64, expected f32 or f64', F.interpolate, lumen.zeros({ 1, 1, 4 }, 'i64'), { size = 2 })
    fails('lumen.interpolate: input must be a tensor', F.interpolate, 'x', { size = 2 })
  end)
  it('grid_sample', function()
    local g = lumen.zeros(1, 3, 3, 2)
    fails('lumen.grid_sample: grid dtype f64 with input dtype f32, expected the same dtype', F.grid_sample, x, g:to('f64'))
    fails('lumen.grid_sample: grid of shape 1x3x3x3 for an input of shape 1x2x4x4, expected N x H_out x W_out x 2 with N = 1',
      F.grid_sample, x, lumen.zeros(1, 3, 3, 3))
    fails('lumen.grid_sample: grid of shape 2x3x3x2', F.grid_sample, x, lumen.zeros(2, 3, 3, 2))
    fails('lumen.grid_sample: input is 3-D (2x4x4), expected 4-D', F.grid_sample, x[0], g[0])
    fails("lumen.grid_sample: padding_mode 'reflection' is not supported", F.grid_sample, x, g, { padding_mode = 'reflection' })
    fails("lumen.grid_sample: mode 'bicubic' is not supported", F.grid_sample, x, g, { mode = 'bicubic' })
    fails('lumen.grid_sample: input dtype i32, expected f32 or f64', F.grid_sample, lumen.zeros({ 1, 2, 4, 4 }, 'i32'), g)
    fails('lumen.grid_sample: grid must be a tensor', F.grid_sample, x, nil)
  end)
  it('affine_grid', function()
    fails('lumen.affine_grid: theta of shape 1x3x4 for size 1x1x4x4, expected 1 x 2 x 3', F.affine_grid, lumen.zeros(1, 3, 4), { 1, 1, 4, 4 })
    fails('lumen.affine_grid: theta of shape 2x2x3 for size 1x1x4x4, expected 1 x 2 x 3', F.affine_grid, lumen.zeros(2, 2, 3), { 1, 1, 4, 4 })
    fails('lumen.affine_grid: size must be a list of 4 (N, C, H, W) or 5 (N, C, D, H, W) integers, got a list of 3',
      F.affine_grid, lumen.zeros(1, 2, 3), { 1, 4, 4 })
    fails('lumen.affine_grid: size 1x1x0x4 has an entry outside [1, 2147483647]', F.affine_grid, lumen.zeros(1, 2, 3), { 1, 1, 0, 4 })
    fails('lumen.affine_grid: theta dtype i64, expected f32 or f64', F.affine_grid, lumen.zeros({ 1, 2, 3 }, 'i64'), { 1, 1, 4, 4 })
  end)
end)
