-- lumen.crf: the crf plugin's Lua face. A plugin keeps its Lua code with
-- its C sources (plugins/crf/crf.lua, which documents the API); this file
-- only makes `require 'lumen.crf'` find it from wherever lumen is loaded.
local core = require 'lumen.core'
local path = core.root .. '/plugins/crf/crf.lua'
local chunk, err = loadfile(path)
if not chunk then error('lumen.crf: cannot load ' .. path .. ': ' .. tostring(err), 2) end
return chunk()
