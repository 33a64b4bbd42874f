-- plugin.lua: loading plugins (shared objects written against src/plugin.h)
-- and calling their ops.
--
--   local p = lumen.load_plugin('clip_relu')   -- or a path to a .so
--   local y = p.clip_relu(x, 2.0)              -- inputs, then numeric params
--   local gx = p.clip_relu_backward({x}, {y}, {gy}, 2.0)
--
-- Each op becomes p.<op>(inputs..., params...): the first n_in arguments are
-- the input tensors, the rest the op's params (numbers; booleans count as
-- 1/0; a single table of numbers works too); it returns the op's outputs.
-- p.<op>_backward(inputs, outputs, grad_outputs, params...) takes three lists
-- of tensors and returns one gradient per input (nil where the op gives
-- none). p.name, p.version, p.path and p.ops ({name=, n_in=, n_out=, id=})
-- describe the plugin. Plugins stay loaded for the life of the process.
--
-- A name (no '/' and no '.so') is looked up as <build>/plugins/<name>.so,
-- then <root>/plugins/<name>/<name>.so, then <dir>/<name>.so for each dir of
-- $LUMEN_PLUGIN_PATH (colon-separated). <build> is the directory of the
-- liblumen.so in use.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

local M = {}

-- Directories searched for plugins by name, in order.
local function build_dir()
  return core.libpath:match('^(.*)/[^/]*$') or (core.root .. '/build')
end
M.build_dir = build_dir

