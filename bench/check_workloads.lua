-- check_workloads.lua: each workload's loss and gradients against PyTorch
-- for one training step from the same weights and inputs.
--   luajit bench/check_workloads.lua [name ...]
local lumen = require 'lumen'
local here = (arg and arg[0] or 'bench/check_workloads.lua'):match('^(.*)/[^/]*$') or 'bench'
local W = dofile(here .. '/workloads.lua')
local py = os.getenv('LUMEN_PYTHON') or '/usr/bin/python3'

local names = { ... }
if #names == 0 then names = W.names end
local failed = 0
for _, name in ipairs(names) do
  local file = os.tmpname()
  if os.execute(string.format('%s %s/workloads_torch.py export %s %s', py, here, name, file)) ~= 0 then
    print(name .. ': the PyTorch export failed')
    failed = failed + 1
  else
    for _, dtype in ipairs { 'f64', 'f32' } do
      local ran, ok, worst, report = pcall(W.check, name, file, dtype)
      if not ran then
        print(name .. ': ' .. tostring(ok))
        failed = failed + 1
      else
        print(report)
        print(string.format('%s %s: worst error / tolerance %.3g (%s)', name, dtype, worst, ok and 'ok' or 'FAILED'))
        if not ok then failed = failed + 1 end
      end
    end
  end
  os.remove(file)
end
os.exit(failed == 0 and 0 or 1)
