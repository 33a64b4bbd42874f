-- Devices without a GPU: the fake device of tests/plugin/fake_device.c
-- (host memory behind the backend table of src/backend.h) registered as
-- 'cuda' runs the device paths of liblumen and the Lua layer: transfers of
-- every dtype and layout, the device memory cache and its stats, autograd
-- through transfers, modules, printing, and the rule that every op either
-- refuses a device tensor with a clear error or gives the CPU's answer.
local ffi = require 'ffi'
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local core = lumen.core

local fake_path = (core.libpath:match('^(.*)/[^/]*$') or 'build') .. '/tests/plugins/fake_device.so'
local fake
do
  local f = io.open(fake_path, 'rb')
  if f then
    f:close()
    pcall(ffi.cdef, [[
      const lm_backend *lm_fake_backend(void);
      const lm_backend *lm_fake_backend_wrong_abi(void);
      void lm_fake_counters(int64_t *out);
      void lm_fake_fail_mallocs(int64_t n);
      int unsetenv(const char *name);
    ]])
    fake = ffi.load(fake_path)
  end
end

local function counters()
  local c = ffi.new('int64_t[6]')
  fake.lm_fake_counters(c)
  return { outstanding = tonumber(c[0]), mallocs = tonumber(c[1]), frees = tonumber(c[2]), syncs = tonumber(c[3]),
    h2d = tonumber(c[4]), d2h = tonumber(c[5]) }
end

-- Same dtype, shape and values (bit for bit, NaN included).
local function same(a, b)
  assert.are.equal(a:dtype(), b:dtype())
  assert.are.same(a:size(), b:size())
  local ca, cb = a:cpu():contiguous(), b:cpu():contiguous()
  local n = ca:numel() * ffi.sizeof(core.ctypes[core.info(ca).dtype]:sub(1, -2))
  assert.are.equal(ffi.string(ca:data_ptr(), n), ffi.string(cb:data_ptr(), n))
end

local function random_of(dtype, ...)
  local x = lumen.randn(...)
  if dtype == 'f32' or dtype == 'f64' then return x:to(dtype) end
  if dtype == 'bool' then return x:gt(0) end
  return (x * 50):to(dtype)
end

if not fake then
  describe('devices (fake backend)', function()
    pending('tests/plugins/fake_device.so is not built (make test builds it)')
  end)
  return
end

