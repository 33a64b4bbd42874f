-- Mixed precision: the bf16 / f16 rounding against PyTorch's, autocast's
-- matrix products and convolutions (forward and gradients) against PyTorch
-- computing in f32 on the same rounded operands, the mode's scoping, and
-- GradScaler against torch.cuda.amp.GradScaler's documented rules. Then
-- the device paths: the fake device and the CUDA backend's own kernels run
-- on the host give the CPU's numbers through the backend's gemm_lowp.
local ffi = require 'ffi'
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local optim = require 'lumen.optim'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'
local core = lumen.core
local F = nn.F

local function close(a, e, what, rtol, atol)
  check.assert_close(a, e, { rtol = rtol or 1e-5, atol = atol or 1e-5 }, what)
end

-- ---- the cases PyTorch answers (one Python process) ----

-- Values around each format's ties, limits and subnormals, then a spread.
local special = {
  0, -0.0, 1, -1, 0 / 0, math.huge, -math.huge,
  1 + 2 ^ -8, 1 + 3 * 2 ^ -8, -(1 + 2 ^ -8), 1 + 2 ^ -8 + 2 ^ -20, -- bf16 ties and just past
  1 + 2 ^ -11, 1 + 3 * 2 ^ -11, 1 + 2 ^ -11 + 2 ^ -20,             -- f16 ties
  65504, 65519, 65519.996, 65520, -65520, 65536, 1e5,              -- f16 max, rounding to inf
  3.3895313892515355e38, 3.3961775292304718e38, 3.4028234663852886e38, -3.4028234663852886e38, -- bf16 max, tie, f32 max
  2 ^ -14, 2 ^ -14 - 2 ^ -24, 2 ^ -24, 2 ^ -25, 1.5 * 2 ^ -25, 3 * 2 ^ -25, 5 * 2 ^ -25, 2 ^ -26, -3 * 2 ^ -25,
  6.1e-5, 1e-7, 1e-40, -1e-40, 1.17549435e-38, 2 ^ -126 * (1 + 2 ^ -8),
}
local spread = (lumen.randn(300) * lumen.pow(10, lumen.randint(-12, 12, { 300 }):to('f32')))
local values = lumen.cat({ lumen.tensor(special, 'f32'), spread:to('f32') }, 0)

lumen.manual_seed(7)
local A, B = lumen.randn(3, 5), lumen.randn(5, 4)
local GA = lumen.randn(3, 4)
local BA, BB, BG = lumen.randn(2, 3, 6), lumen.randn(6, 5), lumen.randn(2, 3, 5)
local LX, LW, LB, LG = lumen.randn(4, 6), lumen.randn(3, 6), lumen.randn(3), lumen.randn(4, 3)
local CX, CW, CB = lumen.randn(2, 3, 7, 6), lumen.randn(4, 3, 3, 3), lumen.randn(4)
local CG = lumen.randn(2, 4, 7, 6)
local VX, VW, VG = lumen.randn(1, 4, 5, 6, 5), lumen.randn(6, 2, 3, 2, 3), lumen.randn(1, 6, 2, 5, 2)
local TX, TW, TG = lumen.randn(2, 4, 3, 4), lumen.randn(4, 3, 3, 3), lumen.randn(2, 3, 8, 8)

