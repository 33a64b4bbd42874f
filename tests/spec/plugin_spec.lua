-- Plugins: loading (and refusing) shared objects, and the clip_relu test
-- plugin's forward and backward against PyTorch.
local lumen = require 'lumen'
local ffi = require 'ffi'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local C, ctx = lumen.core.C, lumen.core.ctx

-- The build directory is where the liblumen in use lives.
local build = lumen.core.libpath:match('^(.*)/[^/]*$') or 'build'
local plugdir = build .. '/tests/plugins'
local good, abi99 = plugdir .. '/clip_relu.so', plugdir .. '/clip_relu_abi99.so'

local function exists(p)
  local f = io.open(p, 'rb')
  if f then f:close() end
  return f ~= nil
end
-- `make test` builds them; build them here when busted runs alone.
if not (exists(good) and exists(abi99)) then
  os.execute(string.format("make -s B='%s' '%s' '%s' >&2", build, good, abi99))
end

-- Deterministic values in [-2, 4] in steps of 0.5: include 0 and the caps
-- exactly, where the gradient convention shows.
local function values(n, dtype, shape)
  local flat = {}
  for i = 1, n do flat[i] = ((i * 7) % 13 - 4) * 0.5 end
  local t = lumen.tensor(flat, dtype)
  return shape and t:reshape(shape) or t
end

