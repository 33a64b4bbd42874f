-- autograd.lua: requires_grad, .grad, backward, no_grad, detach and ops
-- whose forward and backward are written in Lua. The tape itself is in C
-- (src/core/autograd.c); this is its face.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

return function(lumen)
  local Tensor, getters, setters = core.Tensor, core.getters, core.setters
  local export = function(name, fn) core.export(lumen, name, fn) end

  function getters.requires_grad(t) return C.lm_tensor_requires_grad(core.handle(t, 'requires_grad', 'tensor')) ~= 0 end
  function getters.is_leaf(t) return C.lm_tensor_is_leaf(core.handle(t, 'is_leaf', 'tensor')) ~= 0 end
  function getters.grad_fn(t)
    local name = ffi.string(C.lm_tensor_grad_fn_name(core.handle(t, 'grad_fn', 'tensor')))
    return name ~= '' and name or nil
  end
  function getters.grad(t)
    local g = C.lm_tensor_grad(core.handle(t, 'grad', 'tensor'))
    if g == nil then return nil end
    return core.wrap(g)
  end
  function setters.grad(t, g)
    local h = core.handle(t, 'grad', 'tensor')
    local gh = g ~= nil and core.handle(g, 'grad', 'gradient') or nil
    core.check(C.lm_tensor_set_grad(ctx, h, gh), 2)
  end
  function setters.requires_grad(t, flag) t:requires_grad_(flag) end

  -- t:requires_grad_(flag = true) -> t
  Tensor.requires_grad_ = function(t, flag)
    if flag == nil then flag = true end
    core.check(C.lm_tensor_set_requires_grad(ctx, core.handle(t, 'requires_grad_', 'tensor'), flag and 1 or 0))
    return t
  end
  -- t:zero_grad() drops the accumulated gradient (as set_to_none does).
  Tensor.zero_grad = function(t) core.check(C.lm_tensor_set_grad(ctx, core.handle(t, 'zero_grad', 'tensor'), nil)) end

  export('detach', function(t)
    return core.call(C.lm_detach, core.handle(t, "detach", "tensor"), core.out1)
  end)

  -- Grad mode: no_grad(fn, ...) runs fn with recording off, enable_grad(fn, ...)
  -- with it on, and both restore the previous mode even when fn errors.
  local function with_grad_mode(on, name)
    return function(fn, ...)
      if type(fn) ~= 'function' then error('lumen.' .. name .. ': expected a function, got ' .. type(fn), 2) end
      local was = C.lm_grad_enabled(ctx)
      C.lm_set_grad_enabled(ctx, on)
      local res = { pcall(fn, ...) }
      C.lm_set_grad_enabled(ctx, was)
      if not res[1] then error(res[2], 0) end
      return unpack(res, 2, table.maxn(res))
    end
  end
  lumen.no_grad = with_grad_mode(0, 'no_grad')
  lumen.enable_grad = with_grad_mode(1, 'enable_grad')
  function lumen.set_grad_enabled(on)
    if type(on) ~= 'boolean' then error('lumen.set_grad_enabled: expected true or false, got ' .. type(on), 2) end
    C.lm_set_grad_enabled(ctx, on and 1 or 0)
  end
  function lumen.is_grad_enabled() return C.lm_grad_enabled(ctx) ~= 0 end

  -- Ops defined in Lua: the registry maps a node's id to its backward and
  -- the table its forward filled. C reports the ids of freed nodes.
  local customs, next_id = {}, 0
  local freed = ffi.new('int32_t[256]')
  local function drain_freed()
    while true do
      local n = C.lm_custom_freed(ctx, freed, 256)
      for i = 0, n - 1 do customs[freed[i]] = nil end
      if n < 256 then return end
    end
  end

  -- op = lumen.custom_op{name=, forward=function(state, ...) return outputs end,
  --                      backward=function(state, grad_outputs...) return grad_inputs end}
  -- op(...) runs forward with recording off; the tensor arguments that
  -- require grad get the gradients backward returns for them (in argument order).
  function lumen.custom_op(def)
    if type(def) ~= 'table' or type(def.forward) ~= 'function' or type(def.backward) ~= 'function' then
      error('lumen.custom_op: expected a table with forward and backward functions', 2)
    end
    local name = def.name or 'custom_op'
    return function(...)
      local args, n = { ... }, select('#', ...)
      local state = {}
      local outs = { lumen.no_grad(def.forward, state, ...) }
      local tensors, positions = {}, {}
      for i = 1, n do
        if core.is_tensor(args[i]) then
          tensors[#tensors + 1] = core.handle(args[i], name, 'argument ' .. i)
          positions[#positions + 1] = i
        end
      end
      local out_h = {}
      for i, o in ipairs(outs) do out_h[i] = core.handle(o, name, 'output ' .. i) end
      local in_arr = ffi.new('lm_tensor*[?]', #tensors + 1, tensors)
      local out_arr = ffi.new('lm_tensor*[?]', #out_h + 1, out_h)
      drain_freed()
      next_id = next_id + 1
      local st = C.lm_custom_op(ctx, next_id, #tensors, in_arr, #out_h, out_arr)
      if st ~= 0 then core.fail_as(name) end
      if outs[1] and outs[1].grad_fn then
        customs[next_id] = { backward = def.backward, state = state, n_out = #outs, positions = positions, name = name }
      end
      return unpack(outs)
    end
  end

  -- Runs the Lua backward of the waiting op; errors carry its name.
  local function run_custom(walk, op)
    local gouts = {}
    for i = 1, op.n_out do gouts[i] = core.call(C.lm_backward_grad_out, walk, i - 1, core.out1) end
    local gins = { op.backward(op.state, unpack(gouts, 1, op.n_out)) }
    for k, pos in ipairs(op.positions) do
      local g = gins[pos]
      if g ~= nil then
        local gh = core.is_tensor(g) and g.h or nil
        if gh == nil then error(string.format('lumen.%s: backward returned %s for argument %d, expected a tensor or nil',
          op.name, type(g), pos), 0) end
        core.check(C.lm_backward_supply(ctx, walk, k - 1, gh), 0)
      end
    end
  end

  -- t:backward(grad = nil, {retain_graph = false})
  local walk_out = ffi.new('lm_backward_walk*[1]')
  local id_out = ffi.new('int32_t[1]')
  Tensor.backward = function(t, grad, opts)
    if type(grad) == 'table' and not core.is_tensor(grad) then grad, opts = nil, grad end
    local h = core.handle(t, 'backward', 'tensor')
    local gh = grad ~= nil and core.handle(grad, 'backward', 'gradient') or nil
    if opts ~= nil and type(opts) ~= 'table' then
      error('lumen.backward: options must be a table {retain_graph = bool}, got ' .. type(opts), 2)
    end
    local retain = opts and opts.retain_graph and 1 or 0
    walk_out[0] = nil
    local st = C.lm_backward_begin(ctx, h, gh, retain, walk_out)
    local walk = walk_out[0]
    if st ~= 0 then
      C.lm_backward_end(ctx, walk)
      core.fail(2)
    end
    local ok, err = pcall(function()
      while true do
        if C.lm_backward_step(ctx, walk, id_out) ~= 0 then core.fail(0) end
        local id = id_out[0]
        if id == 0 then return end
        local op = customs[id]
        if not op then error('lumen.backward: the Lua-defined op of this graph is gone', 0) end
        run_custom(walk, op)
        if retain == 0 then customs[id] = nil end
      end
    end)
    C.lm_backward_end(ctx, walk)
    if not ok then error(err, 2) end
  end
end
