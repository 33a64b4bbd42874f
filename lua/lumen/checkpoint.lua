-- checkpoint.lua: a training run's state in one safetensors file.
--
--   local checkpoint = require 'lumen.checkpoint'
--   checkpoint.save(path, {model = m, optimizer = opt, scheduler = sched, step = 1200, extra = {best = 0.91}})
--   local step, extra = checkpoint.load(path, {model = m, optimizer = opt, scheduler = sched})
-- (scaler = a GradScaler too, optional: its state_dict goes in the metadata)
--
-- The file holds the model's state_dict as tensors 'model.<name>', the
-- optimizer's state tensors as 'optimizer.state.<id>.<name>' (ids number
-- the parameters from 0 across groups, as in opt:state_dict()), and one
-- JSON metadata entry 'lumen.checkpoint' with the step, the random number
-- generator's state, the optimizer's hyperparameters and step counts, the
-- scheduler's state and extra (any value JSON can hold; non-finite numbers
-- are kept too). lumen.save writes it atomically: a failed save leaves the
-- previous file as it was.
--
-- load checks everything before it changes anything: a truncated or corrupt
-- file, a missing or unexpected tensor, or a shape that does not match
-- gives an error naming the file and the tensor, and leaves the model,
-- optimizer, scheduler and generator untouched.
local ffi = require 'ffi'
local lumen = require 'lumen'
local json = require 'lumen.json'
local core = lumen.core
local C, ctx = core.C, core.ctx

local checkpoint = {}
local META_KEY = 'lumen.checkpoint'
local FORMAT_VERSION = 1

local function fail(op, level, fmt, ...)
  error(string.format('lumen.checkpoint.%s: ' .. fmt, op, ...), level + 1)
end

local function shape_str(t)
  local s = t:size()
  return #s == 0 and 'scalar' or table.concat(s, 'x')
end

-- JSON has no infinities or NaN; they travel as {["__float__"] = "inf"}.
local function to_json_value(v)
  if type(v) == 'number' then
    if v ~= v then return { __float__ = 'nan' } end
    if v == math.huge then return { __float__ = 'inf' } end
    if v == -math.huge then return { __float__ = '-inf' } end
    return v
  end
  if type(v) ~= 'table' then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = to_json_value(x) end
  if next(c) == nil and getmetatable(v) == json.array_mt then json.array(c) end
  return c
end

local specials = { nan = 0 / 0, inf = math.huge, ['-inf'] = -math.huge }
local function from_json_value(v)
  if type(v) ~= 'table' then return v end
  if type(v.__float__) == 'string' and specials[v.__float__] and next(v, next(v)) == nil then
    return specials[v.__float__]
  end
  local c = {}
  for k, x in pairs(v) do c[k] = from_json_value(x) end
  return c
end

-- uint64 <-> decimal string (JSON numbers hold 53 bits)
local function u64_str(x) return (tostring(ffi.cast('uint64_t', x)):gsub('ULL$', '')) end
local function parse_u64(s)
  if type(s) ~= 'string' or not s:match('^%d+$') or #s > 20 then return nil end
  local v = ffi.new('uint64_t', 0)
  for i = 1, #s do v = v * 10 + (s:byte(i) - 48) end
  if u64_str(v) ~= s:gsub('^0+(%d)', '%1') then return nil end -- overflowed
  return v
end

