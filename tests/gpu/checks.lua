-- tests/gpu/checks.lua: the checks tests/gpu/run.sh runs on a GPU machine,
-- through a bundle's bin/lumen. Each check prints as it goes; a table of
-- results comes last, then "N passed, N failed, N warned", and the exit
-- status is 1 when a check failed.
--
--   --fake=PATH   use the fake device of tests/plugin/fake_device.c instead
--                 of CUDA (checks the script itself on a machine without a GPU)
--   --mb=N        size of the bandwidth transfers (default 256)
--   --scale=N     size factor of the op table's tensors (default 8)
--   --only=TEXT   run only the checks whose names contain TEXT
--
-- Present: discovery (devices, CUDA versions, cuBLAS and cuDNN), the bundle
-- loading its own libraries, exact transfers of every dtype and layout,
-- strided read-back, autograd through transfers, modules moving, where ops
-- run (results and gradients on the device, two devices refused, ops
-- without device kernels refusing), the op table of tests/gpu/op_table.lua
-- against the CPU (every op with device kernels, forward and backward,
-- printed as a table), the device allocator (cache reuse, stats back to
-- baseline, empty_cache returning memory), transfer bandwidth, kernel
-- speed (elementwise and reduction bandwidth, GEMM throughput), random
-- numbers drawn on the device (the CPU's for a seed), a small training
-- step (linear layers, gelu, dropout, cross_entropy, clip_grad_norm,
-- AdamW) on both devices, LeNet trained for a few steps on both devices
-- from the same weights (losses and gradients compared), the bench
-- workloads' training steps on the device (ms per step, or the op a
-- workload still lacks there), convolutions through cuDNN (when found) and
-- im2col (LUMEN_CUDNN=0) against the CPU, timed, mixed precision (autocast
-- bf16 and f16 matmul, linear and convolutions against the CPU's emulation,
-- a bf16 GEMM's speed, LeNet under autocast with a GradScaler on both
-- devices). To come: the workloads beside PyTorch (docs/ARCHITECTURE.md).
local opts = ...
local ffi = require 'ffi'
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local core = lumen.core

