-- The five benchmark networks (bench/workloads.lua) against PyTorch: from
-- the same weights and inputs, one training step's loss and every
-- parameter gradient, in float64 (to 1e-9) and float32 (within 3x torch's
-- own float32 error, at least 1e-4). Smaller inputs than `make bench` uses.
local lumen = require 'lumen'
local W = dofile('bench/workloads.lua')
local py = os.getenv('LUMEN_PYTHON') or '/usr/bin/python3'

describe('benchmark workloads match PyTorch for one training step', function()
  for _, name in ipairs(W.names) do
    it(name, function()
      local file = os.tmpname()
      assert.are.equal(0, os.execute(string.format('%s bench/workloads_torch.py export %s %s', py, name, file)))
      for _, dtype in ipairs { 'f64', 'f32' } do
        local ok, worst, report = W.check(name, file, dtype)
        assert(ok, string.format('worst error / tolerance %.3g\n%s', worst, report))
      end
      os.remove(file)
    end)
  end
end)
