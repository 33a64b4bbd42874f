-- module.lua: nn.Module, the base of every layer and network.
--
--   local Block = nn.Module:extend('Block')
--   function Block:__init(c) self.conv = nn.Conv2d(c, c, 3, {padding = 1}) end
--   function Block:forward(x) return lumen.relu(self.conv(x)) end
--
-- Parameters and buffers are registered by name (self:param, self:buffer)
-- and live in plain fields; a module assigned to a new field becomes a child.
-- Names follow torch's state_dict keys ("enc.0.weight"), so weights move
-- between the two.
return function(nn, lumen)
  local core = lumen.core
  local Module = { __name = 'Module' }
  Module.__index = Module
  nn.Module = Module

  local function is_module(v) return type(v) == 'table' and getmetatable(v) ~= nil and v._nn_names ~= nil end
  nn.is_module = is_module

  local function setup(o)
    rawset(o, '_nn_names', { params = {}, buffers = {}, children = {} })
    rawset(o, 'training', true)
  end

  -- A new field holding a module registers it as a child.
  Module.__newindex = function(o, k, v)
    if is_module(v) then o:add(k, v) else rawset(o, k, v) end
  end
  Module.__call = function(o, ...) return o:forward(...) end
  Module.__tostring = function(o) return o:tree() end

  -- Constructing: an error raised inside lumen's own files (a bad
  -- argument to a layer) is reported at the line that built the module.
  local lib_dir = debug.getinfo(1, 'S').source:gsub('^@', ''):match('^(.*/)nn/module%.lua$') or '\0'
  local class_mt = {
    __call = function(cls, ...)
      local o = setmetatable({}, cls)
      setup(o)
      local ok, err = pcall(o.__init, o, ...)
      if not ok then
        if type(err) == 'string' then
          if err:sub(1, #lib_dir) == lib_dir then err = err:gsub('^[^:]*:%d+: ', '', 1) end
          if err:find('^lumen[.:]') then error(err, 2) end
        end
        error(err, 0)
      end
      return o
    end,
  }

  -- Module:extend(name) -> a class; calling it constructs an instance.
  function Module:extend(name)
    local cls = { __name = name, __index = nil, __parent = self }
    for _, k in ipairs { '__newindex', '__call', '__tostring' } do cls[k] = self[k] end
    cls.__index = cls
    return setmetatable(cls, { __index = self, __call = class_mt.__call })
  end
  setmetatable(Module, class_mt)

  function Module:__init() end
  function Module:forward() error('lumen.nn: ' .. self.__name .. ' has no forward', 2) end

  local function list_add(list, name)
    for _, n in ipairs(list) do if n == name then return end end
    list[#list + 1] = name
  end

  local function check_name(self, what, name)
    if type(name) ~= 'string' and type(name) ~= 'number' then
      error(string.format('lumen.nn: %s name must be a string, got %s', what, type(name)), 3)
    end
    return tostring(name)
  end

  -- self:param(name, t): t becomes a trainable parameter (nil: declared absent).
  function Module:param(name, t)
    name = check_name(self, 'parameter', name)
    if t ~= nil and not lumen.is_tensor(t) then
      error(string.format("lumen.nn: parameter '%s' must be a tensor, got %s", name, type(t)), 2)
    end
    if t ~= nil and not t.requires_grad then t:requires_grad_(true) end
    list_add(self._nn_names.params, name)
    rawset(self, name, t)
    return t
  end

  function Module:buffer(name, t)
    name = check_name(self, 'buffer', name)
    if t ~= nil and not lumen.is_tensor(t) then
      error(string.format("lumen.nn: buffer '%s' must be a tensor, got %s", name, type(t)), 2)
    end
    list_add(self._nn_names.buffers, name)
    rawset(self, name, t)
    return t
  end

  function Module:add(name, m)
    name = check_name(self, 'child', name)
    if not is_module(m) then error(string.format("lumen.nn: child '%s' must be a module, got %s", name, type(m)), 2) end
    list_add(self._nn_names.children, name)
    rawset(self, name, m)
    return m
  end

  -- Ordered {name, module} pairs of the direct children.
  function Module:named_children()
    local out = {}
    for _, n in ipairs(self._nn_names.children) do
      local m = rawget(self, n)
      if m then out[#out + 1] = { n, m } end
    end
    return out
  end
  function Module:children()
    local out = {}
    for _, p in ipairs(self:named_children()) do out[#out + 1] = p[2] end
    return out
  end

  -- Depth first: own entries, then each child's with "child." prefixed.
  local function collect(self, kind, prefix, out)
    for _, n in ipairs(self._nn_names[kind]) do
      local t = rawget(self, n)
      if t ~= nil then out[#out + 1] = { prefix .. n, t } end
    end
    for _, c in ipairs(self:named_children()) do collect(c[2], kind, prefix .. c[1] .. '.', out) end
    return out
  end
  function Module:named_parameters() return collect(self, 'params', '', {}) end
  function Module:named_buffers() return collect(self, 'buffers', '', {}) end
  function Module:parameters()
    local out = {}
    for _, p in ipairs(self:named_parameters()) do out[#out + 1] = p[2] end
    return out
  end
  function Module:buffers()
    local out = {}
    for _, p in ipairs(self:named_buffers()) do out[#out + 1] = p[2] end
    return out
  end
  function Module:num_parameters()
    local n = 0
    for _, p in ipairs(self:named_parameters()) do n = n + p[2]:numel() end
    return n
  end

  function Module:modules()
    local out = { self }
    for _, c in ipairs(self:children()) do
      for _, m in ipairs(c:modules()) do out[#out + 1] = m end
    end
    return out
  end
  function Module:apply(fn)
    for _, m in ipairs(self:modules()) do fn(m) end
    return self
  end

  function Module:train(mode)
    if mode == nil then mode = true end
    for _, m in ipairs(self:modules()) do rawset(m, 'training', mode and true or false) end
    return self
  end
  function Module:eval() return self:train(false) end

  function Module:zero_grad()
    for _, p in ipairs(self:named_parameters()) do p[2].grad = nil end
  end

  -- state_dict() -> {name = tensor} of parameters and buffers (detached,
  -- sharing memory), and the ordered names as its second result.
  function Module:state_dict()
    local sd, names = {}, {}
    for _, kind in ipairs { 'params', 'buffers' } do
      for _, p in ipairs(collect(self, kind, '', {})) do
        sd[p[1]] = p[2]:detach()
        names[#names + 1] = p[1]
      end
    end
    return sd, names
  end

  -- Copies values in place; strict (default) requires the same names.
  function Module:load_state_dict(sd, strict)
    if type(sd) ~= 'table' then error('lumen.nn.load_state_dict: expected a table name -> tensor, got ' .. type(sd), 2) end
    if strict == nil then strict = true end
    local seen = {}
    local own = collect(self, 'params', '', {})
    for _, b in ipairs(collect(self, 'buffers', '', {})) do own[#own + 1] = b end
    local copies = {}
    for _, p in ipairs(own) do
      local name, t = p[1], p[2]
      local v = sd[name]
      seen[name] = true
      if v == nil then
        if strict then error("lumen.nn.load_state_dict: '" .. name .. "' is missing from the state dict", 2) end
      elseif not lumen.is_tensor(v) then
        error(string.format("lumen.nn.load_state_dict: '%s' is a %s, expected a tensor", name, type(v)), 2)
      else
        local a, b = table.concat(t:size(), 'x'), table.concat(v:size(), 'x')
        if a ~= b then
          error(string.format("lumen.nn.load_state_dict: '%s' has shape %s in the state dict, expected %s",
            name, b == '' and 'scalar' or b, a == '' and 'scalar' or a), 2)
        end
        copies[#copies + 1] = { t, v }
      end
    end
    if strict then
      local extra = {}
      for k in pairs(sd) do if not seen[k] then extra[#extra + 1] = k end end
      table.sort(extra)
      if #extra > 0 then
        error("lumen.nn.load_state_dict: unexpected key" .. (#extra > 1 and 's' or '') .. ' ' .. table.concat(extra, ', '), 2)
      end
    end
    lumen.no_grad(function() for _, c in ipairs(copies) do c[1]:copy_(c[2]) end end)
    return self
  end

  -- to(dtype), to(device), to{device=, dtype=}: moves and converts the
  -- parameters (still leaves that require grad; gradients are dropped) and
  -- buffers (all of them move; only float ones change dtype).
  function Module:to(a, b)
    local device, dtype
    for _, v in ipairs { a, b } do
      if type(v) == 'table' then
        core.options(v, 'nn.to', { 'device', 'dtype' }, 3)
        device, dtype = v.device or device, v.dtype or dtype
      elseif core.is_device(v) then device = v
      elseif v ~= nil then dtype = v end
    end
    if dtype then core.dtype_code(dtype, 2) end
    if device and device ~= 'cpu' and not lumen.cuda.is_available() then
      error('lumen.nn.to: CUDA is not available: ' .. lumen.cuda.status().reason, 2)
    end
    for _, m in ipairs(self:modules()) do
      for _, n in ipairs(m._nn_names.params) do
        local t = rawget(m, n)
        if t then rawset(m, n, t:detach():to { device = device, dtype = dtype }:requires_grad_(true)) end
      end
      for _, n in ipairs(m._nn_names.buffers) do
        local t = rawget(m, n)
        if t then
          local float = t:dtype() == 'f32' or t:dtype() == 'f64'
          rawset(m, n, t:to { device = device, dtype = float and dtype or nil })
        end
      end
    end
    return self
  end

  local function count_str(n)
    if n >= 1e6 then return string.format('%.2fM', n / 1e6) end
    if n >= 1e4 then return string.format('%.1fK', n / 1e3) end
    return tostring(n)
  end

  -- The printed tree: one line per module with its own settings and the
  -- parameters it holds with its children.
  function Module:tree(indent, name)
    indent = indent or ''
    local extra = self.extra_repr and self:extra_repr() or ''
    local line = indent .. (name and ('(' .. name .. '): ') or '') .. self.__name
    if extra ~= '' then line = line .. '(' .. extra .. ')' end
    local n = self:num_parameters()
    if n > 0 then line = line .. '  [' .. count_str(n) .. ' params]' end
    local lines = { line }
    for _, c in ipairs(self:named_children()) do lines[#lines + 1] = c[2]:tree(indent .. '  ', c[1]) end
    return table.concat(lines, '\n')
  end
end