local results = {}
local function record(name, status, detail, seconds)
  results[#results + 1] = { name = name, status = status, detail = detail or '', seconds = seconds or 0 }
  print(string.format('[%s] %s: %s', status, name, detail or ''))
  io.stdout:flush()
end

-- check(name, fn): fn returns a detail string (and 'WARN' to warn); an
-- error fails the check.
local function check(name, fn)
  if opts.only and not name:find(opts.only, 1, true) then return true end
  local t0 = lumen.clock()
  local ok, detail, status = xpcall(fn, function(e) return debug.traceback(tostring(e), 2) end)
  local dt = lumen.clock() - t0
  if ok then record(name, status or 'PASS', detail, dt) else record(name, 'FAIL', tostring(detail), dt) end
  return ok
end

local function same_bytes(a, b)
  if a:dtype() ~= b:dtype() then return false, 'dtype ' .. a:dtype() .. ' vs ' .. b:dtype() end
  local sa, sb = table.concat(a:size(), 'x'), table.concat(b:size(), 'x')
  if sa ~= sb then return false, 'shape ' .. sa .. ' vs ' .. sb end
  local ca, cb = a:cpu():contiguous(), b:cpu():contiguous()
  local n = ca:numel() * ffi.sizeof(core.ctypes[core.info(ca).dtype]:sub(1, -2))
  return ffi.string(ca:data_ptr(), n) == ffi.string(cb:data_ptr(), n), 'values differ'
end

local function random_of(dtype, ...)
  local x = lumen.randn(...)
  if dtype == 'f32' or dtype == 'f64' then return x:to(dtype) end
  if dtype == 'bool' then return x:gt(0) end
  return (x * 50):to(dtype)
end

local function mib(b) return string.format('%.1f MiB', b / 2 ^ 20) end

local here = (debug.getinfo(1, 'S').source:match('^@(.*)/[^/]*$')) or 'tests/gpu'
local op_table = dofile(here .. '/op_table.lua')

print('== lumen GPU checks ==')
if opts.fake then
  if opts.fake:sub(1, 1) ~= '/' then opts.fake = os.getenv('PWD') .. '/' .. opts.fake end
  pcall(ffi.cdef, 'const lm_backend *lm_fake_backend(void);')
  local fake = ffi.load(opts.fake)
  lumen.cuda.use_backend(fake.lm_fake_backend(), 'fake device (' .. opts.fake .. ')', fake)
end

-- 1. discovery
local available = check('CUDA in use', function()
  local s = lumen.cuda.status()
  if not s.available then error('not available: ' .. tostring(s.reason), 0) end
  local function v(x) return x and x > 0 and string.format('%d.%d', math.floor(x / 1000), math.floor(x % 1000 / 10)) or '?' end
  return string.format('%s; CUDA built %s, runtime %s, driver %s', table.concat(s.devices, '; '), v(s.built_with),
    v(s.runtime), v(s.driver))
end)

check('cuBLAS and cuDNN found', function()
  local warn, parts = false, {}
  for _, r in ipairs(lumen.cuda.libraries()) do
    if r.found then
      parts[#parts + 1] = string.format('%s %s at %s', r.name, r.version or '?', r.found)
    else
      warn = true
      parts[#parts + 1] = r.name .. ' not found' .. (#r.others > 0 and (' (other versions: ' .. table.concat(r.others, ', ') .. ')') or '')
    end
  end
  return table.concat(parts, '; '), warn and 'WARN' or nil
end)

-- 2. the bundle loads its own libraries (only the C library, the C++
-- runtime and the NVIDIA stack come from the system)
check('bundle uses its own libraries', function()
  local root = core.root
  local outside, seen, n = {}, {}, 0
  for l in io.lines('/proc/self/maps') do
    local p = l:match('%s(/%S+%.so[%.%d]*)$')
    if p and not seen[p] then
      seen[p], n = true, n + 1
      local name = p:match('[^/]*$')
      local system = name:match('^ld%-linux') or name:match('^lib[cm]%.so') or name:match('^libdl%.')
        or name:match('^libpthread%.') or name:match('^librt%.') or name:match('^libstdc%+%+')
        or name:match('^libgcc_s') or name:match('^libcuda%.') or name:match('^libnvidia')
        or name:match('^libcublas') or name:match('^libcudnn')
      if p:sub(1, #root + 1) ~= root .. '/' and not system and p ~= opts.fake then outside[p] = true end
    end
  end
  local list = {}
  for p in pairs(outside) do list[#list + 1] = p end
  if #list > 0 then error('loaded from outside ' .. root .. ': ' .. table.concat(list, ', '), 0) end
  return string.format('%d libraries mapped, none from outside %s but the system and NVIDIA ones', n, root)
end)

if not available then
  record('device checks', 'FAIL', 'skipped: CUDA is not in use')
else
  -- 3. transfers
  check('transfers round-trip exactly', function()
    local n = 0
    for _, dt in ipairs { 'f32', 'f64', 'i32', 'i64', 'u8', 'bool' } do
      local x = random_of(dt, 6, 7, 9)
      local views = { x, x:transpose(0, 2), x:slice(1, 1, 6, 2), x:select(2, 4), x:narrow(0, 2, 3):permute { 2, 0, 1 },
        x:select(0, 0):select(0, 0):select(0, 0), x:slice(0, 0, 0), x:select(1, 2):unsqueeze(0):expand(4, 6, 9),
        random_of(dt, 1000, 1000), random_of(dt, 3000, 1111):t() }
      for k, v in ipairs(views) do
        local d = v:cuda()
        assert(d:device() == 'cuda' and d:is_contiguous(), dt .. ' view ' .. k .. ': not a contiguous device tensor')
        local ok, why = same_bytes(v, d:cpu())
        assert(ok, dt .. ' view ' .. k .. ': ' .. why)
        if d:dim() >= 2 then -- a strided view of a device tensor: gathered on the device
          ok, why = same_bytes(v:transpose(0, 1), d:transpose(0, 1):cpu())
          assert(ok, dt .. ' view ' .. k .. ' transposed on the device: ' .. why)
          n = n + 1
        end
        n = n + 1
      end
    end
    return n .. ' cases, 6 dtypes, bit-exact'
  end)

  check('autograd, modules via transfers', function()
    local x = lumen.randn(3, 4, 'f64'):requires_grad_()
    local z = x:cuda():cpu() * 2
    z:sum():backward()
    assert(same_bytes(lumen.full({ 3, 4 }, 2, 'f64'), x.grad), 'gradient through to(cuda)')
    local m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    local w = m:get(0).weight:clone()
    m:to('cuda')
    for _, p in ipairs(m:parameters()) do assert(p:device() == 'cuda' and p.requires_grad and p.is_leaf) end
    assert(m:get(1).num_batches_tracked:device() == 'cuda')
    assert(same_bytes(w, m:get(0).weight), 'weights changed on the way')
    m:to('cpu')
    assert(same_bytes(w, m:get(0).weight), 'weights changed on the way back')
    return 'x:cuda():cpu() backward, nn.Sequential to cuda and back'
  end)

  check('where ops run', function()
    local x = lumen.randn(64, 32):cuda():requires_grad_()
    local w = lumen.randn(32, 16):cuda():requires_grad_()
    local y = (x:matmul(w):tanh() * 2):sum(1)
    assert(y:device() == 'cuda', 'the result is on ' .. y:device())
    y:sum():backward()
    assert(x.grad:device() == 'cuda' and w.grad:device() == 'cuda', 'gradients are not on the device')
    local a = lumen.randn(2, 3)
    local ok, e = pcall(function() local r = a + a:cuda(); return r end)
    assert(not ok and tostring(e):find('lumen.add: inputs on cpu and cuda', 1, true), 'two devices: ' .. tostring(e))
    local ok2, e2 = pcall(function() local r = require('lumen.morph').dilate(a:gt(0):cuda(), 1); return r end)
    assert(not ok2 and tostring(e2):find('on cuda', 1, true), 'an op without device kernels: ' .. tostring(e2))
    return 'results and gradients on cuda; ' .. tostring(e):match('lumen%.add: [^(]*') .. 'refused; morph.dilate refused'
  end)

  -- Philox on the device: a seed and offset give the CPU's numbers
  check('random numbers on the device', function()
    local function draws(device)
      lumen.manual_seed(31337)
      local o = { device = device }
      local r = { lumen.rand(1000003, o), lumen.randint(-7, 100, { 4099 }, o), lumen.empty(5000, o):bernoulli_(0.3),
        lumen.rand(17, { dtype = 'f64', device = device }) }
      for i, t in ipairs(r) do r[i] = t:cpu() end
      lumen.manual_seed(5)
      r[#r + 1] = lumen.randn(100000, { dtype = 'f64', device = device }):cpu()
      return r
    end
    local c, g = draws(nil), draws('cuda')
    for i = 1, 4 do assert(c[i]:eq(g[i]):all():item(), 'draw ' .. i .. ' differs from the CPU') end
    local e = (c[5] - g[5]):abs():max():item()
    assert(e < 1e-13, 'normals differ by ' .. e)
    return string.format('uniform, randint, bernoulli bit for bit; normals within %.1e', e)
  end)

  -- a training step on the device: conv-free network, cross_entropy, Adam
  check('a training step on the device', function()
    local function run(device)
      lumen.manual_seed(11)
      local m = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 10))
      if device then m:to(device) end
      local opt = require('lumen.optim').AdamW(m:parameters(), { lr = 1e-2 })
      local x = lumen.randn(128, 32, { device = device })
      local t = lumen.randint(0, 10, { 128 }, { device = device })
      local loss
      for _ = 1, 5 do
        opt:zero_grad()
        loss = nn.F.cross_entropy(nn.F.dropout(m(x), 0.1), t, { label_smoothing = 0.1 })
        loss:backward()
        require('lumen.optim').clip_grad_norm_(m:parameters(), 1.0)
        opt:step()
      end
      return loss:item(), m:get(0).weight:cpu()
    end
    local lc, wc = run(nil)
    local lg, wg = run('cuda')
    local e = (wc - wg):abs():max():item()
    assert(math.abs(lc - lg) < 1e-4 * (1 + math.abs(lc)) and e < 1e-4, string.format('loss %g vs %g, weights differ by %g', lc, lg, e))
    return string.format('5 AdamW steps: loss %.6f (cpu %.6f), weights within %.1e', lg, lc, e)
  end)

  -- every op with device kernels against the CPU, forward and backward
  local op_lines
  check('ops against the CPU', function()
    local records = op_table.run_all('cuda', tonumber(opts.scale) or 8)
    op_lines = op_table.report(records)
    local bad, worst32, worst64 = {}, 0, 0
    for _, r in ipairs(records) do
      if not r.ok then bad[#bad + 1] = r.name .. ' ' .. r.dtype .. ': ' .. tostring(r.why) end
      local e = math.max(r.fwd or 0, r.bwd or 0)
      if r.dtype == 'f32' then worst32 = math.max(worst32, e) elseif r.dtype == 'f64' then worst64 = math.max(worst64, e) end
    end
    if #bad > 0 then error(#bad .. ' of ' .. #records .. ' cases differ: ' .. table.concat(bad, '; '), 0) end
    return string.format('%d cases agree (largest error f32 %.1e, f64 %.1e; integers exact)', #records, worst32, worst64)
  end)
  if op_lines then
    print('')
    print(table.concat(op_lines, '\n'))
    print('')
  end

  -- convolutions through cuDNN (when found) and through im2col
  -- (LUMEN_CUDNN=0), both against the CPU, forward and backward, with
  -- the time of each path
  check('conv: cuDNN, im2col and the CPU', function()
    pcall(ffi.cdef, 'int setenv(const char *name, const char *value, int overwrite); int unsetenv(const char *name);')
    local cudnn = false
    for _, r in ipairs(lumen.cuda.libraries()) do
      if r.name:match('cudnn') and r.found and not opts.fake then cudnn = true end
    end
    local s = opts.fake and 1 or 4
    local cases = {
      { 'conv2d', { 8, 16, 16 * s, 16 * s }, { 32, 16, 3, 3 }, { padding = 1 } },
      { 'conv2d', { 4, 8, 12 * s, 10 * s }, { 8, 4, 3, 3 }, { stride = 2, padding = 1, dilation = 2, groups = 2 } },
      { 'conv3d', { 2, 4, 6 * s, 8, 8 }, { 8, 4, 3, 3, 3 }, { padding = 1 } },
      { 'conv_transpose2d', { 4, 16, 8 * s, 8 * s }, { 16, 8, 2, 2 }, { stride = 2 } },
    }
    local old = os.getenv('LUMEN_CUDNN')
    local function run(case, dev, dtype)
      lumen.manual_seed(5)
      local x = lumen.randn(case[2]):to(dtype):to(dev):requires_grad_()
      local w = (lumen.randn(case[3]) * 0.1):to(dtype):to(dev):requires_grad_()
      local y = nn.F[case[1]](x, w, nil, case[4])
      lumen.manual_seed(6)
      local probe = lumen.randn(y:size()):to(dtype):to(dev)
      local t0 = lumen.clock();
      (y * probe):sum():backward()
      if dev ~= 'cpu' then lumen.cuda.synchronize() end
      return { y:detach():cpu(), x.grad:cpu(), w.grad:cpu() }, lumen.clock() - t0
    end
    local function err(a, b)
      local e = 0
      for i = 1, 3 do e = math.max(e, (a[i]:to('f64') - b[i]:to('f64')):abs():max():item() / (1 + b[i]:abs():max():item())) end
      return e
    end
    local worst, lines = { lib = 0, im2col = 0 }, {}
    local ok, e = pcall(function()
      for _, case in ipairs(cases) do
        for _, dt in ipairs({ 'f32', 'f64' }) do
          local ref = run(case, 'cpu', dt)
          if old then ffi.C.unsetenv('LUMEN_CUDNN') end
          run(case, 'cuda', dt) -- warm up (algorithm choice)
          local lib, tl = run(case, 'cuda', dt)
          ffi.C.setenv('LUMEN_CUDNN', '0', 1)
          local im, ti = run(case, 'cuda', dt)
          if old then ffi.C.setenv('LUMEN_CUDNN', old, 1) else ffi.C.unsetenv('LUMEN_CUDNN') end
          local el, ei = err(lib, ref), err(im, ref)
          local tol = dt == 'f32' and 2e-4 or 1e-11
          assert(el <= tol and ei <= tol, string.format('%s %s: error %.1e (default path), %.1e (im2col)', case[1], dt, el, ei))
          worst.lib, worst.im2col = math.max(worst.lib, el / tol), math.max(worst.im2col, ei / tol)
          if dt == 'f32' then lines[#lines + 1] = string.format('%s %.2f/%.2f ms', case[1], 1000 * tl, 1000 * ti) end
        end
      end
    end)
    if old then ffi.C.setenv('LUMEN_CUDNN', old, 1) else ffi.C.unsetenv('LUMEN_CUDNN') end
    if not ok then error(e, 0) end
    return string.format('%s; errors within %.2f (default) and %.2f (im2col) of the thresholds; f32 step default/im2col: %s',
      cudnn and 'cuDNN found (the default path)' or 'cuDNN not found: both paths are im2col', worst.lib, worst.im2col,
      table.concat(lines, ', ')), (not cudnn) and 'WARN' or nil
  end)

  -- LeNet trained on both devices from the same weights and inputs (bench
  -- workload, full size on a GPU): losses step by step and the first step's
  -- gradients. With the workload's loss (cross_entropy) when the device
  -- has it, else a probe loss (sum of the logits times fixed weights), warned.
  local train = dofile(here .. '/train_steps.lua')
  local root = here .. '/../..'
  check('LeNet training, cuda vs cpu', function()
    local o = { steps = opts.fake and 1 or 5, small = opts.fake ~= nil, root = root }
    local ok, r = pcall(train.compare, 'lenet', 'cuda', o)
    local status
    if not ok and tostring(r):find('runs on the CPU only so far', 1, true) then
      status, o.loss = 'WARN', 'probe'
      r = train.compare('lenet', 'cuda', o)
    elseif not ok then
      error(r, 0)
    end
    local lines = {}
    for i = 1, #r.cpu do lines[i] = string.format('%.6g/%.6g', r.cpu[i], r.dev[i]) end
    assert(r.loss_err < 1e-4 and r.grad_err < 1e-3, string.format('losses cpu/cuda %s: error %.2e, gradients %.2e (%s)',
      table.concat(lines, ' '), r.loss_err, r.grad_err, tostring(r.worst_grad)))
    return string.format('%d steps%s, losses cpu/cuda %s (error %.1e), first gradients error %.1e; %.3f s vs %.3f s',
      #r.cpu, o.loss == 'probe' and ' (probe loss: no cross_entropy on the device yet)' or '', table.concat(lines, ' '),
      r.loss_err, r.grad_err, r.seconds.cpu, r.seconds.dev), status
  end)

  -- mixed precision: autocast's products and convolutions on the device
  -- (16-bit copies, cublasGemmStridedBatchedEx on tensor cores) against the
  -- CPU's emulation (the same rounded operands, f32 BLAS), forward and
  -- backward, by the largest |cuda - cpu| / (1 + |cpu|) per dtype; then a
  -- bf16 GEMM's speed beside f32's
  check('autocast bf16/f16, cuda vs cpu', function()
    local s = opts.fake and 1 or tonumber(opts.scale) or 8
    local tol = { bf16 = 1e-2, f16 = 1e-3 }
    local cases = {
      { 'matmul', function(a, b) return lumen.matmul(a, b) end, { { 4, 16 * s, 24 * s }, { 24 * s, 8 * s } } },
      { 'linear', function(x, w, b) return nn.F.linear(x, w, b) end, { { 16 * s, 32 }, { 24, 32 }, { 24 } } },
      { 'conv2d', function(x, w, b) return nn.F.conv2d(x, w, b, { padding = 1 }) end,
        { { 2, 8, 8 * s, 8 * s }, { 16, 8, 3, 3 }, { 16 } } },
      { 'conv3d', function(x, w) return nn.F.conv3d(x, w, nil, { stride = 2, padding = 1, groups = 2 }) end,
        { { 1, 4, 4 * s, 8, 8 }, { 8, 2, 3, 3, 3 } } },
      { 'conv_transpose2d', function(x, w) return nn.F.conv_transpose2d(x, w, nil, { stride = 2 }) end,
        { { 2, 8, 4 * s, 4 * s }, { 8, 4, 2, 2 } } },
    }
    local function run(case, dev, dt)
      lumen.manual_seed(11)
      local leaves = {}
      for i, shape in ipairs(case[3]) do leaves[i] = lumen.randn(shape):to(dev):requires_grad_() end
      local y = lumen.autocast(dt, case[2], unpack(leaves))
      lumen.manual_seed(12)
      y:backward(lumen.randn(y:size()):to(dev))
      local r = { y:detach():cpu() }
      for i, x in ipairs(leaves) do r[i + 1] = x.grad:cpu() end
      return r
    end
    local parts, worst = {}, {}
    for _, dt in ipairs { 'bf16', 'f16' } do
      worst[dt] = 0
      for _, case in ipairs(cases) do
        local ref, got = run(case, 'cpu', dt), run(case, 'cuda', dt)
        for i = 1, #ref do
          local e = (got[i]:to('f64') - ref[i]:to('f64')):abs():max():item() / (1 + ref[i]:abs():max():item())
          assert(e <= tol[dt], string.format('%s %s %s: error %.2e, threshold %.0e', case[1], dt,
            i == 1 and 'forward' or 'gradient ' .. (i - 1), e, tol[dt]))
          worst[dt] = math.max(worst[dt], e)
        end
      end
      parts[#parts + 1] = string.format('%s largest error %.1e', dt, worst[dt])
    end
    if not opts.fake then
      local k = 4096
      local m = lumen.randn(k, k):cuda()
      local function time(fn)
        fn()
        lumen.cuda.synchronize()
        local t0 = lumen.clock()
        for _ = 1, 5 do fn() end
        lumen.cuda.synchronize()
        return (lumen.clock() - t0) / 5
      end
      local t32 = time(function() return m:matmul(m) end)
      local t16 = time(function() return lumen.autocast('bf16', lumen.matmul, m, m) end)
      parts[#parts + 1] = string.format('%d^2 GEMM f32 %.1f, bf16 autocast %.1f TFLOP/s', k, 2 * k ^ 3 / t32 / 1e12,
        2 * k ^ 3 / t16 / 1e12)
    end
    return string.format('%d cases x 2 dtypes, forward and gradients; %s', #cases, table.concat(parts, ', '))
  end)

  -- LeNet under autocast with a GradScaler on both devices: same losses,
  -- same scale decisions. The gradients get 5 times the loss's threshold:
  -- an activation that lies near a tie of the 16-bit grid on one device
  -- (f32 sums in another order) rounds to the neighbouring value there,
  -- one 16-bit ulp (bf16 2^-8, f16 2^-11) that the later layers carry on
  -- (the fake device: bf16 3.0e-3, f16 1.1e-3 after 2 steps)
  check('LeNet amp + GradScaler, cuda/cpu', function()
    local parts = {}
    for _, dt in ipairs { 'bf16', 'f16' } do
      local o = { steps = opts.fake and 2 or 5, small = opts.fake ~= nil, root = root, amp = dt }
      local r = train.compare('lenet', 'cuda', o)
      local tol = dt == 'bf16' and 1e-2 or 1e-3
      local sc, sd = table.concat(r.scales.cpu, ' '), table.concat(r.scales.dev, ' ')
      assert(sc == sd, string.format('%s: scales cpu %s, cuda %s', dt, sc, sd))
      assert(r.loss_err < tol and r.grad_err < 5 * tol, string.format('%s: losses error %.2e, scaled gradients %.2e (%s)', dt,
        r.loss_err, r.grad_err, tostring(r.worst_grad)))
      parts[#parts + 1] = string.format('%s: %d steps, loss error %.1e, gradients %.1e, scales %s', dt, #r.cpu,
        r.loss_err, r.grad_err, sc)
    end
    return table.concat(parts, '; ')
  end)

  -- the bench workloads' training steps on the device (informative: a
  -- workload whose ops the device lacks is listed as such)
  check('workload steps on cuda', function()
    local W = dofile(root .. '/bench/workloads.lua')
    local parts, missing = {}, {}
    for _, name in ipairs(W.names) do
      local ok, err = pcall(function()
        local steps = opts.fake and 1 or 3
        local _, _, secs = train.train(name, 'cuda', { steps = 1, small = opts.fake ~= nil, root = root }) -- warm up
        _, _, secs = train.train(name, 'cuda', { steps = steps, small = opts.fake ~= nil, root = root })
        parts[#parts + 1] = string.format('%s %.1f ms/step', name, 1000 * secs / steps)
      end)
      if not ok then missing[#missing + 1] = name .. ' (' .. (tostring(err):match('lumen%.[%w_]+') or tostring(err)) .. ')' end
    end
    local detail = table.concat(parts, ', ')
    if #missing > 0 then return detail .. (detail ~= '' and '; ' or '') .. 'not yet on the device: ' .. table.concat(missing, ', '), 'WARN' end
    return detail
  end)

  -- 4. the allocator
  check('device allocator', function()
    collectgarbage('collect')
    lumen.empty_cache('cuda')
    local base = lumen.memory('cuda')
    local free0 = lumen.cuda.mem_info()
    local sizes = { 1, 100, 4096, 100000, 2 ^ 20, 3 * (2 ^ 20) + 5, 50 * (2 ^ 20) }
    local host = {}
    for i, n in ipairs(sizes) do host[i] = lumen.zeros(math.floor(n / 4) + 1) end
    local sys_after_first
    for pass = 1, 20 do
      local held = {}
      for i = 1, #sizes do held[i] = host[i]:cuda() end
      for i = 1, #sizes do held[i]:free() end
      if pass == 1 then sys_after_first = lumen.memory('cuda').system_allocs end
    end
    local m = lumen.memory('cuda')
    assert(m.live == base.live, string.format('live %d after freeing, baseline %d', m.live, base.live))
    assert(m.system_allocs == sys_after_first,
      string.format('the cache missed: %d device allocations after pass 1, %d after 20', sys_after_first, m.system_allocs))
    assert(m.allocs - base.allocs == 20 * #sizes, 'allocations served: ' .. (m.allocs - base.allocs))
    assert(m.cached > 0)
    local peak = m.peak
    lumen.empty_cache('cuda')
    m = lumen.memory('cuda')
    assert(m.cached == 0, 'cached after empty_cache: ' .. m.cached)
    local free1 = lumen.cuda.mem_info()
    assert(free1 >= free0 - 8 * 2 ^ 20, string.format('device free memory %s before, %s after empty_cache', mib(free0), mib(free1)))
    return string.format('20 passes of %d sizes: %d device allocations, live back to %s, peak %s, cache emptied',
      #sizes, sys_after_first - base.system_allocs, mib(base.live), mib(peak))
  end)

  -- 5. bandwidth (host memory is pageable here: staged through the pinned buffers)
  check('transfer bandwidth', function()
    local mb = tonumber(opts.mb) or 256
    local x = lumen.randn(math.floor(mb * 2 ^ 20 / 4))
    local d = x:cuda() -- warm up
    d:free()
    lumen.cuda.synchronize()
    local reps, t0 = 5, lumen.clock()
    for _ = 1, reps do x:cuda():free() end
    lumen.cuda.synchronize()
    local h2d = reps * mb / 1024 / (lumen.clock() - t0)
    d = x:cuda()
    t0 = lumen.clock()
    for _ = 1, reps do d:cpu():free() end
    local d2h = reps * mb / 1024 / (lumen.clock() - t0)
    d:free()
    return string.format('%d MiB f32: host to device %.1f GB/s, device to host %.1f GB/s', mb, h2d * 1.074, d2h * 1.074)
  end)
end

-- 6. kernel speed: informative, warns only when a kernel fails to run
if available then
  check('kernel speed', function()
    local function time(reps, fn)
      fn()
      lumen.cuda.synchronize()
      local t0 = lumen.clock()
      for _ = 1, reps do fn() end
      lumen.cuda.synchronize()
      return (lumen.clock() - t0) / reps
    end
    -- 16M floats (64 MiB) and 4096^2 GEMMs; small ones on the fake device
    local n, k = opts.fake and 2 ^ 14 or 2 ^ 24, opts.fake and 64 or 4096
    local a, b = lumen.randn(n):cuda(), lumen.randn(n):cuda()
    local out = a:clone()
    local t_add = time(10, function() out:add_(b) end) -- reads out and b, writes out
    local t_sum = time(10, function() return a:sum() end)
    local m = lumen.randn(k, k):cuda()
    local t_mm = time(5, function() return m:matmul(m) end)
    local m64 = m:to('f64')
    local t_dmm = time(3, function() return m64:matmul(m64) end)
    return string.format('add %.0f GB/s, sum %.0f GB/s, sgemm %d %.2f TFLOP/s, dgemm %.2f TFLOP/s',
      3 * 4 * n / t_add / 1e9, 4 * n / t_sum / 1e9, k, 2 * k ^ 3 / t_mm / 1e12, 2 * k ^ 3 / t_dmm / 1e12)
  end)
end

-- the table, last
print('')
print(string.format('%-34s %-6s %8s  %s', 'check', 'result', 'seconds', 'detail'))
print(string.rep('-', 100))
local passed, failed, warned = 0, 0, 0
for _, r in ipairs(results) do
  local detail = r.detail:gsub('\n.*', ' ...')
  if #detail > 160 then detail = detail:sub(1, 157) .. '...' end
  print(string.format('%-34s %-6s %8.2f  %s', r.name, r.status, r.seconds, detail))
  if r.status == 'PASS' then passed = passed + 1 elseif r.status == 'WARN' then warned = warned + 1 else failed = failed + 1 end
end
print(string.format('%d passed, %d failed, %d warned', passed, failed, warned))
io.stdout:flush()
if failed > 0 then os.exit(1) end