describe('devices (fake backend)', function()
  setup(function()
    lumen.cuda.reset()
    lumen.cuda.use_backend(fake.lm_fake_backend(), 'fake device', fake)
  end)
  teardown(function()
    collectgarbage('collect')
    lumen.cuda.reset()
  end)

  it('moves every dtype and layout to the device and back, exactly', function()
    local dtypes = { 'f32', 'f64', 'i32', 'i64', 'u8', 'bool' }
    for _, dt in ipairs(dtypes) do
      local x = random_of(dt, 3, 4, 5)
      local views = {
        x, x:transpose(0, 2), x:slice(1, 1, 4, 2), x:select(2, 3), x:narrow(0, 1, 2):permute { 2, 0, 1 },
        x:select(0, 0):select(0, 0):select(0, 0), x:slice(0, 0, 0), x:select(1, 2):unsqueeze(0):expand(3, 3, 5),
      }
      for k, v in ipairs(views) do
        local d = v:to('cuda')
        assert.are.equal('cuda', d:device(), dt .. ' view ' .. k)
        assert.is_true(d:is_cuda())
        assert.is_true(d:is_contiguous())
        same(v, d)
        local back = d:cpu()
        assert.are.equal('cpu', back:device())
        same(v, back)
        -- a strided view of a device tensor comes back through the gather
        if d:dim() >= 2 then same(v:transpose(0, 1), d:transpose(0, 1):cpu()) end
      end
    end
    local x = lumen.randn(4)
    assert.are.equal(x, x:to('cpu'))
    local d = x:cuda()
    assert.are.equal(d, d:to('cuda'))
    assert.are.equal(d, d:to('cuda:0'))
    same(x:to('f64'), d:to { device = 'cpu', dtype = 'f64' })
    same(x:to('f64'), x:to('cuda', 'f64'):cpu())
    assert.are.equal('f64', x:to { device = 'cuda', dtype = 'f64' }:dtype())
    assert.are.equal('cuda', lumen.zeros(1, 'i64'):to(d):device())
    assert.has_error(function() x:to('tpu') end, "lumen: unknown dtype 'tpu' (expected f32, f64, i32, i64, u8 or bool)")
    assert.has_error(function() x:to { device = 'gpu' } end, "lumen.to: unknown device 'gpu' (expected 'cpu' or 'cuda')")
  end)

  it('reads values of device tensors through a CPU copy', function()
    local x = lumen.tensor { { 1.5, -2 }, { 3, 4 } }
    local d = x:cuda()
    assert.are.same(x:totable(), d:totable())
    assert.are.equal(-2, d:select(0, 0):select(0, 1):item())
    assert.are.equal(tostring(x):gsub(' cpu%]$', ' cuda]'), tostring(d))
    local dir = os.tmpname()
    os.remove(dir)
    lumen.save(dir, { w = d })
    local back = lumen.load(dir)
    os.remove(dir)
    same(x, back.w)
    assert.are.equal('cpu', back.w:device())
  end)

  it('caches device memory and counts it', function()
    collectgarbage('collect')
    lumen.empty_cache('cuda')
    local base, c0 = lumen.memory('cuda'), counters()
    assert.are.equal(0, base.cached)
    local x = lumen.randn(10, 100) -- 4000 bytes: served as 4096
    local d = x:cuda()
    local m = lumen.memory('cuda')
    assert.are.equal(base.live + 4096, m.live)
    assert.are.equal(base.allocs + 1, m.allocs)
    assert.are.equal(base.system_allocs + 1, m.system_allocs)
    assert.is_true(m.peak >= m.live)
    d:free()
    m = lumen.memory('cuda')
    assert.are.equal(base.live, m.live)
    assert.are.equal(4096, m.cached)
    -- the same size again comes from the cache: no new device allocation
    for _ = 1, 5 do x:cuda():free() end
    m = lumen.memory('cuda')
    assert.are.equal(base.allocs + 6, m.allocs)
    assert.are.equal(base.system_allocs + 1, m.system_allocs)
    assert.are.equal(c0.mallocs + 1, counters().mallocs)
    -- a strided read-back takes a temporary on the device, returned at once
    local y = lumen.randn(8, 16):cuda()
    local before = lumen.memory('cuda').live
    same(y:cpu():t(), y:t():cpu())
    assert.are.equal(before, lumen.memory('cuda').live)
    y:free()
    collectgarbage('collect') -- the view y:t() held y's memory too
    lumen.empty_cache('cuda')
    m = lumen.memory('cuda')
    assert.are.equal(0, m.cached)
    assert.are.equal(base.live, m.live)
    assert.are.equal(c0.outstanding, counters().outstanding) -- every cached block went back
    lumen.reset_peak_memory('cuda')
    assert.are.equal(m.live, lumen.memory('cuda').peak)
    -- the CPU's stats are apart
    assert.is_number(lumen.memory().live)
    assert.are.same(lumen.memory('cpu'), lumen.memory())
  end)

  it('returns its cache to the device and retries when the device is full', function()
    lumen.empty_cache('cuda')
    local a = lumen.randn(300):cuda()
    a:free()
    assert.are.equal(1536, lumen.memory('cuda').cached)
    fake.lm_fake_fail_mallocs(1) -- the next device allocation fails once
    local b = lumen.randn(1000):cuda()
    assert.are.equal(0, lumen.memory('cuda').cached) -- the cache went back first
    b:free()
    -- fails, and again after the cache went back; core.call's retry twice more
    fake.lm_fake_fail_mallocs(4)
    local ok, e = pcall(function() local r = lumen.randn(2000):cuda(); return r end)
    fake.lm_fake_fail_mallocs(0)
    assert.is_false(ok)
    assert.matches('device_spec.lua:%d+: lumen.to: out of memory allocating 8000 bytes on cuda %(fake malloc: out of memory', e)
  end)

  it('sends gradients back through transfers', function()
    local x = lumen.randn(3, 4, 'f64'):requires_grad_()
    local y = x:cuda()
    assert.are.equal('copy', y.grad_fn)
    local z = y:cpu() * 2
    z:sum():backward()
    same(lumen.full({ 3, 4 }, 2, 'f64'), x.grad)
    -- a device leaf gets a device gradient
    local w = lumen.randn(5):cuda():requires_grad_()
    w:cpu():sum():backward()
    assert.are.equal('cuda', w.grad:device())
    same(lumen.ones(5), w.grad)
  end)

  it('moves modules: parameters stay leaves, buffers move too', function()
    local m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    local w = m:get(0).weight:clone()
    m:to('cuda')
    for _, p in ipairs(m:parameters()) do
      assert.are.equal('cuda', p:device())
      assert.is_true(p.requires_grad)
      assert.is_true(p.is_leaf)
    end
    assert.are.equal('cuda', m:get(1).num_batches_tracked:device())
    assert.are.equal('i64', m:get(1).num_batches_tracked:dtype())
    same(w, m:get(0).weight)
    m:to { device = 'cpu', dtype = 'f64' }
    assert.are.equal('cpu', m:get(0).weight:device())
    assert.are.equal('f64', m:get(0).weight:dtype())
    assert.are.equal('i64', m:get(1).num_batches_tracked:dtype())
    same(w:to('f64'), m:get(0).weight)
  end)

  it('refuses to unregister while device memory is held, and other ABIs', function()
    local d = lumen.randn(4):cuda()
    local ok, e = pcall(lumen.cuda.reset)
    assert.is_false(ok)
    assert.matches('lumen.backend_unregister: 512 bytes of cuda memory are still held by tensors', e, 1, true)
    d:free()
    local ok2, e2 = pcall(lumen.cuda.use_backend, fake.lm_fake_backend_wrong_abi(), 'old')
    assert.is_false(ok2)
    assert.matches('built for backend ABI 99, this liblumen has 1', e2, 1, true)
    lumen.cuda.use_backend(fake.lm_fake_backend(), 'fake device', fake)
    assert.is_true(lumen.cuda.is_available())
  end)

  -- Every function and method called with small CPU tensors: when a call
  -- works on the CPU, the same call with the tensors on the device must
  -- either raise a lumen error that names the device, or give the CPU's
  -- results (views, transfers, reading values) with tensors left on the
  -- device.
  it('every op refuses device tensors clearly or agrees with the CPU', function()
    local skip = {
      set_num_threads = true, manual_seed = true, seed = true, set_rng_state = true, set_printoptions = true,
      load_plugin = true, empty_cache = true, reset_peak_memory = true, save = true, save_npy = true, load = true,
      load_npy = true, print = true, free = true, from_ptr = true, data_ptr = true, custom_op = true,
      no_grad = true, enable_grad = true, set_grad_enabled = true, clock = true,
    }
    local function inputs()
      lumen.manual_seed(7)
      local a, b = lumen.randn(2, 3), lumen.randn(2, 3)
      return {
        a = a, b = b, c = lumen.randn(3, 2), i = lumen.tensor({ { 0, 1, 0 }, { 1, 0, 1 } }, 'i64'),
        m = a:gt(0), x4 = lumen.randn(1, 2, 5, 5), w4 = lumen.randn(3, 2, 3, 3), v = lumen.randn(3),
        x3 = lumen.randn(2, 3, 6), l = lumen.tensor({ 1, 0 }, 'i64'), g = lumen.randn(1, 5, 5, 2) * 0.5,
        s = lumen.tensor(2.5), b3 = lumen.randn(2, 6, 4), w3 = lumen.randn(4, 3, 3), x5 = lumen.randn(1, 2, 4, 4, 4),
        w5 = lumen.randn(3, 2, 2, 2, 2), rm = lumen.zeros(2), rv = lumen.ones(2), p1 = lumen.tensor { 0.25 },
        cc = lumen.randn(2, 2), th = lumen.randn(1, 2, 3),
      }
    end
    local lists = {
      { 'a' }, { 'a', 'b' }, { 'a', 0 }, { 'a', 1 }, { 'a', 2.5 }, { 'a', 0, 'i' }, { 'a', 'm' }, { 'm', 'a', 'b' },
      { 'a', 'c' }, { 'v' }, { 'v', 'v' }, { 'a', { 0 } }, { 'a', 0, 1 }, { 'x4' }, { 'x4', 'w4' }, { 'x4', 2 },
      { 'x3' }, { 'x3', 'l' }, { 'a', 'l' }, { 'x4', 'g' }, { 'a', 'm', 1.5 }, { 'a', 'i', 'b' }, { 'a', 1, 'i', 'b' },
      { 'a', -1, 1 }, { 'a', { 3 } }, { 'x4', { 2, 2 } }, { 'a', 'b', 'b' }, { 'a', 'v' }, { 'x3', 'b3' },
      { 'cc', 'a', 'c' }, { 'a', 0, 'l' }, { 'a', 0, 0, 1 }, { 'v', 2, 3 }, { 's' }, { { 'a', 'b' } },
      { { 'a', 'b' }, 1 }, { 'x3', 'w3' }, { 'x5', 'w5' }, { 'x4', 'rm', 'rv' }, { 'x4', 'p1' },
      { 'x4', { scale_factor = 2 } }, { 'th', { 1, 1, 4, 4 } }, { 'x3', 'x3' }, { 'x4', 'x4' }, { 'x5', 'x5' },
    }
    local function build(list, env, cuda)
      local function map(v)
        if type(v) == 'string' and env[v] then return cuda and env[v]:cuda() or env[v] end
        if type(v) ~= 'table' then return v end
        local t = {}
        for k, x in pairs(v) do t[k] = map(x) end
        return t
      end
      return map(list)
    end
    local fns = {}
    for k, v in pairs(lumen) do
      if type(v) == 'function' and not skip[k] then fns[#fns + 1] = { 'lumen.' .. k, v } end
    end
    for k, v in pairs(core.Tensor) do
      if type(v) == 'function' and not skip[k] then fns[#fns + 1] = { 't:' .. k, v } end
    end
    for k, v in pairs(nn.F) do
      if type(v) == 'function' then fns[#fns + 1] = { 'nn.F.' .. k, v } end
    end
    table.sort(fns, function(p, q) return p[1] < q[1] end)

    -- results as comparable values: tensors become CPU copies (with their
    -- device noted), tables are walked
    local function flat(r, devices)
      if core.is_tensor(r) then
        if r.h == nil then return 'freed' end
        devices[#devices + 1] = r:device()
        return { r:dtype(), r:size(), r:cpu():contiguous() }
      end
      if type(r) == 'table' then
        local t = {}
        for k, v in pairs(r) do t[k] = flat(v, devices) end
        return t
      end
      if type(r) == 'number' and r ~= r then return 'nan' end
      return type(r) == 'function' and 'function' or r
    end
    -- integers and bools bit for bit; floats within a few ulps, since the
    -- fake device computes in its own way (in double, rounding after)
    local function equal(p, q)
      if core.is_tensor(p) or core.is_tensor(q) then
        if not (core.is_tensor(p) and core.is_tensor(q)) then return false end
        local dt = p:dtype()
        if dt ~= q:dtype() then return false end
        if dt == 'f32' or dt == 'f64' then
          local rtol = dt == 'f32' and 1e-5 or 1e-12
          local a, b = ffi.cast(dt == 'f32' and 'float *' or 'double *', p:data_ptr()),
            ffi.cast(dt == 'f32' and 'float *' or 'double *', q:data_ptr())
          for i = 0, p:numel() - 1 do
            local x, y = a[i], b[i]
            if not (x == y or (x ~= x and y ~= y) or math.abs(x - y) <= rtol * (1 + math.abs(y))) then return false end
          end
          return true
        end
        local n = p:numel() * ffi.sizeof(core.ctypes[core.info(p).dtype]:sub(1, -2))
        return ffi.string(p:data_ptr(), n) == ffi.string(q:data_ptr(), n)
      end
      if type(p) ~= 'table' or type(q) ~= 'table' then return p == q end
      for k, v in pairs(p) do if not equal(v, q[k]) then return false end end
      for k in pairs(q) do if p[k] == nil then return false end end
      return true
    end

    local problems, refused, agreed, untried = {}, 0, 0, {}
    for _, f in ipairs(fns) do
      local name, fn = f[1], f[2]
      local tried = false
      for _, list in ipairs(lists) do
        local env = inputs()
        lumen.manual_seed(11)
        local ok, cpu_r = pcall(function() return { fn(unpack(build(list, env, false))) } end)
        if ok then
          tried = true
          env = inputs()
          lumen.manual_seed(11)
          local okd, dev_r = pcall(function() return { fn(unpack(build(list, env, true))) } end)
          local what = name .. '(' .. table.concat((function()
            local s = {}
            for k, v in ipairs(list) do s[k] = tostring(type(v) == 'table' and '{...}' or v) end
            return s
          end)(), ', ') .. ')'
          if not okd then
            local e = tostring(dev_r)
            -- pin_memory is for host memory by its nature: it names the device
            if e:find('is on cuda; this op runs on the CPU only so far', 1, true) or e:find('CUDA', 1, true) or
              (name == 't:pin_memory' and e:find('the tensor is on cuda, expected a CPU tensor', 1, true)) then
              refused = refused + 1
            else
              problems[#problems + 1] = what .. ': unclear error on the device: ' .. e
            end
          else
            local dc, dd = {}, {}
            local pc, pd = flat(cpu_r, dc), flat(dev_r, dd)
            if not equal(pc, pd) and name ~= 't:device' and name ~= 't:is_cuda' then
              problems[#problems + 1] = what .. ': differs on the device'
            else
              agreed = agreed + 1
              local moves_out = name:match(':cpu$') or name:match(':to$')
              if name == 't:device' or name == 't:is_cuda' then agreed = agreed - 1; refused = refused + 1 end
              for _, dev in ipairs(dd) do
                if dev ~= 'cuda' and not moves_out then
                  problems[#problems + 1] = what .. ': returned a ' .. dev .. ' tensor for device inputs'
                  break
                end
              end
            end
          end
          break
        end
      end
      if not tried then untried[#untried + 1] = f[1] end
    end
    if os.getenv("DEVICE_SPEC_VERBOSE") then print(refused, agreed, #fns, table.concat(untried, " ")) end
    assert.are.same({}, problems)
    -- most functions must have been exercised
    assert.is_true(refused + agreed > 0.9 * #fns, string.format('%d refused, %d agreed of %d; untried: %s',
      refused, agreed, #fns, table.concat(untried, ' ')))
  end)

  it('reports where it looked for the CUDA libraries and which versions it saw', function()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute('mkdir -p ' .. dir .. ' && touch ' .. dir .. '/libcudnn.so.8 ' .. dir .. '/libcudnn.so.8.9.7')
    local r = lumen.cuda.find_library('cudnn', { dir, dir .. '/none' })
    os.execute('rm -rf ' .. dir)
    assert.is_nil(r.found)
    assert.are.same({ dir .. ' (given)', dir .. '/none (given)' }, r.looked)
    assert.are.same({ dir .. '/libcudnn.so.8' }, r.others) -- the sonames only
    assert.has_error(function() lumen.cuda.find_library('cufft') end,
      "lumen.cuda.find_library: unknown library 'cufft' (expected cublas or cudnn)")
    -- where a CUDA toolkit is installed, its copy is found and has a version
    local f = io.open('/usr/local/cuda/lib64/libcudnn.so.9', 'rb')
    if f then
      f:close()
      r = lumen.cuda.find_library('cudnn', { '/usr/local/cuda/lib64' })
      assert.are.equal('/usr/local/cuda/lib64/libcudnn.so.9', r.found)
      assert.matches('^9%.%d+%.%d+$', r.version)
    end
  end)

  it('says why CUDA is not used when it is not', function()
    lumen.cuda.reset()
    ffi.C.setenv('LUMEN_NO_CUDA', '1', 1)
    local ok, e = pcall(function() local r = lumen.randn(2):cuda(); return r end)
    local st = lumen.cuda.status()
    ffi.C.unsetenv('LUMEN_NO_CUDA')
    lumen.cuda.reset()
    assert.is_false(ok)
    assert.matches('device_spec.lua:%d+: lumen.to: CUDA is not available: LUMEN_NO_CUDA is set', e)
    assert.is_false(st.available)
    lumen.cuda.use_backend(fake.lm_fake_backend(), 'fake device', fake)
  end)
end)
