-- bench/crf.lua - the crf plugin on a 128^3 volume with 2 labels (run by
-- `make bench`, or `luajit bench/crf.lua` from the source tree):
--
--   dense CRF, 5 iterations, lattice included: time and peak RSS
--     (the reference, Krähenbühl's code as DeepMedic ships it, runs
--      single-threaded in 2.2-4.7 s and 430 MB on these machines: the
--      issue's figures, as that code is not packaged here)
--   graph cut (6 neighbours) on the same volume, against Debian's
--     libmaxflow when libmaxflow-dev and g++ are installed
--
-- The volume is a 128^3 crop of Colin27 (mricron-data) with its brain
-- mask as the truth, the probabilities corrupted as in
-- plugins/crf/spec/colin27_spec.lua; a synthetic sphere when the dataset
-- cannot be fetched. Each measurement runs in its own process, so the
-- peak RSS (VmHWM, reset just before the call) is the call's own.
-- BENCH_THREADS (default 2) threads; BENCH_RUNS (default 3) timed runs,
-- the median reported.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local ffi = require 'ffi'

local N = 128
local threads = tonumber(os.getenv('BENCH_THREADS') or 2)
local runs = tonumber(os.getenv('BENCH_RUNS') or 3)
lumen.set_num_threads(threads)

local function status(field)
  local f = io.open('/proc/self/status')
  if not f then return nil end
  local s = f:read('*a')
  f:close()
  return tonumber(s:match(field .. ':%s*(%d+) kB'))
end
-- CPU seconds (user + system) this process has used, all threads.
local function cpu_seconds()
  local f = io.open('/proc/self/stat')
  if not f then return 0 end
  local s = f:read('*a')
  f:close()
  local fields = {}
  for x in s:gsub('^.-%) ', ''):gmatch('%S+') do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime in ticks of 1/100 s
end
local function reset_peak()
  local f = io.open('/proc/self/clear_refs', 'w')
  if f then f:write('5'); f:close() end
end
local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)]
end

-- The volume: image (f32 128^3), truth (i64) and probabilities (2 x 128^3).
local function volume()
  local img, truth, source
  local ok, cases = pcall(function() return require('lumen.data').cases('colin27') end)
  if ok then
    local image = require 'lumen.image'
    local t1 = image.read(cases[1].image).data:to('f32')
    local mask = image.read(cases[1].label).data:gt(0)
    local st = {}
    for a = 0, 2 do st[a + 1] = math.floor((t1:size(a) - N) / 2) end
    local function crop(t) return t:narrow(0, st[1], N):narrow(1, st[2], N):narrow(2, st[3], N):contiguous() end
    img, truth, source = crop(t1), crop(mask):to('i64'), 'Colin27 crop (brain mask)'
  else
    local ax = lumen.arange(N):to('f32')
    local r2 = (ax:reshape(N, 1, 1) - 64) ^ 2 + (ax:reshape(1, N, 1) - 60) ^ 2 + (ax:reshape(1, 1, N) - 70) ^ 2
    truth = r2:lt(45 * 45):to('i64')
    img = truth:to('f32') * 60 + 40 + lumen.randn(N, N, N) * 8
    source = 'synthetic sphere (colin27 unavailable)'
  end
  lumen.manual_seed(7)
  local augment = require 'lumen.augment'
  local logits = nn.F.one_hot(truth:reshape(1, N, N, N), 2, { dim = 1 }):to('f32'):reshape(2, N, N, N) * 3
  local noise = augment.gaussian_filter(lumen.randn(2, N, N, N), 3)
  logits = logits + noise * (1.5 / noise:std():item())
  return img, truth, nn.F.softmax(logits, 0):contiguous(), source
end

local function dice(pred, truth)
  local x, y = pred:eq(1):to('f32'), truth:eq(1):to('f32')
  return 2 * (x * y):sum():item() / (x:sum():item() + y:sum():item())
end

local function write_f64(f, t)
  t = t:to('f64'):contiguous()
  f:write(ffi.string(lumen.core.info(t).data, t:numel() * 8))
end

