-- lumen: tensors, autodiff and medical imaging on LuaJIT.
-- local lumen = require 'lumen'
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

local lumen = { core = core }
lumen.version = ffi.string(C.lm_version())

-- Each family module adds its functions to lumen and methods to tensors.
for _, name in ipairs { 'tensor', 'elementwise', 'reduce', 'linalg', 'shape', 'index', 'random', 'io', 'print', 'plugin', 'autograd', 'device', 'amp' } do
  local ok, mod = pcall(require, 'lumen.' .. name)
  if ok then
    mod(lumen)
  elseif not tostring(mod):find("module 'lumen." .. name .. "' not found", 1, true) then
    error(mod, 0)
  end
end

function lumen.set_num_threads(n)
  if type(n) ~= 'number' or n < 1 then error('lumen.set_num_threads: expected a positive integer', 2) end
  C.lm_set_num_threads(ctx, n)
end
function lumen.get_num_threads() return C.lm_get_num_threads(ctx) end

-- memory(device), empty_cache(device), reset_peak_memory(device): device.lua

-- clock() -> seconds on a monotonic clock, for timing steps.
if not pcall(ffi.typeof, 'lumen_timespec') then -- init.lua may run again (busted)
  ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } lumen_timespec;
  int clock_gettime(int clk, lumen_timespec *ts);
  ]]
end
local ts = ffi.new('lumen_timespec')
function lumen.clock()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

function lumen.blas_info() return ffi.string(C.lm_blas_info()) end

return lumen
