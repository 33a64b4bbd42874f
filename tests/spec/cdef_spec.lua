-- The FFI declarations are generated from lumen.h: the committed file must
-- match a fresh generation, and the struct layouts must agree with C's.
local lumen = require 'lumen'
local ffi = require 'ffi'

local function read(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end

describe('cdef', function()
  it('lua/lumen/cdef.lua is what src/tools/gen_cdef.lua makes from lumen.h', function()
    local p = assert(io.popen('luajit src/tools/gen_cdef.lua src/lumen.h'))
    local fresh = p:read('*a')
    p:close()
    assert.are.equal(fresh, read('lua/lumen/cdef.lua'), 'cdef.lua is stale: run make cdef')
  end)

  it('struct layouts seen by LuaJIT equal those seen by the C compiler', function()
    local fields = { lm_tensor_info = { 'dtype', 'device', 'ndim', 'contiguous', 'shape', 'stride', 'offset', 'numel', 'data' },
      lm_mem_stats = { 'live_bytes', 'peak_bytes', 'cached_bytes', 'total_allocs' },
      lm_optim_hparams = { 'lr', 'momentum', 'dampening', 'weight_decay', 'beta1', 'beta2', 'eps', 'alpha',
        'nesterov', 'amsgrad', 'decoupled', 'centered', 'maximize' } }
    local src = { '#include <stdio.h>\n#include <stddef.h>\n#include "src/lumen.h"\nint main(void) {\n' }
    local expect = {}
    for st, fs in pairs(fields) do
      src[#src + 1] = string.format('  printf("%s %%zu\\n", sizeof(%s));\n', st, st)
      expect[#expect + 1] = st .. ' ' .. ffi.sizeof(st)
      for _, f in ipairs(fs) do
        src[#src + 1] = string.format('  printf("%s.%s %%zu\\n", offsetof(%s, %s));\n', st, f, st, f)
        expect[#expect + 1] = st .. '.' .. f .. ' ' .. ffi.offsetof(st, f)
      end
    end
    src[#src + 1] = '  return 0;\n}\n'
    local dir = os.tmpname()
    local f = assert(io.open(dir .. '.c', 'w'))
    f:write(table.concat(src))
    f:close()
    assert.are.equal(0, os.execute(string.format('cc -I. -o %s.bin %s.c', dir, dir)))
    local p = assert(io.popen(dir .. '.bin'))
    local got = p:read('*a')
    p:close()
    os.remove(dir .. '.c'); os.remove(dir .. '.bin'); os.remove(dir)
    assert.are.equal(table.concat(expect, '\n') .. '\n', got)
  end)

  it('the library and the Lua files agree on the ABI', function()
    assert.are.equal(lumen.core.C.LM_ABI_MAJOR, math.floor(lumen.core.C.lm_abi_version() / 65536))
  end)
end)
