-- Ops on a device, without a GPU: the op table of tests/gpu/op_table.lua
-- (every op with device kernels, forward and backward, against the CPU)
-- run on two backends registered as 'cuda':
--  - the fake device (tests/plugin/fake_device.c), whose kernels are plain
--    loops written from src/backend.h: it checks what liblumen sends a
--    backend (strides, broadcasting, dtypes, outputs, autograd);
--  - the CUDA backend's own kernel files run on the host
--    (tests/plugin/cuda_emulated.cu, built where nvcc is): it checks the
--    CUDA kernels' logic, the cuBLAS operand swap included.
-- Then what dispatch itself promises: results and gradients stay on the
-- device, inputs on two devices are refused with both named, ops without
-- device kernels refuse as before, and a backend without the kernel
-- entries makes the ops refuse rather than crash.
local ffi = require 'ffi'
local lumen = require 'lumen'
local ops = require 'gpu.op_table'

local backends = require 'helpers.test_backends'
local load, use = backends.load, backends.use
local fake = load('fake_device', [[
  const lm_backend *lm_fake_backend(void);
  const lm_backend *lm_fake_backend_no_kernels(void);
  void lm_fake_kernel_counts(int64_t *out);
  void lm_fake_counters(int64_t *out);
  void lm_fake_pinned_counters(int64_t *out);
  const lm_backend *lm_fake_backend_no_sort(void);
  int64_t lm_fake_layer_count(void);
  int64_t lm_fake_conv_lib_count(void);
  int setenv(const char *name, const char *value, int overwrite);
  int unsetenv(const char *name);
]])
local emulated = load('cuda_emulated', 'const lm_backend *lm_cuda_emulated_backend(void);')

local function kernel_counts()
  local c = ffi.new('int64_t[4]')
  fake.lm_fake_kernel_counts(c)
  return { elementwise = tonumber(c[0]), reduce = tonumber(c[1]), gemm = tonumber(c[2]), other = tonumber(c[3]) }
end

