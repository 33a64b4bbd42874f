-- harness.lua: the Lua half of the image-reader fuzz target (fuzz_image.c).
--
-- run(path, reader) reads path through lumen.image.read and returns nil when
-- the reader behaved: it returned an image whose data can be read, or it
-- raised an error that names the file ("lumen.image.read: '<path>': ...").
-- Otherwise it returns what went wrong, with the Lua traceback.
local lumen = require 'lumen'
local image = require 'lumen.image'

local M = {}
local PREFIX = 'lumen.image.read: '

-- Touches every element of an image's data in instrumented C code (a sum),
-- so that a tensor whose view overruns its storage shows up under
-- AddressSanitizer.
local function touch(img)
  local d = img.data
  if not lumen.is_tensor(d) then error({ finding = 'img.data is not a tensor but a ' .. type(d) }) end
  if d:numel() > 0 then d:sum() end
  return img
end

local function read(path)
  local img = touch(image.read(path))
  -- an option with its own path: DICOM's YBR to RGB conversion
  if img.meta.color_space == 'YBR_FULL' then touch(image.read(path, { rgb = true })) end
end

function M.run(path, reader)
  local trace
  local ok, err = xpcall(read, function(e)
    trace = debug.traceback('', 2)
    return e
  end, path)
  collectgarbage()
  collectgarbage()
  if ok then return nil end
  if type(err) == 'table' and err.finding then return err.finding end
  if type(err) == 'string' and err:sub(1, #PREFIX) == PREFIX and err:find(path, 1, true) then return nil end
  return string.format('the error does not name the file and the problem:\n  %s%s', tostring(err), trace)
end

return M
