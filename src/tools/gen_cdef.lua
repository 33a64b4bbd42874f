-- gen_cdef.lua: copies the FFI region of lumen.h into lua/lumen/cdef.lua.
-- usage: luajit src/tools/gen_cdef.lua src/lumen.h lua/lumen/cdef.lua
-- With only the header argument it prints the generated text.
local header, out = arg[1], arg[2]
local f = assert(io.open(header, "rb"))
local text = f:read("*a")
f:close()
local region = text:match("/%* LM_CDEF_BEGIN %*/\n(.-)/%* LM_CDEF_END %*/")
assert(region, "gen_cdef: no LM_CDEF_BEGIN/LM_CDEF_END region in " .. header)
local body = "-- Generated from src/lumen.h by src/tools/gen_cdef.lua (make cdef). Do not edit.\n"
  .. "return [==[\n" .. region .. "]==]\n"
if not out then io.write(body) return end
local o = assert(io.open(out, "wb"))
o:write(body)
o:close()