describe('plugins', function()
  local p = lumen.load_plugin(good)

  it('describes the plugin and its ops', function()
    assert.are.equal('clip_relu', p.name)
    assert.are.equal('1.0.0', p.version)
    assert.are.equal(1, #p.ops)
    local op = p.ops[1]
    assert.are.equal('clip_relu', op.name)
    assert.are.equal(1, op.n_in)
    assert.are.equal(1, op.n_out)
    assert.is_true(op.id >= C.LM_OP_COUNT)
    local id, nin, nout = ffi.new('int32_t[1]'), ffi.new('int32_t[1]'), ffi.new('int32_t[1]')
    assert.are.equal(0, C.lm_op_lookup(ctx, 'clip_relu', id, nin, nout))
    assert.are.equal(op.id, id[0])
  end)

  it('returns the loaded plugin when loaded again', function()
    assert.are.equal(p, lumen.load_plugin(good))
    assert.are.equal(p, lumen.load_plugin(plugdir .. '/../plugins/clip_relu.so'))
  end)

  describe('clip_relu against torch.clamp', function()
    local cases = {}
    local function add(name, x, cap, g)
      cases[#cases + 1] = { name = name, x = x, cap = cap, g = g }
    end
    for _, dt in ipairs { 'f32', 'f64' } do
      local m = values(24, dt, { 4, 6 })
      add(dt .. ' contiguous 4x6', m, 2.0, values(24, dt, { 4, 6 }):transpose(0, 1):contiguous():reshape(4, 6))
      add(dt .. ' transposed', m:transpose(0, 1), 1.5, values(24, dt, { 6, 4 }))
      add(dt .. ' sliced with a step', m[{ {}, { 1, nil, 2 } }], 2.5, values(12, dt, { 3, 4 }):transpose(0, 1))
      add(dt .. ' expanded', values(3, dt, { 3, 1 }):expand(3, 5), 0.5, values(15, dt, { 3, 5 }))
      add(dt .. ' one element', values(1, dt), 2.0, values(1, dt))
      add(dt .. ' zero-size', lumen.zeros({ 0, 3 }, dt), 2.0, lumen.zeros({ 0, 3 }, dt))
      add(dt .. ' cap below zero', values(8, dt), -1.0, values(8, dt))
      add(dt .. ' large (threads)', values(100003, dt), 3.0, values(100003, dt):reshape(100003))
    end
    add('f64 NaN and infinities', lumen.tensor({ 0 / 0, 1 / 0, -1 / 0, 2, -0.0 }, 'f64'), 2.0,
      lumen.tensor({ 1, 2, 3, 4, 5 }, 'f64'))

    local batch = {}
    for _, c in ipairs(cases) do
      batch[#batch + 1] = { string.format('torch.clamp(x, 0, %.17g)', c.cap), x = c.x }
      batch[#batch + 1] = {
        string.format('torch.autograd.grad(torch.clamp(x.requires_grad_(), 0, %.17g), x, g)[0]', c.cap),
        x = c.x, g = c.g }
    end
    local ref = oracle.run(batch)
    for i, c in ipairs(cases) do
      it('forward, ' .. c.name, function()
        local r = ref[2 * i - 1]
        assert(not r.error, r.error)
        check.assert_close(p.clip_relu(c.x, c.cap), r[1], { rtol = 0, atol = 0 })
      end)
      it('backward, ' .. c.name, function()
        local r = ref[2 * i]
        assert(not r.error, r.error)
        local y = p.clip_relu(c.x, c.cap)
        check.assert_close(p.clip_relu_backward({ c.x }, { y }, { c.g }, c.cap), r[1], { rtol = 0, atol = 0 })
      end)
    end
  end)

  it('refuses a plugin built for another ABI, naming the path and both versions', function()
    assert.has_error(function() lumen.load_plugin(abi99) end,
      string.format('lumen.plugin_load: plugin %s (clip_relu) was built for lumen ABI 99.1, this lumen is ABI %d.%d',
        abi99, C.LM_ABI_MAJOR, C.LM_ABI_MINOR))
    -- and again: the refusal is not cached as a success
    assert.has_error(function() lumen.load_plugin(abi99) end)
  end)

  it('refuses shared objects that are not plugins, and other files', function()
    local libm = '/lib/x86_64-linux-gnu/libm.so.6'
    if exists(libm) then
      assert.has_error(function() lumen.load_plugin(libm) end,
        'lumen.plugin_load: ' .. libm .. ' is not a lumen plugin (no lm_plugin_entry symbol)')
    end
    local text = os.tmpname()
    local f = assert(io.open(text, 'w'))
    f:write('not an ELF file\n')
    f:close()
    local ok, err = pcall(lumen.load_plugin, text)
    os.remove(text)
    assert.is_false(ok)
    assert.truthy(err:find('lumen.plugin_load: cannot load ' .. text .. ': ', 1, true), err)
    ok, err = pcall(lumen.load_plugin, '/tmp')
    assert.is_false(ok)
    assert.truthy(err:find('lumen.plugin_load: /tmp is not a regular file', 1, true), err)
  end)

  it('refuses a second plugin defining an op name already loaded', function()
    local copy = os.tmpname() .. '.so'
    assert(os.execute(string.format("cp '%s' '%s'", good, copy)) == 0)
    local ok, err = pcall(lumen.load_plugin, copy)
    local real = io.popen("realpath '" .. good .. "'"):read('*l')
    os.remove(copy)
    assert.is_false(ok)
    assert.truthy(err:find(string.format('lumen.plugin_load: plugin %s (clip_relu): op clip_relu is already defined by plugin %s (clip_relu)',
      copy, real), 1, true), err)
  end)

  it('reports missing files and unknown names', function()
    assert.has_error(function() lumen.load_plugin('/nonexistent/dir/x.so') end,
      'lumen.plugin_load: cannot open /nonexistent/dir/x.so: No such file or directory')
    local ok, err = pcall(lumen.load_plugin, 'no_such_plugin')
    assert.is_false(ok)
    assert.truthy(err:find("lumen.load_plugin: no plugin 'no_such_plugin' (looked for ", 1, true), err)
    assert.has_error(function() lumen.load_plugin(42) end)
  end)

  it('checks the inputs and params of an op', function()
    local x = values(6, 'f32')
    assert.has_error(function() p.clip_relu() end, 'lumen.clip_relu: expected 1 input tensor, got 0')
    assert.has_error(function() p.clip_relu(x, x, 2) end, 'lumen.clip_relu: expected 1 input tensor, got 2')
    assert.has_error(function() p.clip_relu(2, x) end)
    assert.has_error(function() p.clip_relu(x) end, 'lumen.clip_relu: expected 1 parameter (cap), got 0')
    assert.has_error(function() p.clip_relu(x, 'a') end, 'lumen.clip_relu: param 1 is string, expected a number')
    assert.has_error(function() p.clip_relu(lumen.arange(4), 1) end, 'lumen.clip_relu: x must be f32 or f64, got i64')
    local y = p.clip_relu(x, 1)
    assert.has_error(function() p.clip_relu_backward({ x }, { y }, { values(6, 'f64') }, 1) end,
      'lumen.clip_relu: gradient is f64, expected f32 like x')
    assert.has_error(function() p.clip_relu_backward({ x }, { y }, { values(4, 'f32') }, 1) end)
    assert.has_error(function() p.clip_relu_backward({ x }, { y }, {}, 1) end,
      'lumen.clip_relu_backward: expected 1 grad_outputs, got 0')
    assert.has_error(function() p.clip_relu_backward(x, y, y, 1) end)
  end)

  it('checks calls through the C API', function()
    local id = p.ops[1].id
    local x = values(4, 'f32')
    local ins = ffi.new('lm_tensor*[2]', x.h, x.h)
    local params = ffi.new('double[1]', 1)
    local out = ffi.new('lm_tensor*[1]')
    local function err_of(st)
      assert.is_true(st < 0)
      local m = ffi.string(C.lm_ctx_errmsg(ctx))
      C.lm_ctx_clear_error(ctx)
      return m
    end
    assert.are.equal('clip_relu: expected 1 input, got 2', err_of(C.lm_op_forward(ctx, id, 2, ins, params, 1, out)))
    ins[0] = nil
    assert.are.equal('clip_relu: input 0 is NULL', err_of(C.lm_op_forward(ctx, id, 1, ins, params, 1, out)))
    assert.are.equal('op_forward: no plugin op with id 99999 is loaded in this context',
      err_of(C.lm_op_forward(ctx, 99999, 1, ins, params, 1, out)))
    assert.are.equal('op_forward: op 2 (exp) is a core op; call its own function',
      err_of(C.lm_op_forward(ctx, 2, 1, ins, params, 1, out)))
    assert.are.equal("op_lookup: no plugin op named 'nope' is loaded",
      err_of(C.lm_op_lookup(ctx, 'nope', nil, nil, nil)))
  end)

  it('lists the plugins it finds', function()
    ffi.C.setenv('LUMEN_PLUGIN_PATH', plugdir, 1)
    local found = lumen.plugins_found()
    ffi.C.setenv('LUMEN_PLUGIN_PATH', '', 1)
    local by = {}
    for _, e in ipairs(found) do by[e.name] = e end
    assert.truthy(by.clip_relu and by.clip_relu.plugin, 'clip_relu listed')
    assert.are.equal('clip_relu', by.clip_relu.plugin.ops[1].name)
    assert.truthy(by.clip_relu_abi99 and by.clip_relu_abi99.error:find('ABI 99.1', 1, true))
    assert.is_nil(by.clip_relu_abi99.plugin)
  end)

  it('reports the devices', function()
    local d = lumen.devices()
    assert.are.equal('cpu', d[1].name)
    assert.are.equal('cuda', d[2].name)
    assert.is_true(d[2].available or type(d[2].reason) == 'string')
  end)
end)