local mode = arg[1]
if mode == 'dense' or mode == 'grid' then
  local crf = require 'lumen.crf'
  local img, truth, P, source = volume()
  collectgarbage()
  lumen.empty_cache() -- freed blocks the allocator keeps would count as RSS
  if mode == 'dense' then
    local times, cpus, rss, R = {}, {}, nil, nil
    for r = 1, runs do
      R = nil
      collectgarbage()
      lumen.empty_cache()
      local before = status('VmRSS')
      reset_peak()
      local t0, c0 = lumen.clock(), cpu_seconds()
      R = crf.dense{ probs = P, image = img, spacing = { 1, 1, 1 }, smooth = { sigma_mm = 1, weight = 1 },
        bilateral = { sigma_mm = 5, sigma_int = 10, weight = 3 }, iterations = 5 }
      times[r], cpus[r] = lumen.clock() - t0, cpu_seconds() - c0
      if r == 1 then rss = { before = before, peak = status('VmHWM') } end
    end
    print(string.format('dense %.3f %.2f %d %d %.4f %.4f %s', median(times), median(cpus), rss.peak or -1, rss.before or -1,
      dice(P:argmax(0), truth), dice(R:argmax(0), truth), source))
  else
    -- beta as crf.grid computes it, given to both sides
    local x = img:to('f64')
    local s, n = 0, 0
    for a = 0, 2 do
      local d = x:narrow(a, 1, N - 1) - x:narrow(a, 0, N - 1)
      s, n = s + (d * d):sum():item(), n + d:numel()
    end
    local beta = n / (2 * s)
    local U = -(lumen.clamp(P, 1e-6, 1):log())
    local times, cpus, labels, energy = {}, {}, nil, nil
    local before = status('VmRSS')
    reset_peak()
    for r = 1, runs do
      local t0, c0 = lumen.clock(), cpu_seconds()
      labels, energy = crf.grid{ unary = U, image = img, neighbours = 6, lambda = 1, beta = beta }
      times[r], cpus[r] = lumen.clock() - t0, cpu_seconds() - c0
    end
    local peak = status('VmHWM')
    -- the same problem for the peer
    local path = os.getenv('CRF_BENCH_PROBLEM')
    if path then
      local f = assert(io.open(path, 'wb'))
      f:write(ffi.string(ffi.new('int64_t[3]', { N, N, N }), 24))
      write_f64(f, U:select(0, 0))
      write_f64(f, U:select(0, 1))
      for a = 0, 2 do
        local d = x:narrow(a, 1, N - 1) - x:narrow(a, 0, N - 1)
        local pad = { N, N, N }
        pad[a + 1] = 1
        write_f64(f, lumen.cat({ (d * d * -beta):exp(), lumen.zeros(pad, 'f64') }, a))
      end
      f:close()
    end
    print(string.format('grid %.3f %.2f %d %d %.17g %.4f %.4f', median(times), median(cpus), peak or -1, before or -1, energy,
      dice(P:argmax(0), truth), dice(labels, truth)))
  end
  os.exit(0)
end

-- The driver: one process per measurement.
local root = lumen.core.root
local function self_cmd(mode, env)
  return string.format("cd '%s' && %s LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' luajit bench/crf.lua %s", root, env or '', root, root, mode)
end
local function run(cmd)
  local p = io.popen(cmd .. ' 2>&1')
  local out = p:read('*a')
  p:close()
  return out
end

local load = (io.open('/proc/loadavg') or { read = function() return '?' end, close = function() end })
local loadavg = load:read('*l') or '?'
pcall(load.close, load)
print(string.format('crf bench: %d^3, 2 labels, %d threads, median of %d runs; load average %s', N, threads, runs, loadavg:match('^(%S+ %S+ %S+)') or loadavg))

local dense = run(self_cmd('dense'))
local t, cpu, peak, base, d0, d1, source = dense:match('dense (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (.-)\n')
if not t then
  print('dense CRF failed:\n' .. dense)
else
  print('volume: ' .. source)
  print(string.format('%-44s %-22s %s', 'case', 'lumen', 'reference'))
  print(string.format('%-44s %-22s %s', 'dense CRF, 5 iterations, lattice included', string.format('%.2f s', tonumber(t)),
    '2.2-4.7 s (DeepMedic\'s Krähenbühl code, 1 thread)'))
  print(string.format('%-44s %-22s', '  CPU time of the call (both threads)', string.format('%.2f s', tonumber(cpu))))
  print(string.format('%-44s %-22s %s', '  peak RSS during the call (whole process)', string.format('%.0f MB', tonumber(peak) / 1024),
    '430 MB'))
  print(string.format('%-44s %-22s', '  RSS before the call (data, lumen)', string.format('%.0f MB', tonumber(base) / 1024)))
  print(string.format('%-44s %-22s', '  Dice before -> after', string.format('%.4f -> %.4f', tonumber(d0), tonumber(d1))))
end

local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p '" .. dir .. "'")
local peer
if os.execute(string.format("pkg-config --exists maxflow 2>/dev/null && g++ -O2 -o '%s/peer' '%s/plugins/crf/spec/maxflow_peer.cpp' $(pkg-config --cflags --libs maxflow) 2>/dev/null", dir, root)) == 0 then
  peer = dir .. '/peer'
end
local grid = run(self_cmd('grid', string.format("CRF_BENCH_PROBLEM='%s/problem.bin'", dir)))
local gt, gcpu, gpeak, gbase, genergy, g0, g1 = grid:match('grid (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)')
if not gt then
  print('graph cut failed:\n' .. grid)
else
  local ref = 'libmaxflow not installed (apt-get install libmaxflow-dev)'
  if peer then
    local out = run(string.format("'%s' '%s/problem.bin'", peer, dir))
    local flow, secs = out:match('flow (%S+) seconds (%S+)')
    if flow then
      local same = math.abs(tonumber(flow) - tonumber(genergy)) <= 1e-9 * tonumber(flow)
      ref = string.format('%.2f s libmaxflow (1 thread; energy %s)', tonumber(secs), same and 'equal' or ('DIFFERS: ' .. flow))
      local pcpu = out:match('cpu (%S+)')
      if pcpu then ref = ref .. string.format(', %.2f s CPU', tonumber(pcpu)) end
    else
      ref = 'libmaxflow failed: ' .. out
    end
  end
  print(string.format('%-44s %-22s %s', 'graph cut, 6 neighbours, lambda 1 (1 thread)', string.format('%.2f s', tonumber(gt)), ref))
  print(string.format('%-44s %-22s', '  CPU time', string.format('%.2f s', tonumber(gcpu))))
  print(string.format('%-44s %-22s', '  peak RSS (whole process)', string.format('%.0f MB', tonumber(gpeak) / 1024)))
  print(string.format('%-44s %-22s', '  Dice before -> after', string.format('%.4f -> %.4f', tonumber(g0), tonumber(g1))))
end
os.execute("rm -rf '" .. dir .. "'")