-- Runs the whole table; fails with the report's failing lines.
local function table_passes(label)
  local records = ops.run_all('cuda', 1)
  local bad, lines = {}, ops.report(records)
  for i, r in ipairs(records) do
    if not r.ok then bad[#bad + 1] = lines[i + 1] end
  end
  if os.getenv('DEVICE_OPS_VERBOSE') then print('\n' .. label .. '\n' .. table.concat(lines, '\n')) end
  assert.are.same({}, bad)
  assert.is_true(#records > 100)
end

describe('ops on a device', function()
  teardown(function()
    collectgarbage('collect')
    lumen.cuda.reset()
  end)

  if not fake then
    pending('tests/plugins/fake_device.so is not built (make test builds it)')
    return
  end

  it('agree with the CPU on the fake device, forward and backward', function()
    use(fake.lm_fake_backend(), 'fake device', fake)
    table_passes('fake device')
  end)

  if emulated then
    it("agree with the CPU in the CUDA backend's own kernels (run on the host)", function()
      use(emulated.lm_cuda_emulated_backend(), 'CUDA kernels emulated on the host', emulated)
      table_passes('CUDA kernels emulated')
    end)
  else
    pending('tests/plugins/cuda_emulated.so is not built (it needs nvcc)')
  end

  if emulated then
    it("train LeNet (bench/workloads.lua) with the CUDA backend's kernels as on the CPU", function()
      use(emulated.lm_cuda_emulated_backend(), 'CUDA kernels emulated on the host', emulated)
      local T = dofile('tests/gpu/train_steps.lua')
      -- a probe loss (sum of the logits times fixed weights) until the device has cross_entropy
      local r = T.compare('lenet', 'cuda', { steps = 1, small = true, loss = 'probe' })
      assert.is_true(r.loss_err < 1e-5, 'loss error ' .. r.loss_err)
      assert.is_true(r.grad_err < 1e-5, 'gradient error ' .. r.grad_err .. ' (' .. tostring(r.worst_grad) .. ')')
    end)
  end

  it("run conv, pooling and norms on the device's kernels", function()
    use(fake.lm_fake_backend(), 'fake device', fake)
    local nn = require('lumen.nn')
    local x = lumen.randn(2, 3, 8, 8):cuda():requires_grad_()
    local w = lumen.randn(4, 3, 3, 3):cuda():requires_grad_()
    local c0 = fake.lm_fake_layer_count()
    local y = nn.F.conv2d(x, w, nil, { padding = 1 })
    y = nn.F.max_pool2d(nn.F.group_norm(y, 2), 2)
    assert.is_true(fake.lm_fake_layer_count() - c0 >= 4) -- im2col, two norm passes, pool
    y:sum():backward()
    assert.are.equal('cuda', x.grad:device())
    assert.are.equal('cuda', w.grad:device())
    -- the library convolution (the fake's stand-in for cuDNN) ran the conv,
    -- forward and both gradients; LUMEN_CUDNN=0 and a declined (dilated)
    -- case go through im2col
    local l0 = fake.lm_fake_conv_lib_count()
    local xd = x:detach()
    nn.F.conv2d(xd, w:detach(), nil, { padding = 1 })
    assert.are.equal(1, fake.lm_fake_conv_lib_count() - l0)
    local old = os.getenv('LUMEN_CUDNN')
    ffi.C.setenv('LUMEN_CUDNN', '0', 1)
    local ok, e = pcall(nn.F.conv2d, xd, w:detach(), nil, { padding = 1 })
    if old then ffi.C.setenv('LUMEN_CUDNN', old, 1) else ffi.C.unsetenv('LUMEN_CUDNN') end
    assert(ok, e)
    nn.F.conv2d(xd, w:detach(), nil, { dilation = 2 })
    assert.are.equal(1, fake.lm_fake_conv_lib_count() - l0)
    -- max unpooling: the index kernels' scatter and gather, on the device;
    -- indices on another device, or out of the plane, are refused as on the CPU
    local v, i = nn.F.max_pool2d(x:detach(), 2, { return_indices = true })
    local u = nn.F.max_unpool2d(v, i, 2)
    assert.are.equal('cuda', u:device())
    assert.are.same(nn.F.max_unpool2d(v:cpu(), i:cpu(), 2):totable(), u:cpu():totable())
    assert.has_error(function() return nn.F.max_unpool2d(v, i:cpu(), 2) end,
      'lumen.max_unpool2d: inputs on cuda and cpu (input on cuda, indices on cpu), expected one device (move them with :to())')
    assert.has_error(function() return nn.F.max_unpool2d(v, i + 100, 2) end,
      'lumen.max_unpool2d: an index lies outside the output plane of 64 elements (output 2x3x8x8), expected indices in [0, 64)')
  end)

  it("run on the device's kernels, and results and gradients stay there", function()
    use(fake.lm_fake_backend(), 'fake device', fake)
    local x = lumen.randn(4, 5):cuda():requires_grad_()
    local w = lumen.randn(5, 3):cuda():requires_grad_()
    local c0 = kernel_counts()
    local y = (x:matmul(w):tanh() * 2):sum(1)
    local c1 = kernel_counts()
    assert.are.equal(1, c1.gemm - c0.gemm)
    assert.are.equal(1, c1.reduce - c0.reduce)
    assert.are.equal(2, c1.elementwise - c0.elementwise) -- tanh, * 2
    local F = require('lumen.nn').F
    local a = F.softmax(F.gelu(x), 1)
    assert.are.equal(2, kernel_counts().other - c1.other) -- the activation and softmax entries
    assert.are.equal('cuda', a:device())
    c1 = kernel_counts()
    assert.are.equal('cuda', y:device())
    y:sum():backward()
    assert.are.equal('cuda', x.grad:device())
    assert.are.equal('cuda', w.grad:device())
    assert.are.same({ 4, 5 }, x.grad:size())
    -- an optimizer step is one launch for the whole group, its states on the device
    local opt = require('lumen.optim').Adam({ x, w }, { lr = 0.01 })
    local before = kernel_counts().other
    opt:step()
    assert.are.equal(1, kernel_counts().other - before)
    assert.are.equal('cuda', opt.state[x].exp_avg:device())
    -- a gradient given on the CPU goes to the tensor's device
    local z = x * 3
    z:backward(lumen.ones(4, 5))
    assert.are.equal('cuda', x.grad:device())
  end)

  it('give a 0-d CPU tensor used as a host value its gradient on the CPU', function()
    use(fake.lm_fake_backend(), 'fake device', fake)
    local c = lumen.tensor(1.5, 'f64'):requires_grad_()
    local x = lumen.randn(3, 4, 'f64')
    local y = (x:cuda() * c):sum()
    assert.are.equal('cuda', y:device())
    y:backward()
    assert.are.equal('cpu', c.grad:device())
    assert.is_true(math.abs(c.grad:item() - x:sum():item()) < 1e-12)
    -- and one made by a CPU op: its node gets the gradient on the CPU
    local p = lumen.randn(3, 'f64'):requires_grad_()
    local z = (x:cuda() * p:sum()):sum()
    z:backward()
    assert.are.equal('cpu', p.grad:device())
    assert.is_true(math.abs(p.grad:select(0, 2):item() - x:sum():item()) < 1e-12)
  end)

  it('refuse inputs on two devices, naming both', function()
    use(fake.lm_fake_backend(), 'fake device', fake)
    local a, b = lumen.randn(2, 3), lumen.randn(2, 3)
    local d = b:cuda()
    assert.has_error(function() return a + d end,
      'lumen.add: inputs on cpu and cuda (first input on cpu, second input on cuda), expected one device (move them with :to())')
    assert.has_error(function() return lumen.where(d:gt(0), a, d) end,
      'lumen.where: inputs on cuda and cpu (condition on cuda, first input on cpu), expected one device (move them with :to())')
    assert.has_error(function() return a:matmul(d:t()) end,
      'lumen.matmul: inputs on cpu and cuda (operand 0 on cpu, operand 1 on cuda), expected one device (move them with :to())')
    assert.has_error(function() return d:add_(a) end,
      'lumen.add: inputs on cuda and cpu (first input on cuda, second input on cpu), expected one device (move them with :to())')
    assert.has_error(function() return lumen.addmm(a:select(0, 0), d, d:t()) end,
      'lumen.addmm: inputs on cuda and cpu (operand 0 on cuda, operand 2 on cpu), expected one device (move them with :to())')
    -- a 0-d CPU tensor is a host value, a 0-d device tensor is not special
    assert.are.equal('cuda', (d * lumen.tensor(2)):device())
    assert.has_error(function() return a * lumen.tensor(2):cuda() end,
      'lumen.mul: inputs on cpu and cuda (first input on cpu, second input on cuda), expected one device (move them with :to())')
  end)

  it("draw the CPU's numbers for a seed, bit for bit, and move the offset alike", function()
    for _, be in ipairs { { fake.lm_fake_backend(), 'fake device', fake },
      emulated and { emulated.lm_cuda_emulated_backend(), 'CUDA kernels emulated', emulated } or nil } do
      use(be[1], be[2], be[3])
      local function draws(device)
        lumen.manual_seed(2024)
        local o = { device = device }
        local r = { lumen.rand(300, o), lumen.rand(200, { dtype = 'f64', device = device }), lumen.randint(-5, 1000, { 300 }, o),
          lumen.empty(300, o):bernoulli_(0.25), lumen.rand(3, o) } -- the last one after the others: the offset moved alike
        for i, t in ipairs(r) do
          assert.are.equal(device or 'cpu', t:device())
          r[i] = t:cpu()
        end
        return r
      end
      local c, d = draws(nil), draws('cuda')
      for i = 1, #c do assert.are.same(c[i]:totable(), d[i]:totable()) end
      -- normals go through the device's log and cos: within an ulp or two
      lumen.manual_seed(1)
      local nc = lumen.randn(500, 'f64')
      lumen.manual_seed(1)
      local nd = lumen.randn(500, { dtype = 'f64', device = 'cuda' }):cpu()
      assert.is_true((nc - nd):abs():max():item() <= 1e-15 * nc:abs():max():item())
      assert.has_error(function() return lumen.zeros(2, { device = 'tpu' }) end,
        "lumen.zeros: unknown device 'tpu' (expected 'cpu' or 'cuda')")
      assert.has_error(function() return lumen.rand(2):cuda():sigmoid():sub(2):bernoulli() end,
        'lumen.bernoulli: probabilities must be in [0, 1] (one is not, or is NaN)')
    end
  end)

  it('give the CPU messages for bad class targets on the device', function()
    use(fake.lm_fake_backend(), 'fake device', fake)
    local F = require('lumen.nn').F
    local x, t = lumen.randn(3, 4), lumen.tensor({ 1, 7, -2 }, 'i64')
    local ok, cpu_msg = pcall(F.cross_entropy, x, t)
    assert.is_false(ok)
    assert.truthy(cpu_msg:find('target value 7 (at flat position 1 of target 3)', 1, true))
    local ok2, dev_msg = pcall(F.cross_entropy, x:cuda(), t:cuda())
    assert.is_false(ok2)
    assert.are.equal(cpu_msg:match('lumen%..*'), dev_msg:match('lumen%..*'))
    assert.has_error(function() return F.nll_loss(x:cuda(), t) end,
      'lumen.nll_loss: inputs on cuda and cpu (input on cuda, target on cpu), expected one device (move them with :to())')
  end)

  it('leave ops without device kernels refusing as before', function()
    use(fake.lm_fake_backend(), 'fake device', fake)
    local d = lumen.randn(2, 3):cuda()
    assert.has_error(function() return require('lumen.morph').dilate(d:gt(0), 1) end,
      "lumen.morph.dilate: mask is on cuda; this op runs on the CPU only so far (move it with :to('cpu'))")
  end)

  it('sort on the backend\'s sort entry, with gradients on the device', function()
    use(fake.lm_fake_backend(), 'fake device', fake)
    local counts = ffi.new('int64_t[5]')
    fake.lm_fake_pinned_counters(counts)
    local before = counts[4]
    local x = lumen.randn(3, 5, 'f64'):cuda():requires_grad_()
    local v, i = x:sort(1, true)
    local tv = x:topk(2, 0)
    fake.lm_fake_pinned_counters(counts)
    assert.are.equal(2, tonumber(counts[4] - before))
    assert.are.equal('cuda', i:device())
    ;(v:sum() + tv:sum() * 2):backward()
    assert.are.equal('cuda', x.grad:device())
    -- every element once from the sort, the top two of each column twice more
    local _, ti = x:detach():cpu():topk(2, 0)
    local want = lumen.ones(3, 5, 'f64'):scatter_add(0, ti, lumen.full({ 2, 5 }, 2, 'f64'))
    assert.are.same(want:totable(), x.grad:cpu():totable())
    -- a backend table without the entry: sort refuses, naming it
    x, v, i, tv = nil, nil, nil, nil
    collectgarbage('collect')
    lumen.cuda.reset()
    lumen.cuda.use_backend(fake.lm_fake_backend_no_sort(), 'fake device without sort', fake)
    local d = lumen.randn(4):cuda()
    assert.has_error(function() return d:sort() end,
      "lumen.sort: the cuda backend (fake) has no sort kernel, so this op runs on the CPU only (move the tensors with :to('cpu'))")
    assert.is_false(d:cpu():pin_memory():is_pinned()) -- no host_alloc either: ordinary memory, no error
    d:free()
  end)

  it('pin host tensors through the backend, and copy them to the device without staging', function()
    use(fake.lm_fake_backend(), 'fake device', fake)
    local c = ffi.new('int64_t[5]')
    local function pinned()
      fake.lm_fake_pinned_counters(c)
      return { outstanding = tonumber(c[0]), allocs = tonumber(c[1]), frees = tonumber(c[2]), async = tonumber(c[3]) }
    end
    local function staged()
      local k = ffi.new('int64_t[6]')
      fake.lm_fake_counters(k)
      return tonumber(k[4])
    end
    local p0, live0 = pinned(), lumen.memory('pinned').live
    local x = lumen.randn(4, 6)
    assert.is_false(x:is_pinned())
    local p = x:pin_memory()
    assert.is_true(p:is_pinned())
    assert.is_true(p:select(0, 1):is_pinned()) -- views share the pinned storage
    assert.are.equal(p:data_ptr(), p:pin_memory():data_ptr()) -- pinned already: itself
    assert.are.same(x:totable(), p:totable())
    assert.are.equal(1, pinned().allocs - p0.allocs)
    assert.is_true(lumen.memory('pinned').live >= live0 + 96)
    -- to('cuda') from pinned memory: copy_h2d_async, not the staged copy
    local s0, a0 = staged(), pinned().async
    local d = p:to('cuda')
    assert.are.equal(96, pinned().async - a0)
    assert.are.equal(s0, staged())
    assert.are.same(x:totable(), d:cpu():totable())
    -- a strided view of pinned memory goes the ordinary way
    local dt = p:t():to('cuda')
    assert.are.equal(96, pinned().async - a0)
    assert.are.equal(96, staged() - s0)
    assert.are.same(x:t():totable(), dt:cpu():totable())
    -- creation with pin_memory; the freed block is cached and served again,
    -- after a synchronize (a transfer from it may still be in flight)
    local z = lumen.zeros(4, 6, { pin_memory = true })
    assert.is_true(z:is_pinned())
    assert.are.same(lumen.zeros(4, 6):totable(), z:totable())
    assert.is_true(lumen.ones({ 2 }, { dtype = 'i64', pin_memory = true }):is_pinned())
    p:free()
    collectgarbage('collect')
    local allocs, k = pinned().allocs, ffi.new('int64_t[6]')
    fake.lm_fake_counters(k)
    local syncs = tonumber(k[3])
    local q = lumen.empty(4, 6, { pin_memory = true })
    assert.is_true(q:is_pinned())
    assert.are.equal(allocs, pinned().allocs) -- from the cache
    fake.lm_fake_counters(k)
    assert.are.equal(syncs + 1, tonumber(k[3]))
    assert.has_error(function() return lumen.empty(2, { device = 'cuda', pin_memory = true }) end,
      "lumen.empty: pin_memory is for CPU tensors, got device 'cuda'")
    assert.has_error(function() return d:pin_memory() end,
      'lumen.pin_memory: the tensor is on cuda, expected a CPU tensor (only host memory is pinned)')
    -- unregistering waits for pinned tensors, then returns every block
    d:free()
    dt:free()
    assert.has_error(function() lumen.cuda.reset() end,
      'lumen.backend_unregister: ' .. lumen.memory('pinned').live .. ' bytes of pinned host memory are still held by tensors')
    q:free()
    z = nil
    collectgarbage('collect')
    lumen.cuda.reset()
    assert.are.equal(p0.outstanding, pinned().outstanding)
    assert.are.equal(0, lumen.memory('pinned').live)
    -- without a backend: ordinary tensors, no error
    assert.is_false(lumen.randn(3):pin_memory():is_pinned())
    assert.is_false(lumen.empty(3, { pin_memory = true }):is_pinned())
  end)

  it('give the CPU permutation of randperm on the device for a seed', function()
    use(fake.lm_fake_backend(), 'fake device', fake)
    lumen.manual_seed(3)
    local c = lumen.randperm(25)
    lumen.manual_seed(3)
    local d = lumen.randperm(25, { device = 'cuda' })
    assert.are.equal('cuda', d:device())
    assert.are.same(c:totable(), d:cpu():totable())
  end)

  it('refuse the device when its backend has no kernels', function()
    collectgarbage('collect')
    lumen.cuda.reset()
    lumen.cuda.use_backend(fake.lm_fake_backend_no_kernels(), 'old fake device', fake)
    local d = lumen.randn(2, 3):cuda() -- memory and copies still work
    assert.are.same(d:cpu():totable(), d:totable())
    local pattern = "the cuda backend (fake) has no %s kernel, so this op runs on the CPU only (move the tensors with :to('cpu'))"
    assert.has_error(function() return d + d end, 'lumen.add: ' .. pattern:format('elementwise'))
    assert.has_error(function() return d:sum() end, 'lumen.sum: ' .. pattern:format('reduce'))
    assert.has_error(function() return d:matmul(d:t()) end, 'lumen.matmul: ' .. pattern:format('gemm'))
    assert.has_error(function() return d:to('f64') end, 'lumen.to: ' .. pattern:format('elementwise'))
    local F = require('lumen.nn').F
    assert.has_error(function() return F.gelu(d) end, 'lumen.gelu: ' .. pattern:format('activation'))
    assert.has_error(function() return F.softmax(d, 1) end, 'lumen.softmax: ' .. pattern:format('softmax'))
    d:free()
    collectgarbage('collect')
    lumen.cuda.reset()
  end)
end)
