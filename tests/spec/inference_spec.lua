-- Sliding-window inference (lua/lumen/inference.lua, src/ops/window.c)
-- against a plain numpy reference that keeps a full weight volume, and
-- closed-form checks (translation- and flip-equivariant models).
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local inference = require 'lumen.inference'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'

local sliding_window = inference.sliding_window

-- The reference: pad a short volume, list the window starts of each axis
-- (a regular grid, plus a last window flush with the end), build the whole
-- importance map, and add every window's (mirror-averaged) prediction and
-- weight into full-size sums.
local PRELUDE = [[
import itertools
def reference(x, W, ramp, roi, overlap, weighting, sigma_scale, mirror, pad_value):
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(roi)]
    def model(b):
        return torch.tanh(conv(b, W, padding=1)) + ramp
    if x.dim() == len(roi) + 2:
        return torch.stack([one(xi, model, W.shape[0], roi, overlap, weighting, sigma_scale, mirror, pad_value) for xi in x])
    return one(x, model, W.shape[0], roi, overlap, weighting, sigma_scale, mirror, pad_value)

def one(x, model, K, roi, overlap, weighting, sigma_scale, mirror, pad_value):
    x = x.numpy()
    nd, sp = len(roi), x.shape[1:]
    pads = []
    for n, r in zip(sp, roi):
        d = max(r - n, 0)
        pads.append((d // 2, d - d // 2))
    xp = np.pad(x, [(0, 0)] + pads, mode='constant', constant_values=pad_value)
    P = xp.shape[1:]
    grids = []
    for L, r in zip(P, roi):
        step = max(1, int(r * (1 - overlap)))
        s = list(range(0, L - r + 1, step))
        if s[-1] != L - r:
            s.append(L - r)
        grids.append(s)
    imp = np.ones(roi)
    if weighting == 'gaussian':
        for a, r in enumerate(roi):
            g = np.exp(-0.5 * ((np.arange(r) - (r - 1) / 2) / (sigma_scale * r)) ** 2)
            g = np.maximum(g / g.max(), 1e-6)
            shape = [1] * nd
            shape[a] = r
            imp = imp * g.reshape(shape)
    acc = np.zeros((K,) + P)
    wsum = np.zeros(P)
    subsets = [c for k in range(len(mirror) + 1) for c in itertools.combinations(mirror, k)]
    for st in itertools.product(*grids):
        region = tuple(slice(s, s + r) for s, r in zip(st, roi))
        win = xp[(slice(None),) + region]
        p = np.zeros((K,) + tuple(roi))
        for sub in subsets:
            axes = tuple(a + 1 for a in sub)
            w_in = np.ascontiguousarray(np.flip(win, axes) if axes else win)
            y = model(torch.from_numpy(w_in)[None])[0].numpy()
            p += np.flip(y, axes) if axes else y
        p /= len(subsets)
        acc[(slice(None),) + region] += p * imp
        wsum[region] += imp
    res = acc / wsum
    crop = tuple(slice(b, b + n) for (b, _), n in zip(pads, sp))
    return torch.from_numpy(np.ascontiguousarray(res[(slice(None),) + crop]))
]]
local function py(code)
  local src = (PRELUDE .. code):gsub('\\', '\\\\'):gsub("'", "\\'"):gsub('\n', '\\n')
  return "run('" .. src .. "')"
end
local function pylist(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = tostring(v) end
  return '[' .. table.concat(s, ', ') .. ']'
end

-- A model that is neither translation- nor flip-equivariant: a 3^nd
-- convolution with zero padding (window edges matter), tanh, plus a ramp
-- that depends on the position inside the window.
local function ramp_of(K, roi, seed)
  return check.sine({ K, unpack(roi) }, 'f64', seed) * 0.5
end
local convs = { nn.F.conv1d, nn.F.conv2d, nn.F.conv3d }
local function make_model(W, ramp, nd)
  local conv = convs[nd]
  return function(b) return conv(b, W, nil, { padding = 1 }):tanh() + ramp end
end
local function kernel(K, C, nd, seed)
  local shape = { K, C }
  for a = 1, nd do shape[#shape + 1] = 3 end
  return check.sine(shape, 'f64', seed) * 0.6
end

-- Cases compared with the reference. out is preallocated f64 so that the
-- comparison is tight.
local cases = {
  { name = '2-D, shape not divisible by the step, batch 3', x = { 2, 13, 11 }, roi = { 5, 4 }, K = 3,
    opts = { overlap = 0.5, batch = 3 } },
  { name = '3-D, overlap 0.4, sigma 0.2, batch 4', x = { 1, 9, 7, 10 }, roi = { 4, 5, 3 }, K = 2,
    opts = { overlap = 0.4, batch = 4, sigma_scale = 0.2 } },
  { name = '3-D, constant weighting, overlap 0', x = { 2, 7, 6, 5 }, roi = { 3, 4, 2 }, K = 2,
    opts = { overlap = 0, batch = 5, weighting = 'constant' } },
  { name = '2-D, one axis shorter than the roi (odd padding), pad_value', x = { 2, 3, 9 }, roi = { 6, 4 }, K = 2,
    opts = { overlap = 0.5, batch = 2, pad_value = 0.7 } },
  { name = '3-D, smaller than the roi on every axis', x = { 1, 3, 4, 2 }, roi = { 4, 4, 5 }, K = 3,
    opts = { overlap = 0.5, pad_value = -0.3 } },
  { name = '2-D, mirroring both axes', x = { 1, 9, 10 }, roi = { 4, 6 }, K = 2,
    opts = { overlap = 0.5, batch = 3, mirror = { 0, 1 } } },
  { name = '3-D, mirroring axes 2 and 0, short axis', x = { 2, 6, 3, 7 }, roi = { 4, 4, 4 }, K = 2,
    opts = { overlap = 0.25, batch = 2, mirror = { 2, 0 } } },
  { name = '3-D, tiny sigma (per-axis floor)', x = { 1, 8, 6, 7 }, roi = { 4, 4, 4 }, K = 2,
    opts = { overlap = 0.5, batch = 4, sigma_scale = 0.02 } },
  { name = '1-D', x = { 2, 17 }, roi = { 6 }, K = 2, opts = { overlap = 0.7, batch = 2 } },
  { name = 'batched input (N x C x ...)', x = { 3, 2, 8, 7 }, roi = { 5, 4 }, K = 2, batched = true,
    opts = { overlap = 0.5, batch = 3, mirror = { 1 } } },
}

describe('inference.sliding_window', function()
  local oracle_cases = {}
  for i, c in ipairs(cases) do
    local nd = #c.roi
    local C = c.batched and c.x[2] or c.x[1]
    c.input = check.sine(c.x, 'f64', i)
    c.W = kernel(c.K, C, nd, i + 10)
    c.ramp = ramp_of(c.K, c.roi, i + 20)
    local o = c.opts
    oracle_cases[i] = { py(string.format("result = reference(x, W, ramp, %s, %.17g, '%s', %.17g, %s, %.17g)",
      pylist(c.roi), o.overlap or 0.5, o.weighting or 'gaussian', o.sigma_scale or 0.125, pylist(o.mirror or {}),
      o.pad_value or 0)), x = c.input, W = c.W, ramp = c.ramp }
  end
  local expected = oracle.run(oracle_cases)

  for i, c in ipairs(cases) do
    it('matches a full-weight-volume reference: ' .. c.name, function()
      assert.is_nil(expected[i].error)
      local model = make_model(c.W, c.ramp, #c.roi)
      local opts = { roi = c.roi, out = lumen.zeros(expected[i][1]:size(), 'f64') }
      for k, v in pairs(c.opts) do opts[k] = v end
      local y = sliding_window(model, c.input, opts)
      assert.are.equal(opts.out, y)
      check.assert_close(y, expected[i][1], { rtol = 1e-10, atol = 1e-12 }, c.name)
      -- the default output is f32, and close to the same values
      opts.out = nil
      local y32 = sliding_window(model, c.input, opts)
      assert.are.equal('f32', y32:dtype())
      check.assert_close(y32, expected[i][1], { rtol = 1e-5, atol = 1e-5, dtype = false }, c.name .. ' (f32)')
    end)
  end

  it('mirroring equals the average of runs with explicitly flipped windows', function()
    local x = check.sine({ 2, 7, 9, 6 }, 'f64', 3)
    local W, ramp = kernel(2, 2, 3, 4), ramp_of(2, { 4, 5, 3 }, 5)
    local model = make_model(W, ramp, 3)
    local opts = { roi = { 4, 5, 3 }, overlap = 0.5, batch = 3 }
    local sum = lumen.zeros(2, 7, 9, 6, 'f64')
    for _, dims in ipairs { {}, { 2 }, { 4 }, { 2, 4 } } do
      local flipped_model = model
      if #dims > 0 then
        flipped_model = function(b) return lumen.flip(model(lumen.flip(b, dims)), dims) end
      end
      opts.out = lumen.zeros(2, 7, 9, 6, 'f64')
      sum = sum + sliding_window(flipped_model, x, opts)
    end
    opts.mirror, opts.out = { 0, 2 }, lumen.zeros(2, 7, 9, 6, 'f64')
    check.assert_close(sliding_window(model, x, opts), sum / 4, { rtol = 1e-12, atol = 1e-12 })
  end)

  it('mirroring a flip-equivariant model changes nothing', function()
    -- a kernel symmetric under every flip, no ramp: flipping the input
    -- flips the output
    local x = check.sine({ 2, 9, 8, 7 }, 'f64', 7)
    local k1 = lumen.tensor({ 0.25, 1, 0.25 }, 'f64')
    local W = (k1:view(3, 1, 1) * k1:view(1, 3, 1) * k1:view(1, 1, 3)):view(1, 1, 3, 3, 3)
    W = lumen.cat({ W:expand(1, 2, 3, 3, 3) * 0.3, W:expand(1, 2, 3, 3, 3) * -0.2 }, 0):contiguous()
    local model = function(b) return nn.F.conv3d(b, W, nil, { padding = 1 }):tanh() end
    local opts = { roi = { 4, 5, 3 }, overlap = 0.5, batch = 2, out = lumen.zeros(2, 9, 8, 7, 'f64') }
    local plain = sliding_window(model, x, opts)
    opts.mirror, opts.out = { 0, 1, 2 }, lumen.zeros(2, 9, 8, 7, 'f64')
    check.assert_close(sliding_window(model, x, opts), plain, { rtol = 1e-12, atol = 1e-12 })
  end)

  it('with a 1x1 convolution gives the convolution of the whole volume', function()
    -- every window predicts the same value at a voxel, so any weighting
    -- gives it back; padded windows and a callable module included
    local conv = nn.Conv3d(3, 4, 1)
    for _, c in ipairs {
      { shape = { 3, 11, 9, 10 }, opts = { roi = { 4, 5, 6 }, overlap = 0.5, batch = 3 } },
      { shape = { 3, 11, 9, 10 }, opts = { roi = { 4, 5, 6 }, overlap = 0.3, weighting = 'constant', batch = 4 } },
      { shape = { 3, 3, 9, 4 }, opts = { roi = { 6, 5, 6 }, overlap = 0.5, pad_value = 5, mirror = { 1 } } },
      { shape = { 3, 8, 8, 8 }, opts = { roi = { 4, 4, 4 }, overlap = 0.5, sigma_scale = 0.02, batch = 8 } },
    } do
      local x = check.sine(c.shape, 'f32', 2)
      local whole = conv(x:unsqueeze(0)):squeeze(0)
      local y = sliding_window(conv, x, c.opts)
      check.assert_close(y, whole, { rtol = 1e-5, atol = 1e-6 }, table.concat(c.shape, 'x'))
    end
    local x2 = check.sine({ 2, 13, 6 }, 'f32', 4)
    local conv2 = nn.Conv2d(2, 3, 1)
    check.assert_close(sliding_window(conv2, x2, { roi = { 5, 5 }, overlap = 0.6, batch = 2 }),
      conv2(x2:unsqueeze(0)):squeeze(0), { rtol = 1e-5, atol = 1e-6 }, '2-D')
  end)

  it('counts windows in progress and runs the model without grad', function()
    local calls, grad_seen = {}, {}
    local w = lumen.ones(2, 1, 1, 1):requires_grad_()
    local model = function(b)
      grad_seen[#grad_seen + 1] = lumen.is_grad_enabled()
      return nn.F.conv2d(b, w)
    end
    -- 13 with roi 5, step 2: starts 0 2 4 6 8; 11 with roi 4: 0 2 4 6 7
    local y = sliding_window(model, lumen.ones(1, 13, 11), { roi = { 5, 4 }, batch = 4,
      progress = function(done, total) calls[#calls + 1] = { done, total } end })
    assert.are.same({ { 4, 25 }, { 8, 25 }, { 12, 25 }, { 16, 25 }, { 20, 25 }, { 24, 25 }, { 25, 25 } }, calls)
    for _, g in ipairs(grad_seen) do assert.is_false(g) end
    assert.is_true(lumen.is_grad_enabled())
    assert.is_false(y.requires_grad)
    -- grad mode comes back after an error too
    pcall(sliding_window, function() error('boom') end, lumen.ones(1, 4, 4), { roi = { 2, 2 } })
    assert.is_true(lumen.is_grad_enabled())
  end)

  it('needs one value per class and voxel, plus the window batches', function()
    local K, n = 4, 48
    local V = n * n * n
    local x = check.sine({ 1, n, n, n }, 'f32', 1)
    local W = check.sine({ K, 1, 1, 1, 1 }, 'f32', 2)
    local model = function(b) return nn.F.conv3d(b, W):tanh() end
    collectgarbage()
    lumen.reset_peak_memory()
    local base = lumen.memory().live
    local y = sliding_window(model, x, { roi = { 8, 8, 8 }, overlap = 0.5, batch = 4 })
    local extra = lumen.memory().peak - base
    assert.is_true(extra >= K * V * 4, 'peak below the output itself')
    -- a second volume-sized buffer (a weight volume, a full-size
    -- temporary) would add at least V * 4 bytes
    assert.is_true(extra < (K + 1) * V * 4, string.format('peak %d bytes over the baseline, output %d', extra, K * V * 4))
    y:free()
  end)

  describe('bad input', function()
    local model = function(b) return b end
    local x = lumen.ones(2, 6, 6)
    local function err(pattern, ...)
      local ok, msg = pcall(sliding_window, ...)
      assert.is_false(ok, 'no error, expected ' .. pattern)
      assert.is_truthy(tostring(msg):find('lumen.inference.sliding_window: ' .. pattern, 1, true), tostring(msg))
    end
    it('refuses bad arguments and options, naming them', function()
      err('model must be a function', 3, x, { roi = { 2, 2 } })
      err('x must be a tensor', model, { 1, 2 }, { roi = { 2, 2 } })
      err("options must be a table with at least 'roi'", model, x)
      err("unknown option 'overlapp'", model, x, { roi = { 2, 2 }, overlapp = 0.5 })
      err("option 'roi' must be a list of 1 to 3 window sizes", model, x, { roi = 4 })
      err("option 'roi' must be a list of 1 to 3 window sizes", model, x, { roi = { 2, 2, 2, 2 } })
      err("option 'roi' entry 2 is 0, expected a positive integer", model, x, { roi = { 2, 0 } })
      err("x is 3-D (2x6x6), but option 'roi' has 3 sizes: expected C x spatial (4-D) or N x C x spatial (5-D)",
        model, x, { roi = { 2, 2, 2 } })
      err("x is 1-D (72), but option 'roi' has 2 sizes: expected C x spatial (3-D) or N x C x spatial (4-D)",
        model, lumen.ones(72), { roi = { 2, 2 } })
      err("option 'overlap' is 1, expected a number in [0, 1)", model, x, { roi = { 2, 2 }, overlap = 1 })
      err("option 'overlap' is -0.1, expected a number in [0, 1)", model, x, { roi = { 2, 2 }, overlap = -0.1 })
      err("option 'batch' is 0, expected a positive integer", model, x, { roi = { 2, 2 }, batch = 0 })
      err("option 'weighting' is box, expected 'gaussian' or 'constant'", model, x, { roi = { 2, 2 }, weighting = 'box' })
      err("option 'sigma_scale' is 0, expected a positive number", model, x, { roi = { 2, 2 }, sigma_scale = 0 })
      err("option 'mirror' entry 1 is 2, expected a spatial axis 0 to 1", model, x, { roi = { 2, 2 }, mirror = { 2 } })
      err("option 'mirror' lists axis 1 twice", model, x, { roi = { 2, 2 }, mirror = { 1, 1 } })
      err("option 'num_classes' is 1.5, expected a positive integer", model, x, { roi = { 2, 2 }, num_classes = 1.5 })
      err("option 'pad_value' is a table, expected a number", model, x, { roi = { 2, 2 }, pad_value = {} })
      err("option 'progress' must be a function", model, x, { roi = { 2, 2 }, progress = 1 })
      err("option 'out' is 3x6x5, expected K x 6 x 6", model, x, { roi = { 2, 2 }, out = lumen.zeros(3, 6, 5) })
      err("option 'out' is 3x6x6, expected 2 x 6 x 6", model, x,
        { roi = { 2, 2 }, num_classes = 2, out = lumen.zeros(3, 6, 6) })
      err("option 'out' is i32, expected f32 or f64", model, x, { roi = { 2, 2 }, out = lumen.zeros({ 2, 6, 6 }, 'i32') })
    end)
    it('refuses a model output of the wrong shape', function()
      err('model returned 2x3x3 for a batch of 2x2x3x3 windows, expected 2 x K x 3 x 3 (windows x classes x roi)',
        function(b) return b:select(1, 0) end, x, { roi = { 3, 3 }, batch = 2 })
      err('model returned 2x2x2x3 for a batch of 2x2x3x3 windows, expected 2 x K x 3 x 3',
        function(b) return b:narrow(2, 0, 2) end, x, { roi = { 3, 3 }, batch = 2 })
      err('model returned 1x2x3x3 for a batch of 2x2x3x3 windows',
        function(b) return b:narrow(0, 0, 1) end, x, { roi = { 3, 3 }, batch = 2 })
      err("model returned 2 classes (1x2x3x3), but option 'num_classes' is 3", model, x,
        { roi = { 3, 3 }, num_classes = 3 })
      err("model returned 2 classes (1x2x3x3), but option 'out' has 4", model, x,
        { roi = { 3, 3 }, out = lumen.zeros(4, 6, 6) })
      err('model returned nil, expected a tensor', function() end, x, { roi = { 3, 3 } })
      -- the class count may not change between calls either
      local n = 0
      err('model returned 3 classes (1x3x3x3), but its first output had 2', function(b)
        n = n + 1
        return n == 1 and b or lumen.cat({ b, b:narrow(1, 0, 1) }, 1)
      end, x, { roi = { 3, 3 } })
    end)
    it('the C loops refuse bad arguments with a message', function()
      local ffi = require 'ffi'
      local C, ctx = lumen.core.C, lumen.core.ctx
      local out = lumen.zeros(2, 4, 4)
      local start, w = ffi.new('int64_t[2]'), ffi.new('double[4]', { 1, 1, 1, 1 })
      local function msg(st)
        assert.is_true(st < 0)
        local m = ffi.string(C.lm_ctx_errmsg(ctx))
        C.lm_ctx_clear_error(ctx)
        return m
      end
      assert.are.equal("window_accumulate: prediction is f64, expected the output's f32",
        msg(C.lm_window_accumulate(ctx, out.h, lumen.zeros({ 2, 2, 2 }, 'f64').h, start, w, 0, 1)))
      assert.are.equal('window_accumulate: prediction is 3x2x2, expected 2 classes and 2 spatial dims as the output (2x4x4)',
        msg(C.lm_window_accumulate(ctx, out.h, lumen.zeros(3, 2, 2).h, start, w, 0, 1)))
      assert.are.equal('window_accumulate: output is i32, expected f32 or f64',
        msg(C.lm_window_accumulate(ctx, lumen.zeros({ 2, 4, 4 }, 'i32').h, lumen.zeros(2, 2, 2).h, start, w, 0, 1)))
      assert.are.equal('window_accumulate: output is 1-D (4), expected classes x 1 to 3 spatial dims',
        msg(C.lm_window_accumulate(ctx, lumen.zeros(4).h, lumen.zeros(2).h, start, w, 0, 1)))
      local sums = ffi.new('double[8]', { 1, 1, 1, 1, 1, 0, 1, 1 })
      assert.are.equal('window_normalize: weight sum 0 at position 1 of spatial axis 1, expected > 0',
        msg(C.lm_window_normalize(ctx, out.h, sums)))
    end)
    it('blames the caller line', function()
      local ok, msg = pcall(function() local y = sliding_window(model, x, { roi = { 2, 2, 2 } }); return y end)
      assert.is_false(ok)
      assert.is_truthy(msg:find('inference_spec.lua:%d+: lumen%.inference'), msg)
      ok, msg = pcall(function() local y = sliding_window(function() return 1 end, x, { roi = { 2, 2 } }); return y end)
      assert.is_truthy(msg:find('inference_spec.lua:%d+: lumen%.inference'), msg)
    end)
  end)
end)
