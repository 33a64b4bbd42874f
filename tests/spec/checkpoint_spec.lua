-- Checkpoints: a run saved, loaded in a fresh process and continued
-- reproduces the uninterrupted run bit for bit; failed writes keep the old
-- file; corrupt files and mismatched models or optimizers give errors
-- naming the file and the tensor and change nothing.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local optim = require 'lumen.optim'
local checkpoint = require 'lumen.checkpoint'
local ffi = require 'ffi'

local dir = os.tmpname()
os.remove(dir)
assert(os.execute('mkdir -p ' .. dir) == 0)
local function P(name) return dir .. '/' .. name end

local function read_all(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end
local function write_all(path, s)
  local f = assert(io.open(path, 'wb'))
  f:write(s)
  f:close()
end
local function list_dir(d)
  local p = io.popen('ls -A ' .. d)
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  return names
end
-- the bytes of a tensor's elements
local function bytes(t)
  local c = t:contiguous()
  return ffi.string(c:data_ptr(), c:numel() * lumen.core.C.lm_dtype_size(lumen.core.dtypes[c:dtype()]))
end

-- The run, shared by this process and the fresh one: a small model, AdamW
-- with amsgrad, warm-up cosine schedule, clipping; inputs drawn from the
-- generator inside each step, so its state must be restored too.
local RUN = [[
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local optim = require 'lumen.optim'
local run = {}
function run.setup(seed)
  lumen.manual_seed(seed)
  local model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
  local opt = optim.AdamW({ { params = { model:parameters()[1], model:parameters()[2] } },
    { params = { model:parameters()[3], model:parameters()[4] }, lr = 0.03 } }, { lr = 0.01, amsgrad = true })
  local sched = optim.lr_scheduler.WarmupCosine(opt, { warmup_steps = 2, total_steps = 10, min_lr = 1e-4 })
  return model, opt, sched
end
function run.step(model, opt, sched)
  local x, g = lumen.randn(5, 4), lumen.randn(5, 2)
  opt:zero_grad()
  model(x):backward(g)
  optim.clip_grad_norm_(model:parameters(), 0.5)
  opt:step()
  sched:step()
end
return run
]]
write_all(P('run.lua'), RUN)
local run = assert(load(RUN))()

-- Runs a Lua script in a fresh luajit; returns its output (stdout+stderr).
local function fresh(script)
  write_all(P('script.lua'), "package.path = './lua/?.lua;./lua/?/init.lua;" .. dir .. "/?.lua;' .. package.path\n" .. script)
  local p = io.popen('luajit ' .. P('script.lua') .. ' 2>&1')
  local out = p:read('*a')
  p:close()
  return out
end

describe('checkpoint', function()
  teardown(function() os.execute('rm -rf ' .. dir) end)

  it('resumes in a fresh process exactly where the run left off', function()
    local model, opt, sched = run.setup(11)
    for _ = 1, 3 do run.step(model, opt, sched) end
    local path = P('run.ckpt')
    checkpoint.save(path, { model = model, optimizer = opt, scheduler = sched, step = 3,
      extra = { best = math.huge, worst = -math.huge, history = { 0.5, 0.25 }, name = 'run 1', done = false } })
    -- the uninterrupted run
    run.step(model, opt, sched)
    local want = model:state_dict()

    local out = fresh(string.format([[
      local lumen = require 'lumen'
      local checkpoint = require 'lumen.checkpoint'
      local json = require 'lumen.json'
      local run = require 'run'
      local model, opt, sched = run.setup(999) -- other weights and generator state, overwritten by load
      local step, extra = checkpoint.load(%q, { model = model, optimizer = opt, scheduler = sched })
      run.step(model, opt, sched)
      lumen.save(%q, (model:state_dict()))
      io.write(step, ' ', tostring(extra.best), ' ', tostring(extra.worst), ' ', json.encode(extra.history), ' ',
        extra.name, ' ', tostring(extra.done), ' ', string.format('%%.17g %%.17g', opt.param_groups[1].lr, opt.param_groups[2].lr))
    ]], path, P('resumed.safetensors')))
    assert.are.equal(string.format('3 inf -inf [0.5,0.25] run 1 false %.17g %.17g', opt.param_groups[1].lr,
      opt.param_groups[2].lr), out)
    local got = lumen.load(P('resumed.safetensors'))
    local n = 0
    for name, t in pairs(want) do
      assert.are.equal(bytes(t), bytes(got[name]), name)
      n = n + 1
    end
    assert.are.equal(4, n)
  end)

  it('restores the generator state, all 64 bits of it', function()
    lumen.manual_seed(-1) -- 2^64 - 1
    lumen.randn(3)
    local state = lumen.get_rng_state()
    checkpoint.save(P('rng.ckpt'), {})
    local a = lumen.randn(4)
    lumen.manual_seed(0)
    local step, extra = checkpoint.load(P('rng.ckpt'))
    assert.is_nil(step)
    assert.is_nil(extra)
    assert.are.same(state, lumen.get_rng_state())
    assert.are.equal(bytes(a), bytes(lumen.randn(4)))
  end)

  it('leaves the old file intact when a write fails', function()
    local sub = P('limited')
    os.execute('rm -rf ' .. sub .. ' && mkdir -p ' .. sub)
    local target = sub .. '/c.ckpt'
    local model, opt = run.setup(3)
    checkpoint.save(target, { model = model, optimizer = opt, step = 1 })
    local old = read_all(target)
    -- A file size limit makes the write fail part way (SIGXFSZ ignored so the process sees the error).
    write_all(P('big_save.lua'), string.format([[
      package.path = './lua/?.lua;./lua/?/init.lua;' .. package.path
      local lumen = require 'lumen'
      local checkpoint = require 'lumen.checkpoint'
      local model = { state_dict = function() return { w = lumen.zeros(1000000, 'f64') } end, load_state_dict = function() end }
      local ok, err = pcall(checkpoint.save, %q, { model = model, step = 2 })
      io.write(ok and 'saved' or err)
    ]], target))
    local p = io.popen(string.format("sh -c \"trap '' XFSZ; ulimit -f 64; luajit %s\" 2>&1", P('big_save.lua')))
    local out = p:read('*a')
    p:close()
    assert.are.equal('lumen.checkpoint.save: cannot write ' .. target .. ': File too large', out)
    assert.are.equal(old, read_all(target))
    assert.are.same({ 'c.ckpt' }, list_dir(sub))
    assert.are.equal(1, (checkpoint.load(target, { model = model, optimizer = opt })))
  end)

  describe('refuses', function()
    local path = P('good.ckpt')
    local model, opt, sched = run.setup(5)
    run.step(model, opt, sched)
    checkpoint.save(path, { model = model, optimizer = opt, scheduler = sched, step = 1 })
    local good = read_all(path)

    local function unchanged(m, o, f)
      local before = {}
      for name, t in pairs(m:state_dict()) do before[name] = bytes(t) end
      local lr, rng = o.param_groups[1].lr, lumen.get_rng_state()
      f()
      for name, t in pairs(m:state_dict()) do assert.are.equal(before[name], bytes(t), name) end
      assert.are.equal(lr, o.param_groups[1].lr)
      assert.are.same(rng, lumen.get_rng_state())
    end

    it('truncated and corrupt files, naming the file', function()
      local bad = P('bad.ckpt')
      local m, o = run.setup(6)
      for cut = 0, #good - 1, 97 do
        write_all(bad, good:sub(1, cut))
        unchanged(m, o, function()
          local ok, err = pcall(checkpoint.load, bad, { model = m, optimizer = o })
          assert.is_false(ok)
          assert.are.equal('lumen.checkpoint.load: ' .. bad .. ': ', err:sub(1, #bad + 25), err)
        end)
      end
      write_all(bad, good:sub(1, #good - 1))
      -- the message is lumen.load's, under checkpoint.load
      local _, load_err = pcall(lumen.load, bad)
      assert.has_error(function() checkpoint.load(bad, { model = m }) end,
        (load_err:gsub('^lumen%.load: ', 'lumen.checkpoint.load: ')))
      -- a corrupt JSON header
      assert.are.equal('{"', good:sub(9, 10))
      write_all(bad, good:sub(1, 9) .. '#' .. good:sub(11))
      local prefix = 'lumen.checkpoint.load: ' .. bad .. ': header is not valid JSON'
      local ok, err = pcall(checkpoint.load, bad)
      assert.is_false(ok)
      assert.are.equal(prefix, err:sub(1, #prefix))
      -- a safetensors file that is not a checkpoint
      lumen.save(bad, { w = lumen.zeros(2) })
      assert.has_error(function() checkpoint.load(bad, { model = m }) end,
        'lumen.checkpoint.load: ' .. bad .. ": not a lumen checkpoint (no 'lumen.checkpoint' metadata)")
      assert.has_error(function() checkpoint.load(P('missing.ckpt')) end,
        'lumen.checkpoint.load: cannot open ' .. P('missing.ckpt') .. ': No such file or directory')
    end)

    it('a model whose names or shapes differ, naming the tensor', function()
      local function check(m, msg)
        local o = optim.SGD(m:parameters(), { lr = 0.1 })
        unchanged(m, o, function()
          assert.has_error(function() checkpoint.load(path, { model = m }) end, 'lumen.checkpoint.load: ' .. path .. ': ' .. msg)
        end)
      end
      check(nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)),
        "tensor 'model.0.bias' has shape 3, the model's 0.bias has shape 5")
      check(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2)),
        "tensor 'model.2.bias' is missing (the model has 2.bias of shape 2)")
      check(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, { bias = false })),
        "tensor 'model.1.bias' matches nothing in the model")
    end)

    it('an optimizer that does not fit, before changing the model', function()
      local m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
      unchanged(m, opt, function()
        assert.has_error(function() checkpoint.load(path, { model = m, optimizer = optim.SGD(m:parameters(), { lr = 1 }) }) end,
          'lumen.checkpoint.load: ' .. path .. ': the optimizer state is of a AdamW, the optimizer given is a SGD')
        local wrong = optim.AdamW({ lumen.zeros(3, 4), lumen.zeros(2), lumen.zeros(2, 3), lumen.zeros(2) })
        assert.has_error(function() checkpoint.load(path, { model = m, optimizer = wrong }) end,
          'lumen.checkpoint.load: ' .. path ..
          ": tensor 'optimizer.state.1.exp_avg' has shape 3, its parameter (params[2] of param group 1) has shape 2")
        local one_group = optim.AdamW(m:parameters())
        assert.has_error(function() checkpoint.load(path, { model = m, optimizer = one_group }) end,
          'lumen.checkpoint.load: ' .. path .. ': optimizer state: the saved state has 2 parameter groups, this optimizer 1')
      end)
      local plain = P('plain.ckpt')
      checkpoint.save(plain, { model = m })
      assert.has_error(function() checkpoint.load(plain, { optimizer = opt }) end,
        'lumen.checkpoint.load: ' .. plain .. ': the checkpoint holds no optimizer state')
      assert.has_error(function() checkpoint.load(plain, { scheduler = sched }) end,
        'lumen.checkpoint.load: ' .. plain .. ': the checkpoint holds no scheduler state')
      unchanged(m, opt, function()
        assert.has_error(function()
          checkpoint.load(path, { model = m, optimizer = opt, scheduler = optim.lr_scheduler.StepLR(optim.SGD({ lumen.zeros(1) }, { lr = 1 }), 2) })
        end, 'lumen.checkpoint.load: ' .. path .. ': the scheduler state is of a WarmupCosine, the scheduler given is a StepLR')
      end)
    end)

    it('bad arguments', function()
      assert.has_error(function() checkpoint.save(1, {}) end, 'lumen.checkpoint.save: path must be a string, got number')
      assert.has_error(function() checkpoint.save(P('x'), { modle = model }) end,
        "lumen.checkpoint.save: unknown field 'modle' (expected model, optimizer, scheduler, scaler, step, extra)")
      assert.has_error(function() checkpoint.save(P('x'), { model = {} }) end,
        'lumen.checkpoint.save: model has no state_dict method')
      assert.has_error(function() checkpoint.save(P('x'), { extra = { f = print } }) end,
        'lumen.checkpoint.save: cannot store the metadata as JSON (json.encode: cannot encode a function); ' ..
        'extra must hold tables, strings, numbers and booleans')
      assert.has_error(function() checkpoint.load(P('x'), { step = 1 }) end,
        "lumen.checkpoint.load: unknown field 'step' (expected model, optimizer, scheduler, scaler)")
      assert.is_nil(io.open(P('x')))
    end)
  end)
end)