-- The optimizer's parameters in id order.
local function param_ids(opt)
  local list = {}
  for gi, g in ipairs(opt.param_groups) do
    for j, p in ipairs(g.params) do list[#list + 1] = { p = p, group = gi, index = j } end
  end
  return list
end

local function check_object(op, level, x, what, needs)
  if x == nil then return end
  if type(x) ~= 'table' then fail(op, level + 1, '%s must be a table, got %s', what, type(x)) end
  for _, m in ipairs(needs) do
    if type(x[m]) ~= 'function' then fail(op, level + 1, '%s has no %s method', what, m) end
  end
end

local function check_args(op, level, path, parts)
  if type(path) ~= 'string' then fail(op, level + 1, 'path must be a string, got %s', type(path)) end
  if parts == nil then parts = {} end
  if type(parts) ~= 'table' then fail(op, level + 1, 'expected a table {model=, optimizer=, ...}, got %s', type(parts)) end
  local allowed = { model = true, optimizer = true, scheduler = true, scaler = true, step = op == 'save', extra = op == 'save' }
  for k in pairs(parts) do
    if not allowed[k] then
      fail(op, level + 1, "unknown field '%s' (expected %s)", tostring(k),
        op == 'save' and 'model, optimizer, scheduler, scaler, step, extra' or 'model, optimizer, scheduler, scaler')
    end
  end
  check_object(op, level + 1, parts.model, 'model', { 'state_dict', 'load_state_dict' })
  check_object(op, level + 1, parts.optimizer, 'optimizer', { 'state_dict', 'load_state_dict' })
  check_object(op, level + 1, parts.scheduler, 'scheduler', { 'state_dict', 'load_state_dict' })
  check_object(op, level + 1, parts.scaler, 'scaler', { 'state_dict', 'load_state_dict', 'is_enabled' })
  return parts
end

-- save(path, {model=, optimizer=, scheduler=, step=, extra=})
function checkpoint.save(path, parts)
  parts = check_args('save', 2, path, parts)
  local tensors, meta = {}, { version = FORMAT_VERSION }
  if parts.step ~= nil then
    if type(parts.step) ~= 'number' then fail('save', 2, 'step must be a number, got %s', type(parts.step)) end
    meta.step = parts.step
  end
  if parts.model then
    local n = 0
    for name, t in pairs(parts.model:state_dict()) do
      if not core.is_tensor(t) then fail('save', 2, "model state '%s' is a %s, expected a tensor", tostring(name), type(t)) end
      tensors['model.' .. name] = t
      n = n + 1
    end
    meta.model = { tensors = n }
  end
  if parts.optimizer then
    local opt = parts.optimizer
    local sd = opt:state_dict()
    local state = {}
    for id, s in pairs(sd.state) do
      local plain = {}
      for k, v in pairs(s) do
        if core.is_tensor(v) then tensors['optimizer.state.' .. id .. '.' .. k] = v else plain[k] = v end
      end
      state[tostring(id)] = plain
    end
    for _, g in ipairs(sd.param_groups) do g.params = json.array(g.params) end
    meta.optimizer = { kind = opt.kind, param_groups = sd.param_groups, state = state }
  end
  if parts.scheduler then meta.scheduler = parts.scheduler:state_dict() end
  if parts.scaler then meta.scaler = parts.scaler:state_dict() end
  if parts.extra ~= nil then meta.extra = parts.extra end
  local seed, offset = ffi.new('uint64_t[1]'), ffi.new('uint64_t[1]')
  C.lm_rng_get_state(ctx, seed, offset)
  meta.rng = { seed = u64_str(seed[0]), offset = u64_str(offset[0]) }

  local ok, text = pcall(json.encode, to_json_value(meta))
  if not ok then fail('save', 2, 'cannot store the metadata as JSON (%s); extra must hold tables, strings, numbers and booleans', text) end
  ok, text = pcall(lumen.save, path, tensors, { [META_KEY] = text })
  if not ok then error((tostring(text):gsub('^lumen%.save: ', 'lumen.checkpoint.save: ')), 2) end
end

-- load(path, {model=, optimizer=, scheduler=}) -> step, extra
function checkpoint.load(path, parts)
  parts = check_args('load', 2, path, parts)
  local function bad(fmt, ...) fail('load', 3, '%s: ' .. fmt, path, ...) end
  local ok, tensors, file_meta = pcall(lumen.load, path)
  if not ok then error((tostring(tensors):gsub('^lumen%.load: ', 'lumen.checkpoint.load: ')), 2) end
  local text = file_meta[META_KEY]
  if not text then bad("not a lumen checkpoint (no '%s' metadata)", META_KEY) end
  local meta
  ok, meta = pcall(json.decode, text)
  if not ok or type(meta) ~= 'table' then bad('the checkpoint metadata is not valid JSON (%s)', tostring(meta)) end
  meta = from_json_value(meta)
  if meta.version ~= FORMAT_VERSION then
    bad('checkpoint format version %s, this lumen reads version %d', tostring(meta.version), FORMAT_VERSION)
  end

  -- every tensor in the file must find its place
  local used = {}

  -- model: the same names and shapes as the model's own state
  local model_sd
  if parts.model then
    if not meta.model then bad('the checkpoint holds no model state') end
    local own = parts.model:state_dict()
    model_sd = {}
    local names = {}
    for name in pairs(own) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
      local key = 'model.' .. name
      local t = tensors[key]
      if not t then bad("tensor '%s' is missing (the model has %s of shape %s)", key, name, shape_str(own[name])) end
      if shape_str(t) ~= shape_str(own[name]) then
        bad("tensor '%s' has shape %s, the model's %s has shape %s", key, shape_str(t), name, shape_str(own[name]))
      end
      model_sd[name] = t
      used[key] = true
    end
  end

  -- optimizer: the same kind, state tensors shaped as their parameters
  local opt_sd
  if parts.optimizer then
    local opt, mo = parts.optimizer, meta.optimizer
    if type(mo) ~= 'table' then bad('the checkpoint holds no optimizer state') end
    if mo.kind ~= opt.kind then
      bad('the optimizer state is of a %s, the optimizer given is a %s', tostring(mo.kind), tostring(opt.kind))
    end
    local ids = param_ids(opt)
    local state = {}
    local saved = type(mo.state) == 'table' and mo.state or {}
    local sids = {}
    for sid in pairs(saved) do sids[#sids + 1] = sid end
    table.sort(sids, function(a, b) return tostring(a) < tostring(b) end)
    for _, sid in ipairs(sids) do
      local plain = saved[sid]
      local id = tonumber(sid)
      if not id or not ids[id + 1] then
        bad('optimizer state for parameter id %s, the optimizer has %d parameters', tostring(sid), #ids)
      end
      if type(plain) ~= 'table' then bad('optimizer state for parameter id %s is not an object', tostring(sid)) end
      state[id] = {}
      for k, v in pairs(plain) do state[id][k] = v end
    end
    local names = {}
    for name in pairs(tensors) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
      local t = tensors[name]
      local sid, k = name:match('^optimizer%.state%.(%d+)%.(.+)$')
      if sid then
        local id = tonumber(sid)
        local target = ids[id + 1]
        if not target then bad("tensor '%s' belongs to parameter id %d, the optimizer has %d parameters", name, id, #ids) end
        if shape_str(t) ~= shape_str(target.p) then
          bad("tensor '%s' has shape %s, its parameter (params[%d] of param group %d) has shape %s", name, shape_str(t),
            target.index, target.group, shape_str(target.p))
        end
        state[id] = state[id] or {}
        state[id][k] = t
        used[name] = true
      end
    end
    opt_sd = { state = state, param_groups = mo.param_groups }
  end
  if parts.scheduler then
    if type(meta.scheduler) ~= 'table' then bad('the checkpoint holds no scheduler state') end
    if meta.scheduler.name ~= parts.scheduler.name then
      bad('the scheduler state is of a %s, the scheduler given is a %s', tostring(meta.scheduler.name),
        tostring(parts.scheduler.name))
    end
  end

  if parts.scaler and parts.scaler:is_enabled() then
    local sc = meta.scaler
    if type(sc) ~= 'table' then bad('the checkpoint holds no scaler state') end
    if type(sc.scale) ~= 'number' or type(sc._growth_tracker) ~= 'number' then
      bad('the scaler state has no scale (saved from a disabled GradScaler?)')
    end
  end

  if parts.model then
    local names = {}
    for name in pairs(tensors) do
      if name:sub(1, 6) == 'model.' and not used[name] then names[#names + 1] = name end
    end
    table.sort(names)
    if names[1] then bad("tensor '%s' matches nothing in the model", names[1]) end
  end

  local seed, offset
  if meta.rng ~= nil then
    seed, offset = parse_u64(type(meta.rng) == 'table' and meta.rng.seed), parse_u64(type(meta.rng) == 'table' and meta.rng.offset)
    if not seed or not offset then bad('the random number generator state is not two decimal integers') end
  end

  -- everything fits: apply
  if opt_sd then
    local ok2, err = pcall(parts.optimizer.load_state_dict, parts.optimizer, opt_sd)
    if not ok2 then bad('%s', (tostring(err):gsub('^lumen%.optim%.[%w]+: load_state_dict: ', 'optimizer state: '))) end
  end
  if model_sd then
    local ok2, err = pcall(parts.model.load_state_dict, parts.model, model_sd)
    if not ok2 then bad('model state: %s', tostring(err)) end
  end
  if parts.scheduler then parts.scheduler:load_state_dict(meta.scheduler) end
  if parts.scaler then parts.scaler:load_state_dict(meta.scaler) end
  if seed then C.lm_rng_set_state(ctx, seed, offset) end
  return meta.step, meta.extra
end

return checkpoint