local R = { bf16 = 'bfloat16', f16 = 'half' }
local cases, index = {}, {}
local function case(name, expr, fields)
  fields[1] = expr
  cases[#cases + 1] = fields
  index[name] = #cases
end
case('bf16', 'x.bfloat16().float()', { x = values })
case('f16', 'x.half().float()', { x = values })
for dt, cast in pairs(R) do
  local r = function(v) return v .. '.' .. cast .. '().float()' end
  case(dt .. ' matmul', string.format('grad_of(lambda a, b: a @ b, [%s, %s], %s)', r('a'), r('b'), r('g')),
    { a = A, b = B, g = GA })
  case(dt .. ' bmm', string.format('grad_of(lambda a, b: a @ b, [%s, %s], %s)', r('a'), r('b'), r('g')),
    { a = BA, b = BB, g = BG })
  case(dt .. ' linear', string.format('grad_of(lambda x, w: F.linear(x, w) + b, [%s, %s], %s)', r('x'), r('w'), r('g')),
    { x = LX, w = LW, b = LB, g = LG })
  case(dt .. ' conv2d', string.format('grad_of(lambda x, w: F.conv2d(x, w, b, padding=1), [%s, %s], %s)',
    r('x'), r('w'), r('g')), { x = CX, w = CW, b = CB, g = CG })
  case(dt .. ' conv3d', string.format('grad_of(lambda x, w: F.conv3d(x, w, stride=(2, 1, 2), groups=2), [%s, %s], %s)',
    r('x'), r('w'), r('g')), { x = VX, w = VW, g = VG })
  case(dt .. ' conv_transpose2d', string.format(
    'grad_of(lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=(0, 1), output_padding=(1, 1)), [%s, %s], %s)',
    r('x'), r('w'), r('g')), { x = TX, w = TW, g = TG })
end
case('linear bias grad', 'g.sum(0)', { g = LG })
case('conv2d bias grad', 'g.sum((0, 2, 3))', { g = CG })
local res = oracle.run(cases)
local function ref(name) return res[index[name]] end

describe('mixed precision', function()
  describe('rounding', function()
    it("matches PyTorch's bfloat16() and half() (ties to even, overflow, subnormals, NaN)", function()
      for _, dt in ipairs { 'bf16', 'f16' } do
        local got, want = lumen.lowp_round(values, dt), ref(dt)[1]
        check.assert_close(got, want, { rtol = 0, atol = 0 }, dt)
        -- the sign of zeros and of infinities is kept too
        local g, w = check.values(got), check.values(want)
        for i = 1, #w do
          if w[i] == 0 then assert.are.equal(1 / w[i], 1 / g[i], dt .. ' zero sign at ' .. (i - 1)) end
        end
      end
    end)

    it('refuses other dtypes, modes and devices by name', function()
      assert.has_error(function() lumen.lowp_round(values:to('f64'), 'bf16') end,
        'lumen.lowp_round: input is f64, expected f32 (the dtype autocast rounds)')
      assert.has_error(function() lumen.lowp_round(values, 'fp8') end,
        "lumen.lowp_round: dtype 'fp8', expected 'bf16' or 'f16'")
      assert.are_not.equal(0, core.C.lm_set_autocast(core.ctx, 7))
      assert.matches('set_autocast: mode 7, expected', ffi.string(core.C.lm_ctx_errmsg(core.ctx)))
      core.C.lm_ctx_clear_error(core.ctx)
      assert.is_nil(lumen.autocast_dtype())
    end)
  end)

  describe('autocast', function()
    -- runs f under autocast dt and backward(g) outside it (the node keeps the mode)
    local function run(dt, f, inputs, g)
      local leaves = {}
      for i, x in ipairs(inputs) do leaves[i] = x:clone():requires_grad_() end
      local y = lumen.autocast(dt, f, unpack(leaves))
      y:backward(g)
      local out = { y:detach() }
      for i, x in ipairs(leaves) do out[i + 1] = x.grad end
      return out
    end
    local function compare(name, got, want, n)
      for i = 1, n do close(got[i], want[i], name .. (i == 1 and ' forward' or ' gradient ' .. (i - 1))) end
    end

    for _, dt in ipairs { 'bf16', 'f16' } do
      it(dt .. ' matmul, batched matmul and linear read rounded operands and their gradients too', function()
        compare(dt .. ' matmul', run(dt, lumen.matmul, { A, B }, GA), ref(dt .. ' matmul'), 3)
        compare(dt .. ' bmm', run(dt, lumen.matmul, { BA, BB }, BG), ref(dt .. ' bmm'), 3)
        local lb = LB:clone():requires_grad_()
        local got = run(dt, function(x, w) return F.linear(x, w, lb) end, { LX, LW }, LG)
        compare(dt .. ' linear', got, ref(dt .. ' linear'), 3)
        -- the bias is no GEMM operand: its gradient is the f32 sum
        close(lb.grad, ref('linear bias grad')[1], 'linear bias gradient', 1e-6, 1e-6)
        -- results are f32 tensors
        assert.are.equal('f32', got[1]:dtype())
      end)

      it(dt .. ' conv2d, conv3d (strided, grouped) and conv_transpose2d', function()
        local cb = CB:clone():requires_grad_()
        compare(dt .. ' conv2d', run(dt, function(x, w) return F.conv2d(x, w, cb, { padding = 1 }) end, { CX, CW }, CG),
          ref(dt .. ' conv2d'), 3)
        close(cb.grad, ref('conv2d bias grad')[1], 'conv2d bias gradient', 1e-6, 1e-5)
        compare(dt .. ' conv3d', run(dt, function(x, w) return F.conv3d(x, w, nil, { stride = { 2, 1, 2 }, groups = 2 }) end,
          { VX, VW }, VG), ref(dt .. ' conv3d'), 3)
        compare(dt .. ' conv_transpose2d', run(dt, function(x, w)
          return F.conv_transpose2d(x, w, nil, { stride = 2, padding = { 0, 1 }, output_padding = { 1, 1 } })
        end, { TX, TW }, TG), ref(dt .. ' conv_transpose2d'), 3)
      end)
    end

    it('differs from full precision, and by more in bf16 than in f16', function()
      -- 8 significant bits against 11: about 8 times the error on average
      local a, b = lumen.randn(32, 64), lumen.randn(64, 32)
      local full = lumen.matmul(a, b)
      local eb = (lumen.autocast('bf16', lumen.matmul, a, b) - full):abs():mean():item()
      local eh = (lumen.autocast('f16', lumen.matmul, a, b) - full):abs():mean():item()
      assert.is_true(eh > 0 and eb > 4 * eh, string.format('bf16 error %g, f16 error %g', eb, eh))
    end)

    it('leaves f64 untouched (bit for bit), and f64 gradients check by finite differences under it', function()
      local a, b = A:to('f64'), B:to('f64')
      assert.are.same(check.values(lumen.matmul(a, b)), check.values(lumen.autocast('bf16', lumen.matmul, a, b)))
      local x, w = CX:to('f64'), CW:to('f64')
      local plain = F.conv2d(x, w, nil, { padding = 1 })
      assert.are.same(check.values(plain), check.values(lumen.autocast('f16', F.conv2d, x, w, nil, { padding = 1 })))
      lumen.autocast('bf16', function()
        assert(gradcheck(function(p, q) return F.conv2d(p, q, nil, { stride = 2, padding = 1 }) end,
          { lumen.randn(1, 2, 4, 5, 'f64'), lumen.randn(3, 2, 3, 3, 'f64') }))
        assert(gradcheck(function(p, q) return lumen.matmul(p, q):tanh() end,
          { lumen.randn(2, 3, 'f64'), lumen.randn(3, 2, 'f64') }))
      end)
    end)

    it('backward follows the forward: a full-precision graph stays full precision under autocast', function()
      local a, b = A:clone():requires_grad_(), B:clone():requires_grad_()
      local y = lumen.matmul(a, b)
      lumen.autocast('bf16', function() y:backward(GA) end)
      assert.are.same(check.values(lumen.matmul(GA, B:t())), check.values(a.grad))
      -- and a bf16 graph backs up in bf16 even with autocast off
      local a2 = A:clone():requires_grad_()
      local y2 = lumen.autocast('bf16', lumen.matmul, a2, B)
      y2:backward(GA)
      close(a2.grad, ref('bf16 matmul')[2], 'bf16 gradient')
    end)

    it('nests, turns off with false, restores after errors, and works under no_grad', function()
      assert.is_nil(lumen.autocast_dtype())
      lumen.autocast('bf16', function()
        assert.are.equal('bf16', lumen.autocast_dtype())
        lumen.autocast('f16', function() assert.are.equal('f16', lumen.autocast_dtype()) end)
        assert.are.equal('bf16', lumen.autocast_dtype())
        lumen.autocast(false, function()
          assert.is_nil(lumen.autocast_dtype())
          assert.are.same(check.values(A:matmul(B)), check.values(lumen.no_grad(lumen.matmul, A, B)))
        end)
        local ok, e = pcall(lumen.autocast, 'f16', function() error('inside') end)
        assert.is_false(ok)
        assert.matches('inside', e)
        assert.are.equal('bf16', lumen.autocast_dtype())
        local y = lumen.no_grad(lumen.matmul, A:clone():requires_grad_(), B)
        assert.is_nil(y.grad_fn)
        close(y, ref('bf16 matmul')[1], 'no_grad bf16 matmul')
      end)
      assert.is_nil(lumen.autocast_dtype())
      -- several results come back
      local p, q = lumen.autocast('f16', function() return 1, 2 end)
      assert.are.same({ 1, 2 }, { p, q })
    end)

    it('refuses unknown dtypes and non-functions by name', function()
      assert.has_error(function() lumen.autocast('fp8', function() end) end,
        "lumen.autocast: dtype 'fp8', expected 'bf16' or 'f16' (or false: off)")
      assert.has_error(function() lumen.autocast('f32', function() end) end,
        "lumen.autocast: dtype 'f32', expected 'bf16' or 'f16' (or false: off)")
      assert.has_error(function() lumen.autocast('bf16') end, 'lumen.autocast: expected a function, got nil')
      assert.is_nil(lumen.autocast_dtype())
    end)
  end)

  describe('GradScaler', function()
    -- one parameter and SGD with lr 1: a step subtracts the (unscaled) gradient
    local function setup(opts)
      local p = lumen.tensor({ 1, 2, 3 }, 'f32'):requires_grad_()
      local opt = optim.SGD({ p }, { lr = 1 })
      return p, opt, optim.GradScaler(opts)
    end
    local function set_grad(p, vals) p.grad = lumen.tensor(vals, 'f32') end

    it('scales the loss, unscales the gradients and steps with them', function()
      local p, opt, s = setup()
      assert.are.equal(65536, s:get_scale())
      local loss = (p * lumen.tensor({ 1, 2, 4 }, 'f32')):sum()
      local scaled = s:scale(loss)
      assert.are.equal(loss:item() * 65536, scaled:item())
      scaled:backward()
      assert.are.same({ 65536, 131072, 262144 }, p.grad:totable())
      s:step(opt)
      assert.are.same({ 1, 2, 4 }, p.grad:totable()) -- divided once
      assert.are.same({ 0, 0, -1 }, p:detach():totable())
      s:update()
      assert.are.equal(65536, s:get_scale())
      assert.are.equal(1, s:_get_growth_tracker())
      -- a list of outputs is scaled element by element
      local outs = s:scale({ lumen.tensor(1.5), lumen.tensor(-2) })
      assert.are.same({ 1.5 * 65536, -2 * 65536 }, { outs[1]:item(), outs[2]:item() })
    end)

    it('skips the step on inf or NaN and backs off; grows after growth_interval clean steps', function()
      -- torch.cuda.amp.GradScaler's rule (torch._amp_update_scale_): a step
      -- with inf/NaN multiplies the scale by backoff_factor and resets the
      -- count; growth_interval clean steps in a row multiply it by
      -- growth_factor and reset the count
      local p, opt, s = setup { init_scale = 8, growth_interval = 3 }
      local plan = { 'ok', 'ok', 'inf', 'ok', 'nan', 'ok', 'ok', 'ok', 'ok', '-inf', 'ok', 'ok', 'ok' }
      local want_scale = { 8, 8, 4, 4, 2, 2, 2, 4, 4, 2, 2, 2, 4 }
      local want_tracker = { 1, 2, 0, 1, 0, 1, 2, 0, 1, 0, 1, 2, 0 }
      for i, kind in ipairs(plan) do
        local before = p:detach():clone()
        local sc = s:get_scale()
        local bad = kind == 'ok' and 1 or (kind == 'inf' and math.huge or kind == '-inf' and -math.huge or 0 / 0)
        set_grad(p, { sc, 2 * sc, bad * sc })
        s:step(opt)
        if kind == 'ok' then
          local b = before:totable()
          assert.are.same({ b[1] - 1, b[2] - 2, b[3] - 1 }, p:detach():totable())
        else
          assert.are.same(before:totable(), p:detach():totable(), 'step ' .. i .. ' was not skipped')
        end
        s:update()
        assert.are.equal(want_scale[i], s:get_scale(), 'scale after step ' .. i)
        assert.are.equal(want_tracker[i], s:_get_growth_tracker(), 'tracker after step ' .. i)
      end
    end)

    it('does not grow past the largest f32, keeps f32 arithmetic, and takes a new scale', function()
      local p, opt, s = setup { init_scale = 2 ^ 127, growth_interval = 1 }
      set_grad(p, { 1, 1, 1 })
      s:step(opt)
      s:update()
      assert.are.equal(2 ^ 127, s:get_scale()) -- 2^128 is inf in f32
      local _, opt2, s2 = setup { init_scale = 3, backoff_factor = 0.1 }
      set_grad(opt2.param_groups[1].params[1], { 0 / 0, 0, 0 })
      s2:step(opt2)
      s2:update()
      assert.are.equal(tonumber(ffi.new('float', 3 * 0.1)), s2:get_scale())
      s2:update(1024)
      assert.are.equal(1024, s2:get_scale())
      s2:update(lumen.tensor(512))
      assert.are.equal(512, s2:get_scale())
    end)

    it('keeps per-optimizer decisions and backs off when any optimizer saw inf', function()
      local p1 = lumen.tensor({ 1, 1 }, 'f32'):requires_grad_()
      local p2 = lumen.tensor({ 5, 5 }, 'f32'):requires_grad_()
      local o1, o2 = optim.SGD({ p1 }, { lr = 1 }), optim.SGD({ p2 }, { lr = 1 })
      local s = optim.GradScaler { init_scale = 4 }
      set_grad(p1, { 4, 8 })
      set_grad(p2, { math.huge, 4 })
      s:unscale_(o1)
      assert.are.same({ 1, 2 }, p1.grad:totable())
      s:step(o1)
      s:step(o2)
      assert.are.same({ 0, -1 }, p1:detach():totable())
      assert.are.same({ 5, 5 }, p2:detach():totable())
      s:update()
      assert.are.equal(2, s:get_scale())
    end)

    it("refuses torch's misuses by name", function()
      local p, opt, s = setup()
      assert.has_error(function() s:update() end,
        'lumen.GradScaler: update: no inf checks were recorded prior to update() (call step() or unscale_() first)')
      set_grad(p, { 1, 1, 1 })
      s:unscale_(opt)
      assert.has_error(function() s:unscale_(opt) end,
        'lumen.GradScaler: unscale_: unscale_() has already been called on this optimizer since the last update()')
      s:step(opt)
      assert.has_error(function() s:step(opt) end,
        'lumen.GradScaler: step: step() has already been called since the last update()')
      assert.has_error(function() s:unscale_(opt) end,
        'lumen.GradScaler: unscale_: unscale_() is being called after step()')
      s:update()
      assert.has_error(function() s:step(opt, function() end) end,
        'lumen.GradScaler: step: a closure is not supported while the GradScaler is enabled')
      p.grad = nil
      assert.has_error(function() s:step(opt) end,
        'lumen.GradScaler: step: no inf checks were recorded for this optimizer (no parameter has a gradient)')
      assert.has_error(function() optim.GradScaler { growth_factor = 1 } end, 'lumen.GradScaler: growth_factor 1, expected > 1')
      assert.has_error(function() optim.GradScaler { init_scale = 2, scale = 3 } end,
        "lumen.GradScaler: unknown option 'scale' (expected init_scale, growth_factor, backoff_factor, growth_interval, enabled)")
      assert.has_error(function() s:scale('loss') end, 'lumen.GradScaler: scale: expected a tensor or a list of tensors, got string')
    end)

    it('state_dict round trip, disabled scalers, and checkpoints', function()
      local p, opt, s = setup { init_scale = 16, growth_interval = 5 }
      set_grad(p, { 1, 1, 1 })
      s:step(opt)
      s:update()
      local sd = s:state_dict()
      assert.are.same({ scale = 16, growth_factor = 2, backoff_factor = 0.5, growth_interval = 5, _growth_tracker = 1 }, sd)
      local t = optim.GradScaler()
      t:load_state_dict(sd)
      assert.are.same(sd, t:state_dict())
      local off = optim.GradScaler { enabled = false }
      assert.are.same({}, off:state_dict())
      assert.are.equal(1, off:get_scale())
      local loss = lumen.tensor(3)
      assert.are.equal(loss, off:scale(loss))
      set_grad(p, { 0 / 0, 1, 1 })
      off:step(opt) -- disabled: the optimizer steps whatever the gradients
      local v = p:detach():totable()[1]
      assert.is_true(v ~= v)
      assert.has_error(function() t:load_state_dict({}) end,
        'lumen.GradScaler: load_state_dict: the state dict is empty, possibly because it was saved from a disabled GradScaler')
      -- a checkpoint carries the scaler when given one
      local checkpoint = require 'lumen.checkpoint'
      local path = os.tmpname()
      checkpoint.save(path, { scaler = s, step = 3 })
      local u = optim.GradScaler()
      assert.are.equal(3, checkpoint.load(path, { scaler = u }))
      assert.are.same(sd, u:state_dict())
      checkpoint.save(path, { step = 4 })
      assert.has_error(function() checkpoint.load(path, { scaler = u }) end)
      os.remove(path)
    end)
  end)

  -- ---- the device paths ----
  local backends = require 'helpers.test_backends'
  local load, use = backends.load, backends.use
  local fake = load('fake_device', [[
    const lm_backend *lm_fake_backend(void);
    const lm_backend *lm_fake_backend_before_lowp(void);
    int64_t lm_fake_gemm_lowp_count(void);
    int64_t lm_fake_conv_lib_count(void);
  ]])
  local emulated = load('cuda_emulated', 'const lm_backend *lm_cuda_emulated_backend(void);')

  describe('on a device', function()
    teardown(function()
      collectgarbage('collect')
      lumen.cuda.reset()
    end)
    if not fake then
      pending('tests/plugins/fake_device.so is not built (make test builds it)')
      return
    end

    -- f under autocast dt on the CPU and on the device, outputs and gradients
    local function same_as_cpu(label, dt, f, inputs, g)
      local function go(dev)
        local leaves = {}
        for i, x in ipairs(inputs) do leaves[i] = x:to(dev):detach():requires_grad_() end
        local y = lumen.autocast(dt, f, unpack(leaves))
        assert.are.equal(dev, y:device())
        y:backward(g:to(dev))
        local r = { y:detach():cpu() }
        for i, x in ipairs(leaves) do
          assert.are.equal(dev, x.grad:device())
          r[i + 1] = x.grad:cpu()
        end
        return r
      end
      local cpu, dev = go('cpu'), go('cuda')
      for i = 1, #cpu do close(dev[i], cpu[i], label .. ' ' .. dt .. (i == 1 and ' forward' or ' gradient ' .. (i - 1))) end
    end
    local function all_cases(label)
      for _, dt in ipairs { 'bf16', 'f16' } do
        same_as_cpu(label .. ' matmul', dt, lumen.matmul, { A, B }, GA)
        same_as_cpu(label .. ' bmm', dt, lumen.matmul, { BA, BB }, BG)
        same_as_cpu(label .. ' linear', dt, function(x, w, b) return F.linear(x, w, b) end, { LX, LW, LB }, LG)
        same_as_cpu(label .. ' conv2d', dt, function(x, w, b) return F.conv2d(x, w, b, { padding = 1 }) end,
          { CX, CW, CB }, CG)
        same_as_cpu(label .. ' conv3d', dt, function(x, w) return F.conv3d(x, w, nil, { stride = { 2, 1, 2 }, groups = 2 }) end,
          { VX, VW }, VG)
        same_as_cpu(label .. ' conv_transpose2d', dt, function(x, w)
          return F.conv_transpose2d(x, w, nil, { stride = 2, padding = { 0, 1 }, output_padding = { 1, 1 } })
        end, { TX, TW }, TG)
      end
    end

    it("give the CPU's numbers on the fake device, through gemm_lowp and not the library convolution", function()
      use(fake.lm_fake_backend(), 'fake device', fake)
      local l0, c0 = fake.lm_fake_conv_lib_count(), fake.lm_fake_gemm_lowp_count()
      all_cases('fake')
      assert.are.equal(l0, fake.lm_fake_conv_lib_count())
      assert.is_true(fake.lm_fake_gemm_lowp_count() - c0 >= 2 * 6 * 3)
      -- outside autocast the plain GEMM (and the library convolution) run
      local c1 = fake.lm_fake_gemm_lowp_count()
      F.conv2d(CX:cuda(), CW:cuda(), nil, { padding = 1 })
      lumen.matmul(A:cuda(), B:cuda())
      assert.are.equal(c1, fake.lm_fake_gemm_lowp_count())
      assert.are.equal(l0 + 1, fake.lm_fake_conv_lib_count())
    end)

    if emulated then
      it("give the CPU's numbers in the CUDA backend's own kernels (packing, cublasGemmStridedBatchedEx's contract)", function()
        use(emulated.lm_cuda_emulated_backend(), 'CUDA kernels emulated on the host', emulated)
        all_cases('emulated')
      end)
    else
      pending('tests/plugins/cuda_emulated.so is not built (it needs nvcc)')
    end

    it('refuse the device when the backend predates gemm_lowp', function()
      use(fake.lm_fake_backend_before_lowp(), 'fake device without gemm_lowp', fake)
      local a, b = A:cuda(), B:cuda()
      assert.are.equal(3, lumen.matmul(a, b):size(0))
      assert.has_error(function() lumen.autocast('bf16', lumen.matmul, a, b) end,
        "lumen.matmul: the cuda backend (fake) has no gemm_lowp kernel, so this op runs on the CPU only (move the tensors with :to('cpu'))")
    end)

    it('scale, check and step where the gradients are', function()
      use(fake.lm_fake_backend(), 'fake device', fake)
      local p = lumen.tensor({ 1, 2 }, 'f32'):cuda():requires_grad_()
      local opt = optim.SGD({ p }, { lr = 1 })
      local s = optim.GradScaler { init_scale = 2 }
      p.grad = lumen.tensor({ 2, math.huge }, 'f32'):cuda()
      s:step(opt)
      s:update()
      assert.are.equal(1, s:get_scale())
      assert.are.same({ 1, 2 }, p:detach():cpu():totable())
      p.grad = lumen.tensor({ 2, 4 }, 'f32'):cuda()
      s:step(opt)
      assert.are.same({ -1, -2 }, p:detach():cpu():totable()) -- scale 1 now
      assert.are.equal('cuda', p.grad:device())
    end)
  end)
end)
