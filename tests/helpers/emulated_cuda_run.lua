-- emulated_cuda_run.lua: `lumen run tests/helpers/emulated_cuda_run.lua
-- RECIPE [options]` runs a recipe with the CUDA backend's kernels compiled
-- for the host (tests/plugin/cuda_emulated.cu) registered as the cuda
-- device, so that `--device cuda` goes through the device paths here.
local ffi = require 'ffi'
pcall(ffi.cdef, 'const lm_backend *lm_cuda_emulated_backend(void);')
local lib = ffi.load(lumen.core.libpath:match('^(.*)/[^/]*$') .. '/tests/plugins/cuda_emulated.so')
lumen.cuda.use_backend(lib.lm_cuda_emulated_backend(), 'CUDA kernels emulated on the host', lib)
local args = { unpack(arg, 2) }
require('lumen.recipe').execute(dofile(arg[1]), args, arg[1])