local function env_dirs()
  local dirs = {}
  for d in (os.getenv('LUMEN_PLUGIN_PATH') or ''):gmatch('[^:]+') do dirs[#dirs + 1] = d end
  return dirs
end

local function exists(path)
  local f = io.open(path, 'rb')
  if f then f:close() end
  return f ~= nil
end

local function candidates(name)
  local list = { build_dir() .. '/plugins/' .. name .. '.so', core.root .. '/plugins/' .. name .. '/' .. name .. '.so' }
  for _, d in ipairs(env_dirs()) do list[#list + 1] = d .. '/' .. name .. '.so' end
  return list
end

local function resolve(name)
  if name:find('/', 1, true) or name:match('%.so[%.%d]*$') then return name end
  local list = candidates(name)
  for _, p in ipairs(list) do
    if exists(p) then return p end
  end
  return nil, string.format("lumen.load_plugin: no plugin '%s' (looked for %s)", name, table.concat(list, ', '))
end

local handle_out = ffi.new('lm_plugin_handle*[1]')
local cache = {} -- handle address -> plugin table (one per loaded plugin)

local function tensor_list(op, what, n, ...)
  local arr = ffi.new('lm_tensor*[?]', math.max(n, 1))
  -- the tensors stay alive in the caller's arguments during the call
  for i = 1, n do arr[i - 1] = core.handle(select(i, ...), op, string.format('%s %d', what, i)) end
  return arr
end

-- The numeric params from a list of Lua values (or one table of numbers).
local function param_array(op, ...)
  local n = select('#', ...)
  local vals = { ... }
  if n == 1 and type(vals[1]) == 'table' and not core.is_tensor(vals[1]) then
    vals = vals[1]
    n = #vals
  end
  local arr = ffi.new('double[?]', math.max(n, 1))
  for i = 1, n do
    local v = vals[i]
    if type(v) == 'boolean' then v = v and 1 or 0 end
    if type(v) ~= 'number' then
      error(string.format('lumen.%s: param %d is %s, expected a number', op, i, type(v)), 3)
    end
    arr[i - 1] = v
  end
  return arr, n
end

local function make_forward(op)
  local name, n_in, n_out, id = op.name, op.n_in, op.n_out, op.id
  local outs = ffi.new('lm_tensor*[?]', n_out)
  return function(...)
    local nargs = select('#', ...)
    if nargs < n_in then
      error(string.format('lumen.%s: expected %d input tensor%s, got %d', name, n_in, n_in == 1 and '' or 's', nargs), 2)
    end
    for i = 1, n_in do
      if not core.is_tensor((select(i, ...))) then
        error(string.format('lumen.%s: input %d must be a tensor, got %s (the op takes %d input%s, then its params)',
          name, i, type((select(i, ...))), n_in, n_in == 1 and '' or 's'), 2)
      end
    end
    if nargs > n_in and core.is_tensor((select(n_in + 1, ...))) then
      local k = n_in
      while k < nargs and core.is_tensor((select(k + 1, ...))) do k = k + 1 end
      error(string.format('lumen.%s: expected %d input tensor%s, got %d', name, n_in, n_in == 1 and '' or 's', k), 2)
    end
    local ins = tensor_list(name, 'input', n_in, ...)
    local params, np = param_array(name, select(n_in + 1, ...))
    core.check(C.lm_op_forward(ctx, id, n_in, ins, params, np, outs), 2)
    local res = {}
    for i = 1, n_out do
      res[i] = core.wrap(outs[i - 1])
      outs[i - 1] = nil
    end
    return unpack(res, 1, n_out)
  end
end

local function make_backward(op)
  local name, n_in, n_out, id = op.name, op.n_in, op.n_out, op.id
  return function(inputs, outputs, grads, ...)
    for _, l in ipairs { { inputs, 'inputs', n_in }, { outputs, 'outputs', n_out }, { grads, 'grad_outputs', n_out } } do
      if type(l[1]) ~= 'table' or core.is_tensor(l[1]) then
        error(string.format('lumen.%s_backward: %s must be a list of %d tensors', name, l[2], l[3]), 2)
      end
      if #l[1] ~= l[3] then
        error(string.format('lumen.%s_backward: expected %d %s, got %d', name, l[3], l[2], #l[1]), 2)
      end
    end
    local ins = tensor_list(name .. '_backward', 'input', n_in, unpack(inputs, 1, n_in))
    local outs = tensor_list(name .. '_backward', 'output', n_out, unpack(outputs, 1, n_out))
    local gouts = tensor_list(name .. '_backward', 'grad_output', n_out, unpack(grads, 1, n_out))
    local params, np = param_array(name .. '_backward', ...)
    local gin = ffi.new('lm_tensor*[?]', math.max(n_in, 1))
    core.check(C.lm_op_backward(ctx, id, n_in, ins, outs, gouts, params, np, gin), 2)
    local res = {}
    for i = 1, n_in do
      if gin[i - 1] ~= nil then res[i] = core.wrap(gin[i - 1]) end
    end
    return unpack(res, 1, n_in)
  end
end

-- open(path) -> the plugin table (the same table when loaded again), or
-- nil and the reason.
local function open(path)
  handle_out[0] = nil
  if C.lm_plugin_load(ctx, path, handle_out) ~= 0 then
    local msg = ffi.string(C.lm_ctx_errmsg(ctx))
    C.lm_ctx_clear_error(ctx)
    return nil, 'lumen.' .. msg
  end
  local h = handle_out[0]
  local key = tostring(ffi.cast('uintptr_t', h))
  if cache[key] then return cache[key] end
  local p = { name = ffi.string(C.lm_plugin_name(h)), version = ffi.string(C.lm_plugin_version(h)), path = path, ops = {} }
  local nin, nout, idb = ffi.new('int32_t[1]'), ffi.new('int32_t[1]'), ffi.new('int32_t[1]')
  for i = 0, C.lm_plugin_op_count(h) - 1 do
    local op = { id = C.lm_plugin_op_id(h, i), name = ffi.string(C.lm_plugin_op_name(h, i)) }
    if C.lm_op_lookup(ctx, op.name, idb, nin, nout) ~= 0 then
      local msg = ffi.string(C.lm_ctx_errmsg(ctx))
      C.lm_ctx_clear_error(ctx)
      return nil, 'lumen.' .. msg
    end
    op.n_in, op.n_out = nin[0], nout[0]
    p.ops[#p.ops + 1] = op
    p[op.name] = make_forward(op)
    p[op.name .. '_backward'] = make_backward(op)
  end
  cache[key] = p
  return p
end

function M.load(name_or_path)
  if type(name_or_path) ~= 'string' or name_or_path == '' then
    error('lumen.load_plugin: expected a plugin name or a path to a .so, got ' .. tostring(name_or_path), 2)
  end
  local path, why = resolve(name_or_path)
  if not path then error(why, 2) end
  local p, msg = open(path)
  if not p then error(msg, 2) end
  return p
end

local function list_dir(dir)
  local names = {}
  local f = io.popen("ls -1p '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null")
  if f then
    for line in f:lines() do names[#names + 1] = line end
    f:close()
  end
  return names
end

-- plugins_found() -> a list, by name, of { name=, path=, plugin= } for the
-- plugins that load and { name=, path=, error= } for the others: every
-- plugins/<name>/ source directory (built or not) and every .so in
-- <build>/plugins and in the $LUMEN_PLUGIN_PATH directories.
function M.found()
  local seen, list = {}, {}
  local function add(name, path)
    if seen[path or name] then return end
    seen[path or name] = true
    local e = { name = name, path = path }
    if not path then
      e.error = 'not built (run make)'
    else
      e.plugin, e.error = open(path)
    end
    list[#list + 1] = e
  end
  for _, entry in ipairs(list_dir(core.root .. '/plugins')) do
    local name = entry:match('^(.-)/$')
    if name then
      local path
      for _, c in ipairs(candidates(name)) do
        if exists(c) then path = c; break end
      end
      add(name, path)
    end
  end
  local dirs = { build_dir() .. '/plugins' }
  for _, d in ipairs(env_dirs()) do dirs[#dirs + 1] = d end
  for _, d in ipairs(dirs) do
    for _, entry in ipairs(list_dir(d)) do
      local name = entry:match('^(.-)%.so$')
      if name and not seen[name] then add(name, d .. '/' .. entry) end
    end
  end
  table.sort(list, function(a, b) return a.name < b.name end)
  return list
end

return function(lumen)
  lumen.load_plugin = M.load
  lumen.plugins_found = M.found
end
