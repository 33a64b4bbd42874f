-- test_backends.lua: the test device backends (tests/plugin/), for specs.
--   local backends = require 'helpers.test_backends'
--   local fake = backends.load('fake_device', 'const lm_backend *lm_fake_backend(void);')  -- nil when not built
--   backends.use(fake.lm_fake_backend(), 'fake device', fake)  -- registers it as the cuda device
local ffi = require 'ffi'
local lumen = require 'lumen'

local backends = {}
local dir = lumen.core.libpath:match('^(.*)/[^/]*$') or 'build'

-- The library build/tests/plugins/<name>.so with decls declared, or nil.
function backends.load(name, decls)
  local path = dir .. '/tests/plugins/' .. name .. '.so'
  local f = io.open(path, 'rb')
  if not f then return nil end
  f:close()
  pcall(ffi.cdef, decls)
  return ffi.load(path)
end

-- Registers a backend table as the cuda device, after releasing what the
-- previous one held.
function backends.use(be, label, lib)
  collectgarbage('collect')
  lumen.cuda.reset()
  lumen.cuda.use_backend(be, label, lib)
end

return backends
