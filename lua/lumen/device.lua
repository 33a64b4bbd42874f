-- device.lua: devices and the CUDA backend.
--
--   x:to('cuda'), x:cuda(), x:cpu(), x:device(), x:to{device=, dtype=}
--   lumen.cuda.is_available(), lumen.cuda.status(), lumen.cuda.synchronize()
--   lumen.memory('cuda'), lumen.empty_cache('cuda'), lumen.reset_peak_memory('cuda')
--   lumen.cuda.libraries(): where cuBLAS and cuDNN were found, or where not
--
-- The backend is its own library, <lib dir>/liblumen_cuda.so beside the
-- liblumen in use (or $LUMEN_CUDA_LIB), loaded on first use: lumen on a
-- machine without it, the driver or a GPU runs on the CPU, and
-- lumen.cuda.status().reason says why. Once loaded it registers its table
-- (src/backend.h) with liblumen, which then moves tensors, caches device
-- memory and sends the ops that have device kernels there. The CUDA
-- libraries it needs (cuBLAS now, cuDNN later) are found at run time, not
-- linked: find_library below looks for them when the backend registers and
-- loads what it finds by full path, so that the backend's own dlopen of the
-- soname (src/cuda/blas.cu) gets that copy.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

local M = {}
core.device_module = M -- for core.device_arg (creation functions with a device option)

local function exists(path)
  local f = io.open(path, 'rb')
  if f then f:close() end
  return f ~= nil
end

