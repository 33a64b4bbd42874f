-- Loading, threads, OpenBLAS's kernel choice and wrapping foreign memory.
local lumen = require 'lumen'
local ffi = require 'ffi'

local function lua_out(env, chunk)
  local cmd = string.format("%s LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' luajit -e %q 2>&1", env, chunk)
  local p = assert(io.popen(cmd))
  local s = p:read('*a')
  p:close()
  return s
end

describe('core', function()
  it('from_ptr wraps FFI memory without copying', function()
    local buf = ffi.new('double[6]', { 1, 2, 3, 4, 5, 6 })
    local t = lumen.from_ptr(buf, { 2, 3 }, 'f64')
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, t:totable())
    buf[4] = 50
    assert.are.equal(50, t[{ 1, 1 }])
    t[{ 0, 2 }] = -3
    assert.are.equal(-3, buf[2])
    local s = lumen.from_ptr(buf, { 3, 2 }, 'f64', { 1, 3 }) -- strided: the transpose
    assert.are.same(t:t():totable(), s:totable())
  end)

  it('sets and reports the thread count', function()
    local n = lumen.get_num_threads()
    lumen.set_num_threads(1)
    assert.are.equal(1, lumen.get_num_threads())
    lumen.set_num_threads(n)
    assert.are.equal(n, lumen.get_num_threads())
    assert.has_error(function() lumen.set_num_threads(0) end)
  end)

  it('chooses OpenBLAS kernels from the CPU unless the user chose', function()
    local flags = assert(io.open('/proc/cpuinfo')):read('*a'):match('\nflags%s*:%s*([^\n]*)')
    local expect = flags:find('avx512f') and flags:find('avx512bw') and 'SkylakeX'
      or (flags:find('avx2') and flags:find(' fma') and '') or nil
    local got = lua_out('env -u OPENBLAS_CORETYPE', "require 'lumen'; io.write(os.getenv('OPENBLAS_CORETYPE') or 'unset')")
    if expect == 'SkylakeX' then assert.are.equal('SkylakeX', got)
    elseif expect == '' then assert.is_truthy(got == 'Zen' or got == 'Haswell', got) end
    local info = lua_out('OPENBLAS_CORETYPE=Sandybridge', "io.write(require('lumen').blas_info())")
    assert.is_truthy(info:find('core=Sandybridge', 1, true), info)
  end)

  -- LuaJIT 2.1.0-beta3 once its trace is compiled: with one shared struct,
  -- the second read of a field came from the first call (core.lua)
  it('reads the layouts of two tensors right in a hot loop', function()
    local core = lumen.core
    local a, b = lumen.randn(4, 6), lumen.randn(6)
    local wrong = 0
    for _ = 1, 2000 do
      local na = core.info(a).ndim
      local nb = core.info(b).ndim
      if na ~= 2 or nb ~= 1 then wrong = wrong + 1 end
    end
    assert.are.equal(0, wrong)
  end)

  it('a missing library gives a clear error', function()
    local out = lua_out('LUMEN_LIB=/nonexistent/liblumen.so', "require 'lumen'")
    assert.is_truthy(out:find('lumen: cannot load liblumen.so', 1, true), out)
  end)
end)
