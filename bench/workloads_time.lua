-- workloads_time.lua: the lumen side of the workload benchmarks.
--   luajit bench/workloads_time.lua [name ...]   (default: all five)
-- Prints "<name> <median step seconds> <iters>" per workload, or
-- "<name> NA <reason>". A step is what torch_bench.py times: zero_grad,
-- forward, loss, backward, SGD(lr 0.01, momentum 0.9) step, loss read back.
local lumen = require 'lumen'
local optim = require 'lumen.optim'
local W = dofile((arg and arg[0] or 'bench/workloads_time.lua'):gsub('workloads_time%.lua$', 'workloads.lua'))
local clock = lumen.clock

local ITERS = tonumber(os.getenv('BENCH_ITERS') or 5)
local WARMUP = tonumber(os.getenv('BENCH_WARMUP') or 2)
lumen.set_num_threads(tonumber(os.getenv('BENCH_THREADS') or 2))

local function time_one(name)
  local w = W.build(name)
  local opt = optim.SGD(w.model:parameters(), { lr = 0.01, momentum = 0.9 })
  w.model:train()
  local function step()
    opt:zero_grad()
    local loss = w.loss(w.model(unpack(w.inputs)), w.target)
    loss:backward()
    opt:step()
    return loss:item()
  end
  for _ = 1, WARMUP do step() end
  local ts = {}
  for i = 1, ITERS do
    collectgarbage('collect')
    local t0 = clock()
    step()
    ts[i] = clock() - t0
  end
  table.sort(ts)
  return ts[math.floor((#ts + 1) / 2)]
end

local names = { ... }
if #names == 0 then names = W.names end
for _, name in ipairs(names) do
  local ok, t = pcall(time_one, name)
  if ok then
    print(string.format('%s %.6f %d', name, t, ITERS))
  else
    io.stderr:write(name, ': ', tostring(t), '\n')
    print(name .. ' NA ' .. tostring(t):gsub('%s+', '_'):sub(1, 60))
  end
  io.stdout:flush()
end
