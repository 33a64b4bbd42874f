-- micro.lua: the lumen side of the benchmarks that bench/run.sh runs.
--   luajit bench/micro.lua [case ...]          (no cases: all of them)
-- Prints one line per case:
--   <case> <median seconds> <timed iterations>
--   <case> NA <reason>                          (e.g. a function not built yet)
-- bench/micro_torch.py prints the same for PyTorch; run.sh pairs the lines
-- by case name, so a new workload is a new entry in both registries.
local lumen = require 'lumen'

-- lumen.clock: the monotonic clock (declaring clock_gettime here again with
-- another struct would clash with lumen's declaration)
local now = lumen.clock

local WARMUP = tonumber(os.getenv('BENCH_WARMUP') or 2)
local MIN_ITERS, MAX_ITERS = 5, 100
local MIN_TIME = tonumber(os.getenv('BENCH_MIN_TIME') or 0.5) -- seconds of timed work per case

lumen.set_num_threads(tonumber(os.getenv('BENCH_THREADS') or 2))
local has_nn, nn = pcall(require, 'lumen.nn')
local F = has_nn and nn.F or nil

-- Frees a result at once, as PyTorch's refcounting does, so the garbage
-- collector never runs inside a timed region.
local function release(r)
  if lumen.is_tensor(r) then r:free() end
end

-- Median seconds of fn() over the timed iterations, after warm-up.
local function measure(fn)
  for _ = 1, WARMUP do release(fn()) end
  collectgarbage('collect')
  local times, total = {}, 0
  while (#times < MIN_ITERS or total < MIN_TIME) and #times < MAX_ITERS do
    local t0 = now()
    local r = fn()
    local dt = now() - t0
    release(r)
    times[#times + 1] = dt
    total = total + dt
  end
  table.sort(times)
  local n = #times
  local med = n % 2 == 1 and times[(n + 1) / 2] or (times[n / 2] + times[n / 2 + 1]) / 2
  return med, n
end

local N = 2 ^ 24

-- 8 x c x 128 x 128 logits, labels 8 x 128 x 128, probabilities of the logits' shape
local function loss_inputs(c, grad)
  local x = lumen.linspace(-3, 3, 8 * c * 128 * 128):reshape(8, c, 128, 128)
  if grad then x:requires_grad_() end
  return { x = x, t = lumen.linspace(-1, 1, 8 * 128 * 128):gt(0):to('i64'):reshape(8, 128, 128),
    p = lumen.linspace(0, 1, 8 * c * 128 * 128):reshape(8, c, 128, 128) }
end
-- Each case: needs (lumen functions it calls), setup() -> state, run(state).
-- Inputs are deterministic (linspace), the same as micro_torch.py builds.
local cases = {
  { name = 'matmul_1024_f32', needs = { 'matmul' },
    setup = function()
      return { a = lumen.linspace(-1, 1, 1024 * 1024):reshape(1024, 1024),
        b = lumen.linspace(1, -1, 1024 * 1024):reshape(1024, 1024) }
    end,
    run = function(s) return lumen.matmul(s.a, s.b) end },
  { name = 'add_2^24_f32', needs = { 'add' },
    setup = function() return { a = lumen.linspace(-3, 3, N), b = lumen.linspace(3, -3, N) } end,
    run = function(s) return lumen.add(s.a, s.b) end },
  { name = 'exp_2^24_f32', needs = { 'exp' },
    setup = function() return { a = lumen.linspace(-3, 3, N) } end,
    run = function(s) return lumen.exp(s.a) end },
  { name = 'sum_2^24_f32', needs = { 'sum' },
    setup = function() return { a = lumen.linspace(-3, 3, N) } end,
    run = function(s) return lumen.sum(s.a) end },
  { name = 'transpose_copy_4096_f32', needs = { 'contiguous', 'transpose' },
    setup = function() return { a = lumen.linspace(-3, 3, 4096 * 4096):reshape(4096, 4096) } end,
    run = function(s) return s.a:transpose(0, 1):contiguous() end },
  -- BLAS right after an OpenMP loop: shows OpenMP threads spinning while
  -- OpenBLAS's threads want the cores (OMP_WAIT_POLICY).
  { name = 'matmul_exp_512_f32', needs = { 'matmul', 'exp' },
    setup = function()
      return { a = lumen.linspace(-1, 1, 512 * 512):reshape(512, 512),
        b = lumen.linspace(1, -1, 512 * 512):reshape(512, 512) }
    end,
    run = function(s)
      local m = lumen.matmul(s.a, s.b)
      local r = lumen.exp(m)
      m:free()
      return r
    end },
  -- Convolutions at the benchmark networks' shapes (nn.F; needs 'F.x').
  { name = 'conv2d_64x32x32x32_to64_f32', needs = { 'F.conv2d' },
    setup = function()
      return { x = lumen.linspace(-1, 1, 64 * 32 * 32 * 32):reshape(64, 32, 32, 32),
        w = lumen.linspace(-0.1, 0.1, 64 * 32 * 9):reshape(64, 32, 3, 3), b = lumen.linspace(-1, 1, 64) }
    end,
    run = function(s) return F.conv2d(s.x, s.w, s.b, { padding = 1 }) end },
  { name = 'conv3d_2x32x32^3_to32_f32', needs = { 'F.conv3d' },
    setup = function()
      return { x = lumen.linspace(-1, 1, 2 * 32 * 32 ^ 3):reshape(2, 32, 32, 32, 32),
        w = lumen.linspace(-0.1, 0.1, 32 * 32 * 27):reshape(32, 32, 3, 3, 3), b = lumen.linspace(-1, 1, 32) }
    end,
    run = function(s) return F.conv3d(s.x, s.w, s.b, { padding = 1 }) end },
  { name = 'conv_transpose2d_8x256x16x16_k2s2_f32', needs = { 'F.conv_transpose2d' },
    setup = function()
      return { x = lumen.linspace(-1, 1, 8 * 256 * 16 * 16):reshape(8, 256, 16, 16),
        w = lumen.linspace(-0.1, 0.1, 256 * 128 * 4):reshape(256, 128, 2, 2), b = lumen.linspace(-1, 1, 128) }
    end,
    run = function(s) return F.conv_transpose2d(s.x, s.w, s.b, { stride = 2 }) end },
  -- forward and backward (grad of input, weight and bias)
  { name = 'conv2d_train_64x32x32x32_to64_f32', needs = { 'F.conv2d' },
    setup = function()
      return { x = lumen.linspace(-1, 1, 64 * 32 * 32 * 32):reshape(64, 32, 32, 32):requires_grad_(),
        w = lumen.linspace(-0.1, 0.1, 64 * 32 * 9):reshape(64, 32, 3, 3):requires_grad_(),
        b = lumen.linspace(-1, 1, 64):requires_grad_(), g = lumen.linspace(-1, 1, 64 * 64 * 32 * 32):reshape(64, 64, 32, 32) }
    end,
    run = function(s)
      s.x.grad, s.w.grad, s.b.grad = nil, nil, nil
      local y = F.conv2d(s.x, s.w, s.b, { padding = 1 })
      y:backward(s.g)
      y:free()
    end },
  -- the unet benchmark's loss: fused cross-entropy over 8 x 2 x 128 x 128
  { name = 'cross_entropy_8x2x128x128_f32', needs = {},
    setup = function() return loss_inputs(2) end,
    run = function(s) return require('lumen.nn').F.cross_entropy(s.x, s.t) end },
  { name = 'cross_entropy_grad_8x2x128x128_f32', needs = {},
    setup = function() return loss_inputs(2, true) end,
    run = function(s)
      local l = require('lumen.nn').F.cross_entropy(s.x, s.t)
      l:backward()
      s.x.grad = nil
      return l
    end },
  { name = 'bce_logits_grad_8x1x128x128_f32', needs = {},
    setup = function() return loss_inputs(1, true) end,
    run = function(s)
      local l = require('lumen.nn').F.binary_cross_entropy_with_logits(s.x, s.p)
      l:backward()
      s.x.grad = nil
      return l
    end },
}

-- A training step of a norm or softmax layer: forward with autograd, then
-- backward from a fixed gradient; returns the input leaf (its gradient
-- goes with it).
local function layer_step(shape, fn)
  return {
    setup = function()
      local n = 1
      for _, v in ipairs(shape) do n = n * v end
      local c = shape[2]
      return { x = lumen.linspace(-3, 3, n):reshape(shape), g = lumen.linspace(1, -1, n):reshape(shape),
        w = lumen.linspace(0.5, 1.5, c):requires_grad_(), b = lumen.linspace(-0.5, 0.5, c):requires_grad_(),
        rm = lumen.zeros(c), rv = lumen.ones(c) }
    end,
    run = function(s)
      local x = s.x:detach():requires_grad_()
      local y = fn(require('lumen.nn').F, s, x)
      y:backward(s.g)
      y:free()
      return x
    end }
end
for _, c in ipairs {
  { 'batch_norm_train_8x32x128x128_f32', { 8, 32, 128, 128 }, function(F, s, x) return F.batch_norm(x, s.rm, s.rv, s.w, s.b, true) end },
  { 'batch_norm_train_2x16x64^3_f32', { 2, 16, 64, 64, 64 }, function(F, s, x) return F.batch_norm(x, s.rm, s.rv, s.w, s.b, true) end },
  { 'group_norm_8g_8x32x128x128_f32', { 8, 32, 128, 128 }, function(F, s, x) return F.group_norm(x, 8, s.w, s.b) end },
  { 'softmax_dim1_2x16x64^3_f32', { 2, 16, 64, 64, 64 }, function(F, s, x) return F.softmax(x, 1) end },
} do
  local case = layer_step(c[2], c[3])
  case.name, case.needs = c[1], {}
  cases[#cases + 1] = case
end

local wanted = {}
for _, a in ipairs(arg) do wanted[a] = true end
for _, c in ipairs(cases) do
  if next(wanted) == nil or wanted[c.name] then
    local missing
    for _, f in ipairs(c.needs) do
      local fn = f:match('^F%.') and F and F[f:sub(3)] or lumen[f]
      if fn == nil then missing = 'lumen.' .. f .. ' not available' break end
    end
    if missing then
      print(c.name .. ' NA ' .. missing)
    else
      local ok, err = pcall(function()
        local s = c.setup()
        local med, n = measure(function() return c.run(s) end)
        print(string.format('%s %.9f %d', c.name, med, n))
        for _, t in pairs(s) do release(t) end
      end)
      if not ok then print(c.name .. ' NA failed: ' .. tostring(err):gsub('\n', ' ')) end
    end
    io.stdout:flush()
  end
end
