-- The grid MRF of the crf plugin: its energy against one written here in
-- Lua, graph cuts and alpha-expansion against exhaustive search on tiny
-- grids, expansion against ICM, and our max-flow against Debian's
-- libmaxflow on random 64^3 problems (a peer: skipped when
-- libmaxflow-dev or g++ is missing).
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local ffi = require 'ffi'
local crf = require 'lumen.crf'
local scratch = require 'helpers.scratch'

local function prod(t)
  local n = 1
  for _, v in ipairs(t) do n = n * v end
  return n
end

-- The energy of labels x (a flat Lua list, C order) written from the
-- definition: sum U(x_i, i) + sum over neighbour pairs of lambda
-- exp(-beta |I_i - I_j|^2) / dist [x_i ~= x_j], every pair once.
-- energy_fn(...) returns a function of x; lua_energy evaluates one.
local function energy_fn(U, img, size, spacing, nb, lambda, beta)
  local nd, n = #size, prod(size)
  local u, im = U:reshape(U:size(0), n):totable(), img and img:reshape(img:size(0), n):totable()
  local offsets = {}
  local function add_offsets(prefix)
    if #prefix == nd then
      local len2, first = 0, 0
      for a = 1, nd do
        len2 = len2 + prefix[a] ^ 2
        if first == 0 and prefix[a] ~= 0 then first = prefix[a] end
      end
      local max2 = (nb == 2 * nd) and 1 or (nb == 18 and 2 or nd)
      if first > 0 and len2 <= max2 then offsets[#offsets + 1] = { unpack(prefix) } end
      return
    end
    for v = -1, 1 do
      prefix[#prefix + 1] = v
      add_offsets(prefix)
      prefix[#prefix] = nil
    end
  end
  add_offsets({})
  -- the pairs and their weights, once
  local pi, pj, pw = {}, {}, {}
  for i = 0, n - 1 do
    local c, r = {}, i
    for a = nd, 1, -1 do
      c[a] = r % size[a]
      r = math.floor(r / size[a])
    end
    for _, o in ipairs(offsets) do
      local j, inside, d2 = 0, true, 0
      for a = 1, nd do
        local ca = c[a] + o[a]
        if ca < 0 or ca >= size[a] then inside = false end
        j = j * size[a] + ca
        d2 = d2 + (o[a] * spacing[a]) ^ 2
      end
      if inside then
        local w = lambda / math.sqrt(d2)
        if im then
          local s = 0
          for ch = 1, #im do s = s + (im[ch][i + 1] - im[ch][j + 1]) ^ 2 end
          w = w * math.exp(-beta * s)
        end
        pi[#pi + 1], pj[#pj + 1], pw[#pw + 1] = i + 1, j + 1, w
      end
    end
  end
  return function(x)
    local e = 0
    for i = 1, n do e = e + u[x[i] + 1][i] end
    for k = 1, #pi do
      if x[pi[k]] ~= x[pj[k]] then e = e + pw[k] end
    end
    return e
  end
end

local function lua_energy(U, img, x, size, spacing, nb, lambda, beta)
  return energy_fn(U, img, size, spacing, nb, lambda, beta)(x)
end

-- Every labelling of n voxels with K labels, in turn (a flat list).
local function each_labelling(n, K, fn)
  local x = {}
  for i = 1, n do x[i] = 0 end
  while true do
    fn(x)
    local i = 1
    while i <= n and x[i] == K - 1 do
      x[i] = 0
      i = i + 1
    end
    if i > n then return end
    x[i] = x[i] + 1
  end
end

local function random_problem(K, size, seed)
  lumen.manual_seed(seed)
  local U = lumen.rand({ K, unpack(size) }, 'f64') * 2
  local img = lumen.rand({ 1, unpack(size) }, 'f64')
  return U, img
end

local function flat_labels(t) return (t:reshape(-1)):totable() end

describe('crf.grid energy', function()
  it('is the energy written from the definition (3-D, 26 neighbours, anisotropic, two channels)', function()
    local size, spacing = { 3, 4, 3 }, { 1, 1.5, 2 }
    local U = lumen.rand(3, 3, 4, 3, 'f64')
    local img = lumen.rand(2, 3, 4, 3, 'f64')
    for _, nb in ipairs { 6, 18, 26 } do
      for trial = 1, 3 do
        local x = lumen.randint(0, 3, size):to('i64')
        local got = crf.grid_energy{ unary = U, image = { img:select(0, 0), img:select(0, 1) }, spacing = spacing,
          neighbours = nb, lambda = 0.7, beta = 2.0, labels = x }
        local want = lua_energy(U, img, flat_labels(x), size, spacing, nb, 0.7, 2.0)
        assert.is_true(math.abs(got - want) < 1e-9 * math.abs(want), string.format('%d neighbours: %g vs %g', nb, got, want))
      end
    end
  end)

  it('takes beta from the image when not given: 1 / (2 mean |Ii - Ij|^2)', function()
    local size = { 5, 6 }
    local U = lumen.rand(2, 5, 6, 'f64')
    local img = lumen.rand(5, 6, 'f64')
    local d1 = (img:narrow(0, 1, 4) - img:narrow(0, 0, 4)) ^ 2
    local d2 = (img:narrow(1, 1, 5) - img:narrow(1, 0, 5)) ^ 2
    local beta = (d1:numel() + d2:numel()) / (2 * (d1:sum():item() + d2:sum():item()))
    local x = lumen.randint(0, 2, size):to('i64')
    local got = crf.grid_energy{ unary = U, image = img, neighbours = 4, lambda = 1.3, labels = x }
    local want = lua_energy(U, img:unsqueeze(0), flat_labels(x), size, { 1, 1 }, 4, 1.3, beta)
    assert.is_true(math.abs(got - want) < 1e-9 * want, got .. ' vs ' .. want)
  end)
end)

describe('crf.grid solvers', function()
  it('graph cut finds the global minimum (exhaustive search, 2-D 8 and 3-D 26 neighbours)', function()
    for _, case in ipairs { { { 4, 4 }, 8, 11 }, { { 2, 2, 3 }, 26, 12 }, { { 3, 5 }, 4, 13 } } do
      local size, nb, seed = case[1], case[2], case[3]
      local U, img = random_problem(2, size, seed)
      local labels, energy = crf.grid{ unary = U, image = img:select(0, 0), neighbours = nb, lambda = 0.8, beta = 1.5, solver = 'graphcut' }
      local best, energy_of = math.huge, energy_fn(U, img, size, { 1, 1, 1 }, nb, 0.8, 1.5)
      each_labelling(prod(size), 2, function(x) best = math.min(best, energy_of(x)) end)
      assert.is_true(math.abs(energy - best) < 1e-9 * best, string.format('graph cut %g, minimum %g', energy, best))
      assert.is_true(math.abs(lua_energy(U, img, flat_labels(labels), size, { 1, 1, 1 }, nb, 0.8, 1.5) - energy) < 1e-9 * best)
    end
  end)

  it('alpha-expansion lies between the global minimum and ICM on tiny three-label problems', function()
    for seed = 21, 24 do
      local size = { 3, 3 }
      local U, img = random_problem(3, size, seed)
      local opts = { unary = U, image = img:select(0, 0), neighbours = 8, lambda = 0.6, beta = 1 }
      opts.solver = 'expansion'
      local _, e_exp = crf.grid(opts)
      opts.solver = 'icm'
      local _, e_icm = crf.grid(opts)
      local best, energy_of = math.huge, energy_fn(U, img, size, { 1, 1 }, 8, 0.6, 1)
      each_labelling(9, 3, function(x) best = math.min(best, energy_of(x)) end)
      assert.is_true(e_exp >= best - 1e-9 and e_exp <= e_icm + 1e-9, string.format('min %g, expansion %g, ICM %g', best, e_exp, e_icm))
      -- within the factor 2 bound of Boykov, Veksler and Zabih for Potts
      assert.is_true(e_exp <= 2 * best)
    end
  end)

  it('alpha-expansion never ends above ICM (random 3-D problems, 4 labels)', function()
    for seed = 31, 34 do
      local U, img = random_problem(4, { 10, 12, 9 }, seed)
      local opts = { unary = U, image = img:select(0, 0), neighbours = seed % 2 == 0 and 6 or 26, lambda = 0.5 }
      opts.solver = 'expansion'
      local _, e_exp = crf.grid(opts)
      opts.solver = 'icm'
      local _, e_icm = crf.grid(opts)
      local argmin = U:argmin(0)
      local e0 = crf.grid_energy{ unary = U, image = img:select(0, 0), neighbours = opts.neighbours, lambda = 0.5, labels = argmin }
      assert.is_true(e_exp <= e_icm, string.format('seed %d: expansion %g > ICM %g', seed, e_exp, e_icm))
      assert.is_true(e_icm <= e0, 'ICM raised the energy of its start')
    end
  end)

  it('smooths labels from probabilities; two-label expansion equals the graph cut', function()
    lumen.manual_seed(41)
    local P = nn.F.softmax(lumen.randn(2, 20, 20) * 0.5, 0)
    local lab_gc, e_gc = crf.grid{ probs = P, lambda = 2 }
    local lab_ex, e_ex = crf.grid{ probs = P, lambda = 2, solver = 'expansion' }
    assert.are.equal('i64', lab_gc:dtype())
    assert.are.same({ 20, 20 }, lab_gc:size())
    assert.is_true(math.abs(e_gc - e_ex) < 1e-9 * e_gc)
    -- smoother than the argmax: fewer label changes between neighbours
    local function changes(x) return (x:narrow(0, 1, 19) - x:narrow(0, 0, 19)):abs():sum():item() end
    assert.is_true(changes(lab_gc) < changes(P:argmax(0)) / 2)
  end)
end)

-- The peer: Debian's libmaxflow, built here from maxflow_peer.cpp.
local function build_peer(dir)
  local src = lumen.core.root .. '/plugins/crf/spec/maxflow_peer.cpp'
  local exe = dir .. '/maxflow_peer'
  local cmd = string.format("pkg-config --exists maxflow 2>/dev/null && g++ -O2 -o '%s' '%s' $(pkg-config --cflags --libs maxflow) 2>/dev/null", exe, src)
  if os.execute(cmd) == 0 then return exe end
  return nil
end

local function write_f64(f, t)
  t = t:to('f64'):contiguous()
  f:write(ffi.string(lumen.core.info(t).data, t:numel() * 8))
end

-- Writes a 6-neighbour problem for the peer: edge weights lambda
-- exp(-beta dI^2) to the next voxel along each dim (spacing 1).
local function write_problem(path, U, img, lambda, beta)
  local f = assert(io.open(path, 'wb'))
  local size = img:size()
  f:write(ffi.string(ffi.new('int64_t[3]', size), 24))
  write_f64(f, U:select(0, 0))
  write_f64(f, U:select(0, 1))
  for a = 0, 2 do
    local d = img:narrow(a, 1, size[a + 1] - 1) - img:narrow(a, 0, size[a + 1] - 1)
    local w = (d * d * -beta):exp() * lambda
    local pad = { unpack(size) }
    pad[a + 1] = 1
    write_f64(f, lumen.cat({ w, lumen.zeros(pad, 'f64') }, a))
  end
  f:close()
end

describe('crf max-flow against libmaxflow (peer)', function()
  local dir = scratch.dir()
  local peer = build_peer(dir)
  teardown(function() os.execute("rm -rf '" .. dir .. "'") end)
  local test = peer and it or pending
  -- Random segmentation-like problems: a smooth random field (sigma 3
  -- voxels) plus voxel noise gives the probabilities, its sign plus noise
  -- the image. (Independent noise alone makes a much harder cut: 64^3 took
  -- 4 s here and 7.7 s with libmaxflow, too long for a spec.)
  test('gives libmaxflow\'s flow on random 64^3 problems' .. (peer and '' or ' (libmaxflow-dev or g++ missing)'), function()
    local augment = require 'lumen.augment'
    for _, case in ipairs { { 51, 1.0, 0.5 }, { 52, 3.0, 4.0 } } do
      local seed, lambda, beta = case[1], case[2], case[3]
      lumen.manual_seed(seed)
      local size = { 64, 64, 64 }
      local field = augment.gaussian_filter(lumen.randn(1, 1, 64, 64, 64), 3):reshape(size):to('f64')
      field = field / field:std():item()
      local P = (field + lumen.randn(size, 'f64') * 0.5):sigmoid() * 0.98 + 0.01
      local U = lumen.cat({ (-(1 - P):log()):unsqueeze(0), (-P:log()):unsqueeze(0) }, 0)
      local img = field:gt(0):to('f64') + lumen.randn(size, 'f64') * 0.3
      local labels, energy = crf.grid{ unary = U, image = img, neighbours = 6, lambda = lambda, beta = beta }
      write_problem(dir .. '/problem.bin', U, img, lambda, beta)
      local p = io.popen(string.format("'%s' '%s/problem.bin'", peer, dir))
      local out = p:read('*a')
      p:close()
      local flow = tonumber(out:match('flow (%S+)'))
      assert.is_truthy(flow, out)
      assert.is_true(math.abs(energy - flow) <= 1e-9 * flow, string.format('lumen %.12g, libmaxflow %.12g', energy, flow))
      assert.are.same(size, labels:size())
    end
  end)
end)

describe('crf.grid bad input', function()
  local P = nn.F.softmax(lumen.randn(3, 5, 5), 0)
  local cases = {
    { { probs = P, solver = 'graphcut' }, "lumen.crf.grid: solver 'graphcut' solves two labels exactly; these have 3" },
    { { probs = P, solver = 'sa' }, "lumen.crf.grid: solver is sa, expected 'graphcut', 'expansion' or 'icm'" },
    { { probs = P, neighbours = 6 }, 'lumen.crf.grid: neighbours is 6, expected 4 or 8 in 2-D' },
    { { probs = P, lambda = -1 }, 'lumen.crf.grid: lambda is -1, expected a number >= 0' },
    { { probs = P, image = lumen.rand(5, 4) }, 'lumen.crf.grid: image channel 1 is 5x4, expected 5x5' },
    { { probs = P, spacing = { 1 } }, 'lumen.crf.grid: spacing has 1 values but the volume has 2 spatial dims' },
    { { probs = P * 2 }, 'lumen.crf.grid: probs are not probabilities' },
    { { probs = P, unary = P }, 'lumen.crf.grid: give probs or unary, not both' },
    { {}, 'lumen.crf.grid: probs (or unary costs) are required' },
    { { probs = P, beta = -2 }, 'lumen.crf.grid: beta is -2' },
    { { probs = P, lamda = 2 }, "lumen.crf.grid: unknown option 'lamda'" },
  }
  for _, c in ipairs(cases) do
    it(c[2], function()
      local ok, e = pcall(crf.grid, c[1])
      assert.is_false(ok)
      assert.is_truthy(tostring(e):find(c[2], 1, true), tostring(e))
    end)
  end

  it('checks labels given to grid_energy, in C too', function()
    local ok, e = pcall(crf.grid_energy, { probs = P, labels = lumen.full({ 5, 5 }, 3):to('i64') })
    assert.is_false(ok)
    assert.is_truthy(tostring(e):find('lumen.crf.grid_energy: label 3 at flat index 0, expected 0 to 2', 1, true), tostring(e))
    ok, e = pcall(crf.grid_energy, { probs = P, labels = lumen.zeros(4, 5):to('i64') })
    assert.is_truthy(tostring(e):find('lumen.crf.grid_energy: labels are 4x5, expected 5x5', 1, true), tostring(e))
    local p = lumen.load_plugin('crf')
    ok, e = pcall(p.crf_grid, P, lumen.zeros(0, 5, 5), 2, 4, 1, -1, 0, 20, 1, 1)
    assert.is_truthy(tostring(e):find('crf_grid: graph cut solves two labels exactly, these costs have 3', 1, true), tostring(e))
    ok, e = pcall(p.crf_grid, P, lumen.zeros(0, 5, 5), 2, 5, 1, -1, 1, 20, 1, 1)
    assert.is_truthy(tostring(e):find('crf_grid: neighbours is 5, expected 4 or 8 in 2-D', 1, true), tostring(e))
    ok, e = pcall(p.crf_grid, P / 0, lumen.zeros(0, 5, 5), 2, 4, 1, -1, 1, 20, 1, 1)
    assert.is_truthy(tostring(e):find('crf_grid: unary costs hold', 1, true), tostring(e))
  end)
end)