local function lib_dir() return core.libpath:match('^(.*)/[^/]*$') or (core.root .. '/build') end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Lines printed by a shell command (nil when it cannot run).
local function lines_of(cmd)
  local f = io.popen(cmd)
  if not f then return {} end
  local out = {}
  for line in f:lines() do out[#out + 1] = line end
  f:close()
  return out
end

local function version_str(v) -- 13000 -> '13.0'
  if not v or v <= 0 then return 'unknown' end
  return string.format('%d.%d', math.floor(v / 1000), math.floor(v % 1000 / 10))
end

---------------------------------------------------------------------------
-- Loading the backend. The state lives in core (one per process): the
-- registration in liblumen outlives busted's reloads of this module.

local function load_cuda()
  local s = { available = false, devices = {} }
  local path = os.getenv('LUMEN_CUDA_LIB') or (lib_dir() .. '/liblumen_cuda.so')
  s.library = path
  if os.getenv('LUMEN_NO_CUDA') then
    s.reason = 'LUMEN_NO_CUDA is set'
    return s
  end
  if not exists(path) then
    s.reason = 'no ' .. path .. ' (it is built where nvcc is found)'
    return s
  end
  local ok, lib = pcall(ffi.load, path)
  if not ok then
    s.reason = 'liblumen_cuda.so does not load: ' .. tostring(lib)
    return s
  end
  s.lib = lib
  local v = ffi.new('int32_t[3]')
  lib.lm_cuda_versions(v, v + 1, v + 2)
  s.runtime, s.driver, s.built_with = v[0], v[1], v[2]
  local msg = ffi.new('char[256]')
  local n = lib.lm_cuda_device_count(msg, 256)
  if n < 0 then
    s.reason = ffi.string(msg) .. string.format(' (CUDA runtime %s; driver supports CUDA %s)',
      version_str(s.runtime), s.driver > 0 and version_str(s.driver) or 'none')
    return s
  end
  if n == 0 then
    s.reason = 'no CUDA device'
    return s
  end
  for i = 0, n - 1 do
    lib.lm_cuda_device_describe(i, msg, 256)
    s.devices[i + 1] = ffi.string(msg)
  end
  if C.lm_backend_register(ctx, C.LM_CUDA, lib.lm_cuda_backend()) ~= 0 then
    s.reason = ffi.string(C.lm_ctx_errmsg(ctx))
    C.lm_ctx_clear_error(ctx)
    return s
  end
  s.available = true
  s.find_libraries = true -- M.cuda.libraries() runs once the state is kept (below)
  return s
end

local function state()
  if not core.cuda_state then
    core.cuda_state = load_cuda()
    if core.cuda_state.find_libraries then pcall(M.cuda.libraries) end
  end
  return core.cuda_state
end

M.cuda = {}

-- is_available(): whether tensors can go to 'cuda'.
function M.cuda.is_available() return state().available end

-- status() -> { available=, reason= (when not), library=, devices={names},
-- runtime=, driver=, built_with= (CUDA versions, 1000 * major + 10 * minor) }
function M.cuda.status()
  local s = state()
  return { available = s.available, reason = s.reason, library = s.library, devices = { unpack(s.devices) },
    runtime = s.runtime, driver = s.driver, built_with = s.built_with, backend = s.backend }
end

function M.cuda.device_count() return #state().devices end

-- use_backend(table, label, lib): registers another backend table as 'cuda'
-- (the specs' fake device, tests/plugin/fake_device.c); lib, the ffi.load
-- namespace the table lives in, is kept alive with it (collecting it would
-- unload the library under liblumen). reset() drops it.
function M.cuda.use_backend(be, label, lib)
  local s = core.cuda_state
  if s and s.available then core.check(C.lm_backend_unregister(ctx, C.LM_CUDA), 2) end
  core.check(C.lm_backend_register(ctx, C.LM_CUDA, be), 2)
  core.cuda_state = { available = true, devices = { label or 'registered backend' }, backend = label,
    library = label, lib = lib }
end
function M.cuda.reset()
  if core.cuda_state and core.cuda_state.available then
    collectgarbage('collect')
    core.check(C.lm_backend_unregister(ctx, C.LM_CUDA), 2)
  end
  core.cuda_state = nil
end

function M.cuda.synchronize()
  if not state().available then return end
  core.check(C.lm_device_synchronize(ctx, C.LM_CUDA), 2)
end

-- mem_info() -> free, total bytes as the device reports them
function M.cuda.mem_info()
  local v = ffi.new('int64_t[2]')
  M.require_device(C.LM_CUDA, 'cuda.mem_info', 3)
  core.check(C.lm_device_mem_info(ctx, C.LM_CUDA, v, v + 1), 2)
  return tonumber(v[0]), tonumber(v[1])
end

-- An error at level when device cannot be used, saying why.
function M.require_device(code, op, level)
  if code == C.LM_CPU then return end
  local s = state()
  if not s.available then
    error(string.format('lumen.%s: CUDA is not available: %s', op, s.reason or 'unknown reason'), level + 1)
  end
end

-- A device name ('cpu', 'cuda', 'cuda:0') as its code, or an error.
function M.code(name, op, level)
  local code = core.devices[name]
  if not code then
    error(string.format("lumen.%s: unknown device '%s' (expected 'cpu' or 'cuda')", op, tostring(name)), level + 1)
  end
  return code
end

---------------------------------------------------------------------------
-- Finding the CUDA libraries at run time. Each is looked for, in order:
-- the variable the user sets (LUMEN_CUDNN: libcudnn.so.9 or its folder;
-- LUMEN_CUDA_LIBS: folders for all of them), LD_LIBRARY_PATH, the CUDA
-- toolkit ($CUDA_HOME, /usr/local/cuda), the system's library folders, the
-- nvidia/*/lib folders of Python's site-packages (pip's torch carries
-- cuBLAS and cuDNN there), and last the loader's own search (ld.so.cache).
-- The major version must be the one this build was compiled for: cuBLAS
-- .so.13 for CUDA 13; a .so of another version is reported, not used.

local function split_path(v)
  local t = {}
  for d in (v or ''):gmatch('[^:]+') do t[#t + 1] = d end
  return t
end

-- site-packages folders holding nvidia/, found without running Python:
-- virtualenv and conda variables, a python3 on PATH in a venv's bin/, and
-- the usual system places; Python itself is asked only when these find none.
local site_cache
local function site_packages()
  if site_cache then return site_cache end
  local patterns = {}
  local function add(prefix) -- prefix/lib/python3*/{site,dist}-packages
    patterns[#patterns + 1] = shell_quote(prefix) .. '/lib/python3*/site-packages'
    patterns[#patterns + 1] = shell_quote(prefix) .. '/lib/python3*/dist-packages'
  end
  for _, v in ipairs { 'VIRTUAL_ENV', 'CONDA_PREFIX' } do
    if os.getenv(v) then add(os.getenv(v)) end
  end
  for _, d in ipairs(split_path(os.getenv('PATH'))) do
    if exists(d .. '/python3') then add(d .. '/..') end
  end
  add('/usr/local')
  add('/usr')
  patterns[#patterns + 1] = '/usr/lib/python3/dist-packages'
  if os.getenv('HOME') then add(os.getenv('HOME') .. '/.local') end
  local cmd = 'for d in ' .. table.concat(patterns, ' ') .. '; do [ -d "$d/nvidia" ] && echo "$d"; done 2>/dev/null'
  local found, seen = {}, {}
  for _, d in ipairs(lines_of(cmd)) do
    if not seen[d] then seen[d] = true; found[#found + 1] = d end
  end
  if #found == 0 then
    local py = "python3 -c 'import site; print(\"\\n\".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null"
    for _, d in ipairs(lines_of(py)) do
      if exists(d .. '/nvidia') and not seen[d] then seen[d] = true; found[#found + 1] = d end
    end
  end
  site_cache = found
  return found
end

-- The folders searched for a library, in order, as { dir=, why= }.
local function search_dirs(env_var)
  local dirs = {}
  local function add(d, why) dirs[#dirs + 1] = { dir = d, why = why } end
  if env_var then
    local v = os.getenv(env_var)
    if v and v ~= '' and v ~= '0' then -- LUMEN_CUDNN=0: keep convolutions off cuDNN (src/ops/conv.c)
      for _, d in ipairs(split_path(v)) do
        add(d:match('%.so[%.%d]*$') and d:match('^(.*)/[^/]*$') or d, '$' .. env_var)
      end
    end
  end
  for _, d in ipairs(split_path(os.getenv('LUMEN_CUDA_LIBS'))) do add(d, '$LUMEN_CUDA_LIBS') end
  for _, d in ipairs(split_path(os.getenv('LD_LIBRARY_PATH'))) do add(d, 'LD_LIBRARY_PATH') end
  for _, v in ipairs { 'CUDA_HOME', 'CUDA_PATH' } do
    if os.getenv(v) then add(os.getenv(v) .. '/lib64', '$' .. v) end
  end
  add('/usr/local/cuda/lib64', 'CUDA toolkit')
  add('/usr/local/cuda/targets/x86_64-linux/lib', 'CUDA toolkit')
  add('/usr/lib/x86_64-linux-gnu', 'system')
  add('/usr/lib64', 'system')
  add('/usr/local/lib', 'system')
  for _, sp in ipairs(site_packages()) do
    for _, d in ipairs(lines_of('ls -d ' .. shell_quote(sp) .. '/nvidia/*/lib 2>/dev/null')) do add(d, 'site-packages') end
  end
  return dirs
end

local versions = {
  cudnn = function(lib)
    pcall(ffi.cdef, 'size_t cudnnGetVersion(void);')
    local v = tonumber(lib.cudnnGetVersion()) -- 9.x: major * 10000 + minor * 100 + patch
    return string.format('%d.%d.%d', math.floor(v / 10000), math.floor(v % 10000 / 100), v % 100)
  end,
  cublas = function(lib)
    pcall(ffi.cdef, 'int cublasGetProperty(int type, int *value);')
    local p = ffi.new('int[3]')
    for i = 0, 2 do lib.cublasGetProperty(i, p + i) end
    return string.format('%d.%d.%d', p[0], p[1], p[2])
  end,
}

-- The libraries, by key: soname (the version this build needs), what must
-- be loaded before it from the same folder, and the variable users set.
local LIBS = {
  { key = 'cublas', name = 'cuBLAS', soname = 'libcublas.so.13', stem = 'libcublas.so', before = { 'libcublasLt.so.13' },
    env = 'LUMEN_CUDA_LIBS' },
  { key = 'cudnn', name = 'cuDNN', soname = 'libcudnn.so.9', stem = 'libcudnn.so', before = {}, env = 'LUMEN_CUDNN' },
}

-- Loads lib from dir (and what it needs first); the handle or nil, why.
local function load_from(spec, dir)
  for _, b in ipairs(spec.before) do
    if exists(dir .. '/' .. b) then
      local ok, err = pcall(ffi.load, dir .. '/' .. b)
      if not ok then return nil, tostring(err) end
    end
  end
  local ok, lib = pcall(ffi.load, dir and (dir .. '/' .. spec.soname) or spec.soname)
  if not ok then return nil, tostring(lib) end
  return lib
end

-- find_library(spec[, dirs]) -> { name=, found=path, version=, looked={...},
-- others={paths of other versions}, error= }; dirs (a list of folders)
-- replaces the search, the loader's own too.
local function find_library(spec, only)
  local r = { name = spec.name, soname = spec.soname, looked = {}, others = {} }
  local dirs = search_dirs(spec.env ~= 'LUMEN_CUDA_LIBS' and spec.env or nil)
  if only then
    dirs = {}
    for i, d in ipairs(only) do dirs[i] = { dir = d, why = 'given' } end
  end
  local seen = {}
  for _, d in ipairs(dirs) do
    if not seen[d.dir] then
      seen[d.dir] = true
      r.looked[#r.looked + 1] = d.dir .. ' (' .. d.why .. ')'
      if exists(d.dir .. '/' .. spec.soname) then
        local lib, err = load_from(spec, d.dir)
        if lib then
          r.found, r.lib = d.dir .. '/' .. spec.soname, lib
          break
        end
        r.error = (r.error and r.error .. '; ' or '') .. err
      else
        for _, f in ipairs(lines_of('ls -1 ' .. shell_quote(d.dir) .. ' 2>/dev/null | grep -E "^' ..
          spec.stem:gsub('%.', '\\.') .. '\\.[0-9]+$"')) do
          r.others[#r.others + 1] = d.dir .. '/' .. f
        end
      end
    end
  end
  if not r.found and not only then -- the loader's own search (ld.so.cache)
    r.looked[#r.looked + 1] = "the loader's search path"
    local lib = load_from(spec, nil)
    if lib then r.found, r.lib = spec.soname .. " (the loader's search path)", lib end
  end
  if r.lib then
    local ok, v = pcall(versions[spec.key], r.lib)
    r.version = ok and v or ('unknown: ' .. tostring(v))
  end
  return r
end

-- libraries() -> list of find_library results (cuBLAS, cuDNN), found once.
function M.cuda.libraries()
  if not core.cuda_libraries then
    local list = {}
    for i, spec in ipairs(LIBS) do list[i] = find_library(spec) end
    core.cuda_libraries = list
  end
  return core.cuda_libraries
end

-- find_library(key, dirs): one library ('cublas' or 'cudnn') looked for in
-- the given folders only (the specs' way to see the reports).
function M.cuda.find_library(key, dirs)
  for _, spec in ipairs(LIBS) do
    if spec.key == key then return find_library(spec, dirs) end
  end
  error("lumen.cuda.find_library: unknown library '" .. tostring(key) .. "' (expected cublas or cudnn)", 2)
end

-- One line per library for lumen info.
function M.cuda.library_report()
  local out = {}
  for _, r in ipairs(M.cuda.libraries()) do
    if r.found then
      out[#out + 1] = string.format('%s %s: %s', r.name, r.version or '?', r.found)
    else
      local line = string.format('%s: not found (%s; looked in %s)', r.name, r.soname, table.concat(r.looked, ', '))
      if #r.others > 0 then line = line .. '; other versions there: ' .. table.concat(r.others, ', ') end
      if r.error then line = line .. '; ' .. r.error end
      out[#out + 1] = line
    end
  end
  return out
end

---------------------------------------------------------------------------

return function(lumen)
  local Tensor = core.Tensor
  local to_dtype = Tensor.to -- tensor.lua's: dtypes only
  lumen.cuda = M.cuda

  -- devices() -> { {name='cpu', available=true, count=1}, {name='cuda',
  -- available=, count=, names={...}, reason=} }
  function lumen.devices()
    local s = state()
    return { { name = 'cpu', available = true, count = 1, names = {} },
      { name = 'cuda', available = s.available, count = #s.devices, names = { unpack(s.devices) }, reason = s.reason } }
  end

  -- level: as for error(), counted from the caller of move (3: the caller of
  -- the method that called move). No tail calls below: they would drop the
  -- frames the levels count, and t must stay reachable while a retry after
  -- running out of memory collects garbage.
  local out = ffi.new('lm_tensor*[1]')
  local function to_device(t, code, level)
    local h = core.handle(t, 'to', 'tensor')
    if core.info(t).device == code then return t end
    M.require_device(code, 'to', level + 1)
    out[0] = nil
    local st = C.lm_to_device(ctx, h, code, out)
    if st == C.LM_E_OOM then -- collect dead tensors, return the caches and try once more
      collectgarbage('collect')
      C.lm_mem_empty_cache(ctx)
      if code ~= C.LM_CPU then C.lm_device_empty_cache(ctx, code) end
      C.lm_ctx_clear_error(ctx)
      st = C.lm_to_device(ctx, h, code, out)
    end
    if st ~= 0 then core.fail(level + 1) end
    local r = core.wrap(out[0])
    return r
  end

  local function move(t, dtype, device, level)
    local code = device and M.code(device, 'to', level + 1)
    if code and code ~= C.LM_CPU then
      if dtype then t = to_dtype(t, dtype) end
      t = to_device(t, code, level + 1)
      return t
    end
    if code then t = to_device(t, code, level + 1) end
    if dtype then t = to_dtype(t, dtype) end
    return t
  end

  -- to(dtype), to(device), to(device, dtype), to{device=, dtype=}, to(other
  -- tensor): a copy with that dtype and device (t itself when it has both).
  -- A conversion while moving happens on the CPU (before going to a device,
  -- after leaving it); to(dtype) of a device tensor converts on the device.
  function Tensor.to(t, a, b)
    core.handle(t, 'to', 'tensor')
    local dtype, device
    local function take(v)
      if v == nil then return end
      if core.is_tensor(v) then dtype, device = v:dtype(), v:device()
      elseif type(v) == 'table' then
        core.options(v, 'to', { 'device', 'dtype' }, 3)
        dtype, device = v.dtype or dtype, v.device or device
      elseif core.is_device(v) then device = v
      else dtype = v end
    end
    take(a)
    take(b)
    local r = move(t, dtype, device, 2)
    return r
  end
  function Tensor.cuda(t)
    core.handle(t, 'cuda', 'tensor')
    local r = move(t, nil, 'cuda', 2)
    return r
  end
  function Tensor.cpu(t)
    core.handle(t, 'cpu', 'tensor')
    local r = move(t, nil, 'cpu', 2)
    return r
  end

  -- Pinned (page-locked) host memory, from the CUDA backend: loads it first
  -- (not in a loader's worker threads, whose process has it already).
  core.pinning = function()
    if not core.in_worker then state() end
  end
  -- pin_memory(): a pinned copy of a CPU tensor (t itself when pinned
  -- already, or when no backend can pin: then an ordinary tensor), so that
  -- :to('cuda') goes straight to the DMA and overlaps with device work.
  function Tensor.pin_memory(t)
    local h = core.handle(t, 'pin_memory', 'tensor')
    core.pinning()
    return core.call(C.lm_pin_memory, h, core.out1)
  end
  function Tensor.is_pinned(t)
    return C.lm_is_pinned(core.handle(t, 'is_pinned', 'tensor')) ~= 0
  end

  -- memory([device]) -> {live, peak, cached, allocs, system_allocs}: bytes,
  -- and counts of allocations served and of those the cache could not serve;
  -- memory('pinned'): the pinned host memory's
  function lumen.memory(device)
    local stats = ffi.new('lm_mem_stats') -- fresh: see core.lua's stats_ct
    if device == 'pinned' then
      C.lm_pinned_mem_stats(stats)
    else
      C.lm_device_mem_stats(ctx, M.code(device or 'cpu', 'memory', 2), stats)
    end
    return { live = tonumber(stats.live_bytes), peak = tonumber(stats.peak_bytes),
      cached = tonumber(stats.cached_bytes), allocs = tonumber(stats.total_allocs),
      system_allocs = tonumber(stats.system_allocs) }
  end
  -- empty_cache([device]): returns the cached blocks to the system / device
  function lumen.empty_cache(device)
    local code = M.code(device or 'cpu', 'empty_cache', 2)
    if code ~= C.LM_CPU and not state().available then return end
    core.check(C.lm_device_empty_cache(ctx, code), 2)
  end
  function lumen.reset_peak_memory(device)
    C.lm_device_reset_peak(ctx, M.code(device or 'cpu', 'reset_peak_memory', 2))
  end
end
