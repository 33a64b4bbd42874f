-- core.lua: loads liblumen, owns the context, boxes tensor handles, turns
-- status codes into Lua errors. Every other module builds on this one.
local ffi = require 'ffi'
local bit = require 'bit'

assert(jit and ffi.abi('gc64'), 'lumen needs LuaJIT 2.1 built with GC64')

-- One core per process: busted reloads modules for each spec file, but the
-- tensor ctype keeps its first metatable, so a second core would split the
-- state (context, RNG, options) in two.
local registry = debug.getregistry()
if registry['lumen.core'] then return registry['lumen.core'] end
local M = {}
registry['lumen.core'] = M

-- The repository root, from this file's path (lua/lumen/core.lua).
local src = debug.getinfo(1, 'S').source:gsub('^@', '')
M.root = os.getenv('LUMEN_ROOT') or src:match('^(.*)/lua/lumen/core%.lua$') or '.'

ffi.cdef(require 'lumen.cdef')
ffi.cdef [[
int setenv(const char *name, const char *value, int overwrite);
char *getenv(const char *name);
typedef struct lumen_tensor_box { lm_tensor *h; } lumen_tensor_box;
]]

-- OpenBLAS picks its kernels when it loads and falls back to slow SSE3 ones
-- on CPUs newer than its release (Debian's 0.3.21 misses AVX-512 Xeons).
-- Choose from the CPU flags before liblumen pulls OpenBLAS in, unless the
-- user already chose.
local function choose_openblas_core()
  if os.getenv('OPENBLAS_CORETYPE') then return end
  local f = io.open('/proc/cpuinfo', 'r')
  if not f then return end
  local info = f:read('*a')
  f:close()
  local flags = ' ' .. (info:match('\nflags%s*:%s*([^\n]*)') or '') .. ' '
  local function has(x) return flags:find(' ' .. x .. ' ', 1, true) ~= nil end
  local core
  if has('avx512f') and has('avx512bw') and has('avx512vl') and has('avx512dq') then
    core = 'SkylakeX'
  elseif has('avx2') and has('fma') then
    core = info:find('AuthenticAMD', 1, true) and 'Zen' or 'Haswell'
  end
  if core then ffi.C.setenv('OPENBLAS_CORETYPE', core, 0) end
end
choose_openblas_core()

-- OpenMP threads that spin after a parallel loop take the cores from the
-- OpenBLAS threads of the GEMM that usually follows (an exp then a 512^2
-- matmul ran 2.2x slower that way; bench case matmul_exp_512_f32). Threaded
-- loops here are large, so sleeping at once costs them nothing measurable.
if not os.getenv('OMP_WAIT_POLICY') and not os.getenv('GOMP_SPINCOUNT') then
  ffi.C.setenv('OMP_WAIT_POLICY', 'PASSIVE', 0)
end

local function load_lib()
  local tried = {}
  local env = os.getenv('LUMEN_LIB')
  for _, p in ipairs { env or M.root .. '/build/liblumen.so', 'liblumen.so' } do
    local ok, lib = pcall(ffi.load, p)
    if ok then return lib, p end
    tried[#tried + 1] = tostring(lib)
  end
  error('lumen: cannot load liblumen.so (run make first)\n  ' .. table.concat(tried, '\n  '), 0)
end
-- Anchored in the module table for the life of the process.
M.C, M.libpath = load_lib()
local C = M.C

if bit.rshift(C.lm_abi_version(), 16) ~= C.LM_ABI_MAJOR then
  error(string.format('lumen: liblumen at %s has ABI %d, these Lua files expect %d (rebuild with make)',
    M.libpath, bit.rshift(C.lm_abi_version(), 16), C.LM_ABI_MAJOR), 0)
end

do
  local p = ffi.new('lm_ctx*[1]')
  assert(C.lm_ctx_new(p) == 0, 'lumen: cannot create a context')
  M.ctx = ffi.gc(p[0], C.lm_ctx_free)
end
local ctx = M.ctx

-- Raises the context's message as a Lua error at the caller's caller.
function M.fail(level)
  local msg = ffi.string(C.lm_ctx_errmsg(ctx))
  C.lm_ctx_clear_error(ctx)
  error('lumen.' .. msg, (level or 2) + 1)
end

-- Raises the context's message under the name op ("matmul: ..." becomes
-- "lumen.mm: ..."), for Lua functions built on another C op. level is as
-- for error(), counted from the caller of fail_as; 0 adds no position.
function M.fail_as(op, level)
  local msg = ffi.string(C.lm_ctx_errmsg(ctx)):gsub('^[%w_]+: ', op .. ': ', 1)
  C.lm_ctx_clear_error(ctx)
  error('lumen.' .. msg, level == 0 and 0 or (level or 2) + 1)
end

-- check(status): errors with the context's message when status is not OK.
function M.check(st, level)
  if st ~= 0 then
    if st == C.LM_E_OOM then
      -- free what the collector can, drop the cache; the caller may retry
      collectgarbage('collect')
      C.lm_mem_empty_cache(ctx)
    end
    M.fail((level or 2) + 1)
  end
end

---------------------------------------------------------------------------
-- dtypes
M.dtypes = { f32 = C.LM_F32, f64 = C.LM_F64, i32 = C.LM_I32, i64 = C.LM_I64, u8 = C.LM_U8, bool = C.LM_BOOL }
local aliases = { float32 = 'f32', float = 'f32', float64 = 'f64', double = 'f64', int32 = 'i32', int = 'i32',
  int64 = 'i64', long = 'i64', uint8 = 'u8', byte = 'u8' }
M.dtype_names = {}
for k, v in pairs(M.dtypes) do M.dtype_names[v] = k end
M.ctypes = { [C.LM_F32] = 'float*', [C.LM_F64] = 'double*', [C.LM_I32] = 'int32_t*', [C.LM_I64] = 'int64_t*',
  [C.LM_U8] = 'uint8_t*', [C.LM_BOOL] = 'uint8_t*' }

-- Accepts 'f32', 'float32', ... or a dtype code; errors on anything else.
function M.dtype_code(d, level)
  if d == nil then return C.LM_F32 end
  if type(d) == 'number' and M.dtype_names[d] then return d end
  local code = M.dtypes[d] or M.dtypes[aliases[d] or '']
  if not code then
    error(string.format("lumen: unknown dtype '%s' (expected f32, f64, i32, i64, u8 or bool)", tostring(d)), (level or 2) + 1)
  end
  return code
end

function M.is_float(code) return code == C.LM_F32 or code == C.LM_F64 end

---------------------------------------------------------------------------
-- tensor boxes: a one-field struct whose finalizer releases the handle.
local Tensor = {}        -- methods
M.Tensor = Tensor
local mt = { __index = Tensor }  -- metamethods; tensor.lua extends it
-- Fields read (t.grad) and assigned (t.grad = nil) through functions.
M.getters, M.setters = {}, {}
M.tensor_mt = mt

local box_ct = ffi.typeof('lumen_tensor_box')
mt.__gc = function(b)
  if b.h ~= nil then
    C.lm_tensor_release(b.h)
    b.h = nil
  end
end
ffi.metatype(box_ct, mt)

function M.is_tensor(x) return ffi.istype(box_ct, x) end

-- GC pacing: LuaJIT's collector does not see tensor memory. After enough
-- bytes have been allocated since the last look, and live memory has really
-- grown by that much (memory released with t:free() does not count), run a
-- full collection to finalize dead boxes. The threshold grows with live
-- memory, so big models do not collect on every step.
local gc_threshold = 32 * 2 ^ 20
local stats = ffi.new('lm_mem_stats')
local live_after_gc = 0
local function pace_gc()
  if C.lm_mem_allocated_since(ctx, 0) < gc_threshold then return end
  C.lm_mem_allocated_since(ctx, 1)
  C.lm_mem_get_stats(ctx, stats)
  if tonumber(stats.live_bytes) - live_after_gc < gc_threshold then return end
  collectgarbage('collect')
  C.lm_mem_get_stats(ctx, stats)
  live_after_gc = tonumber(stats.live_bytes)
  gc_threshold = math.max(32 * 2 ^ 20, live_after_gc / 2)
end

-- wrap(handle): boxes a +1 handle (takes ownership).
function M.wrap(h)
  pace_gc()
  return box_ct(h)
end

local handle_ct = ffi.typeof('lm_tensor*')

-- Out-parameter slots, reused: each call site copies the handle out at once.
M.out1 = ffi.new('lm_tensor*[1]')
M.out2 = ffi.new('lm_tensor*[1]')
M.out3 = ffi.new('lm_tensor*[1]')

-- call(fn, ...): runs a C function whose last argument is a tensor out-slot,
-- checks the status and returns the boxed result.
-- Out of memory: collect dead tensors, return the cache to the system and
-- try once more.
function M.call(fn, ...)
  local out = M.out1
  out[0] = nil
  local st = fn(ctx, ...)
  if st == C.LM_E_OOM then
    -- The collection may free the boxes of the very tensors passed here
    -- (temporaries whose frame a tail call dropped): hold their handles.
    local n, held = select('#', ...), {}
    for i = 1, n do
      local a = select(i, ...)
      if type(a) == 'cdata' and ffi.istype(handle_ct, a) and a ~= nil then
        C.lm_tensor_retain(a)
        held[#held + 1] = a
      end
    end
    collectgarbage('collect')
    C.lm_mem_empty_cache(ctx)
    C.lm_ctx_clear_error(ctx)
    out[0] = nil
    st = fn(ctx, ...)
    for _, a in ipairs(held) do C.lm_tensor_release(a) end
  end
  if st ~= 0 then M.fail(2) end
  return M.wrap(out[0])
end

-- The handle of a tensor argument, or an error naming the op.
function M.handle(t, op, what)
  if not ffi.istype(box_ct, t) then
    error(string.format('lumen.%s: %s must be a tensor, got %s', op, what or 'argument', type(t)), 3)
  end
  local h = t.h
  if h == nil then error(string.format('lumen.%s: %s was freed', op, what or 'tensor'), 3) end
  return h
end

function Tensor.free(t)
  if t.h ~= nil then
    C.lm_tensor_release(t.h)
    t.h = nil
  end
end

local info = ffi.new('lm_tensor_info')
-- Layout snapshot (shared struct: copy what you need before the next call).
function M.info(t)
  C.lm_tensor_get_info(M.handle(t, 'info', 'tensor'), info)
  return info
end

-- host(t): t itself when it is on the CPU, else a CPU copy: for code that
-- reads values through pointers (printing, item, totable, writing files).
function M.host(t)
  local h = M.handle(t, 'to', 'tensor')
  C.lm_tensor_get_info(h, info)
  if info.device == C.LM_CPU then return t end
  return M.call(C.lm_to_device, h, C.LM_CPU, M.out1)
end

-- Device names: 'cpu', 'cuda' (and 'cuda:0', the one device used so far).
M.devices = { cpu = C.LM_CPU, cuda = C.LM_CUDA, ['cuda:0'] = C.LM_CUDA }
M.device_names = { [C.LM_CPU] = 'cpu', [C.LM_CUDA] = 'cuda' }
function M.is_device(v) return type(v) == 'string' and M.devices[v] ~= nil end

-- Registers fn as lumen.name and as the method t:name(...).
function M.export(lumen, name, fn, method_only)
  if not method_only then lumen[name] = fn end
  Tensor[name] = fn
end

-- Checks an integer argument (a dimension, position or count) of op;
-- nil gives default, or an error when there is none.
function M.int_arg(v, op, what, default)
  if v == nil and default ~= nil then return default end
  if type(v) ~= 'number' or v ~= math.floor(v) or math.abs(v) >= 2 ^ 63 then
    error(string.format('lumen.%s: %s must be an integer, got %s', op, what or 'dimension', tostring(v)), 3)
  end
  return v
end

-- A dimension argument; nil stays nil.
function M.dim_arg(d, op)
  if d == nil then return nil end
  return M.int_arg(d, op)
end

-- Checkers of Lua-side arguments and options (the nn layer, schedulers).
-- Messages read "lumen.<op>: ...". level is as for error(), counted from
-- the checker's caller: the default 2 blames the line that called it. It
-- may instead be a function, called only on failure, that returns the
-- level for error() counted from the function calling it (loss.lua walks
-- the stack to the first line outside lumen's files).
local function arg_error(level, fmt, ...)
  local msg = string.format(fmt, ...)
  if type(level) == 'function' then error(msg, level()) end
  error(msg, (level or 2) + 2) -- arg_error, the checker, its caller
end

-- An integer that a double holds exactly.
function M.is_int(v) return type(v) == 'number' and v == math.floor(v) and math.abs(v) < 2 ^ 53 end

-- known: a set (name -> true; listed sorted) or a list of names (listed in
-- its order, for an order that reads better, such as the signature's).
local function option_names(known)
  if known[1] ~= nil then return table.concat(known, ', ') end
  local names = {}
  for n in pairs(known) do names[#names + 1] = n end
  table.sort(names)
  return table.concat(names, ', ')
end
local function is_known(known, k)
  if known[1] == nil then return known[k] ~= nil and known[k] ~= false end
  for _, n in ipairs(known) do
    if n == k then return true end
  end
  return false
end

-- An options table: nil gives {}; anything but a table, or a name not in
-- known, is refused (a typo must not pass silently).
function M.options(opts, op, known, level)
  if opts == nil then return {} end
  if type(opts) ~= 'table' then -- tensors are cdata, refused here too
    arg_error(level, 'lumen.%s: options must be a table {%s}, got %s', op, option_names(known),
      M.is_tensor(opts) and 'a tensor' or type(opts))
  end
  for k in pairs(opts) do
    if not is_known(known, k) then
      arg_error(level, "lumen.%s: unknown option '%s' (expected %s)", op, tostring(k), option_names(known))
    end
  end
  return opts
end

-- A boolean; nil gives default.
function M.flag(v, op, what, default, level)
  if v == nil then return default end
  if type(v) ~= 'boolean' then arg_error(level, 'lumen.%s: %s must be a boolean, got %s', op, what, type(v)) end
  return v
end

-- A number (not NaN); nil gives default.
function M.number(v, op, what, default, level)
  if v == nil then return default end
  if type(v) ~= 'number' or v ~= v then
    arg_error(level, 'lumen.%s: %s must be a number, got %s', op, what, tostring(v))
  end
  return v
end

-- An integer or a list of nd integers (kernel sizes, strides, padding, one
-- per spatial dim) as a new list of nd integers.
function M.int_tuple(v, nd, op, what, level)
  local t = {}
  if M.is_int(v) then
    for i = 1, nd do t[i] = v end
    return t
  end
  if type(v) ~= 'table' or #v ~= nd then
    arg_error(level, 'lumen.%s: %s must be an integer or a list of %d integers, got %s', op, what, nd,
      type(v) == 'table' and ('a list of ' .. #v) or M.is_tensor(v) and 'a tensor' or tostring(v))
  end
  for i = 1, nd do
    if not M.is_int(v[i]) then
      arg_error(level, 'lumen.%s: %s entry %d is %s, expected an integer', op, what, i, tostring(v[i]))
    end
    t[i] = v[i]
  end
  return t
end

return M
