-- oracle.lua: runs PyTorch (Debian's python3-torch) on the same inputs as a
-- spec, in one Python process per batch of cases.
--
--   local results = oracle.run {
--     { 'torch.add(a, b)', a = x, b = y },      -- tensor fields are the inputs;
--                                               -- other fields are ignored
--     { 'torch.sort(a, 1)', a = x },
--   }
--   { "grad_of(lambda x, w: F.conv2d(x, w), [x, w], g)", x = x, w = w, g = g }
--     gives (output, grad of x, grad of w) for sum(output * g).
--   { "run('for k in range(3):\\n    x.mul_(2)\\nresult = x')", x = x }
--     executes statements (loops) in the case's namespace and returns what
--     they leave in result.
--   results[1][1] is the first output as a lumen tensor; results[i].error is
--   PyTorch's error message when the expression raised.
local lumen = require 'lumen'
local json = require 'lumen.json'
local ffi = require 'ffi'

local oracle = {}
oracle.python = os.getenv('LUMEN_PYTHON') or '/usr/bin/python3'
local here = debug.getinfo(1, 'S').source:gsub('^@', ''):match('^(.*)/') or '.'

local function write_raw(path, t)
  local c = t:contiguous()
  local f = assert(io.open(path, 'wb'))
  local esize = lumen.core.C.lm_dtype_size(lumen.core.dtypes[c:dtype()])
  f:write(ffi.string(c:data_ptr(), c:numel() * esize))
  f:close()
end

local function read_raw(path, dtype, shape)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  local t = lumen.empty(shape, dtype)
  if #s > 0 then ffi.copy(t:data_ptr(), s, #s) end
  return t
end

function oracle.run(cases)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute('mkdir -p ' .. dir) == 0)
  local manifest = {}
  for i, case in ipairs(cases) do
    local inputs = {}
    for name, t in pairs(case) do
      if type(name) == 'string' and lumen.is_tensor(t) then
        local file = string.format('in_%d_%s.bin', i, name)
        write_raw(dir .. '/' .. file, t)
        inputs[name] = { file = file, dtype = t:dtype(), shape = json.array(t:size()) }
      end
    end
    manifest[i] = { expr = case[1], inputs = inputs }
  end
  local f = assert(io.open(dir .. '/cases.json', 'w'))
  f:write(json.encode(json.array(manifest)))
  f:close()
  local cmd = string.format('%s %s/oracle.py %s', oracle.python, here, dir)
  assert(os.execute(cmd) == 0, 'oracle: python failed: ' .. cmd)
  f = assert(io.open(dir .. '/results.json'))
  local results = json.decode(f:read('*a'))
  f:close()
  local out = {}
  for i, r in ipairs(results) do
    if r.error then
      out[i] = { error = r.error }
    else
      out[i] = {}
      for k, o in ipairs(r.outputs) do out[i][k] = read_raw(dir .. '/' .. o.file, o.dtype, o.shape) end
    end
  end
  os.execute('rm -rf ' .. dir)
  return out
end

return oracle
