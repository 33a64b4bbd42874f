-- tests/gpu/checks.lua: the checks tests/gpu/run.sh runs on a GPU machine,
-- through a bundle's bin/lumen. Each check prints as it goes; a table of
-- results comes last, then "N passed, N failed, N warned", and the exit
-- status is 1 when a check failed.
--
--   --fake=PATH   use the fake device of tests/plugin/fake_device.c instead
--                 of CUDA (checks the script itself on a machine without a GPU)
--   --mb=N        size of the bandwidth transfers (default 256)
--
-- Present: discovery (devices, CUDA versions, cuBLAS and cuDNN), the bundle
-- loading its own libraries, exact transfers of every dtype and layout,
-- strided read-back, autograd through transfers, modules moving, CPU ops
-- refusing device tensors, the device allocator (cache reuse, stats back
-- to baseline, empty_cache returning memory), transfer bandwidth.
-- To come with the kernels: the op table against the CPU, LeNet on both
-- devices, the bench workloads beside PyTorch (docs/ARCHITECTURE.md).
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

print('== lumen GPU checks ==')
if opts.fake then
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

  check('CPU ops refuse device tensors', function()
    local d = lumen.randn(2, 3):cuda()
    local ok, e = pcall(function() local r = d + d; return r end)
    assert(not ok and tostring(e):find('lumen.add: first input is on cuda; this op runs on the CPU only so far', 1, true),
      'unexpected: ' .. tostring(e))
    return tostring(e):match('lumen%.add: .*')
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
