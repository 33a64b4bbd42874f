-- Dropout: the statistics torch promises (zero fraction p, mean kept by
-- the 1 / (1 - p) scale), whole channels for dropout1d/2d/3d, gradient
-- mask / (1 - p), identity in eval mode, reproducibility with manual_seed.
-- The random stream differs from torch's, so there is no value parity.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local check = require 'helpers.check'
local F = nn.F

local function mean(t) return t:to('f64'):mean():item() end

describe('dropout', function()
  it('zeroes a fraction p and scales the rest by 1 / (1 - p)', function()
    lumen.manual_seed(1)
    local n = 200000
    for _, p in ipairs { 0.1, 0.5, 0.8 } do
      for _, dt in ipairs { 'f32', 'f64' } do
        local y = F.dropout(lumen.ones(n, dt), p)
        local zeros = y:eq(0):sum():item()
        local kept = y:eq(1 / (1 - p)):sum():item()
        assert.are.equal(n, zeros + kept) -- nothing but 0 and 1 / (1 - p)
        -- binomial: 5 standard deviations
        assert(math.abs(zeros / n - p) < 5 * math.sqrt(p * (1 - p) / n), 'zero fraction ' .. zeros / n .. ' for p ' .. p)
        assert(math.abs(mean(y) - 1) < 5 * math.sqrt(p / (1 - p) / n), 'mean ' .. mean(y))
      end
    end
  end)

  it('passes gradient mask / (1 - p)', function()
    lumen.manual_seed(2)
    local x = lumen.randn(50, 40, 'f64'):requires_grad_()
    local y = F.dropout(x, 0.3)
    local g = lumen.randn(50, 40, 'f64')
    y:backward(g)
    -- mask / (1 - p) is y / x (x has no zeros)
    local scale = y:detach() / x:detach()
    check.assert_close(x.grad, g * scale, { rtol = 1e-12, atol = 1e-12 })
    local s = scale:reshape(-1)
    for i = 0, s:numel() - 1 do
      local v = s[i]
      assert(math.abs(v) < 1e-12 or math.abs(v - 1 / 0.7) < 1e-12, 'scale ' .. v)
    end
  end)

  it('is the identity in eval mode, for p = 0, and gives zeros for p = 1', function()
    local x = lumen.randn(4, 5)
    assert.are.equal(x, F.dropout(x, 0.5, false))
    assert.are.equal(x, F.dropout(x, 0))
    local m = nn.Dropout(0.5)
    m:eval()
    assert.are.equal(x, m(x))
    local x4 = lumen.randn(2, 3, 4, 4)
    assert.are.equal(x4, nn.Dropout2d(0.5):eval()(x4))
    assert.are.equal(0, F.dropout(x, 1):abs():sum():item())
    local xr = lumen.randn(3):requires_grad_()
    F.dropout(xr, 1):backward(lumen.ones(3))
    assert.are.same({ 0, 0, 0 }, xr.grad:totable())
  end)

  it('is reproducible with manual_seed', function()
    local x = lumen.randn(1000)
    lumen.manual_seed(42)
    local a = F.dropout(x, 0.5)
    lumen.manual_seed(42)
    local b = F.dropout(x, 0.5)
    check.assert_close(a, b, { rtol = 0, atol = 0 })
    local c = F.dropout(x, 0.5)
    assert(not check.close(a, c, { rtol = 0, atol = 0 }), 'the next draw differs')
  end)

  it('drops whole channels in dropout1d, 2d and 3d', function()
    lumen.manual_seed(3)
    for _, c in ipairs {
      { F.dropout1d, { 8, 16, 5 } }, { F.dropout1d, { 16, 5 } },
      { F.dropout2d, { 8, 16, 3, 4 } }, { F.dropout2d, { 16, 3, 4 } },
      { F.dropout3d, { 4, 16, 2, 3, 2 } }, { F.dropout3d, { 16, 2, 3, 2 } },
    } do
      local shape = c[2]
      local y = c[1](lumen.ones(shape), 0.5)
      -- flatten to (channels, spatial) and check each row is constant
      local nsp = 1
      local ndim_sp = (c[1] == F.dropout1d and 1) or (c[1] == F.dropout2d and 2) or 3
      for d = #shape - ndim_sp + 1, #shape do nsp = nsp * shape[d] end
      local rows = y:reshape(-1, nsp):totable()
      local dropped = 0
      for _, r in ipairs(rows) do
        for k = 2, #r do assert.are.equal(r[1], r[k]) end
        assert(r[1] == 0 or r[1] == 2)
        if r[1] == 0 then dropped = dropped + 1 end
      end
      assert(dropped > 0 and dropped < #rows, 'some channels dropped, some kept')
    end
  end)

  it('modules follow training / eval and print their p', function()
    lumen.manual_seed(4)
    local m = nn.Dropout3d(0.25)
    assert.are.equal('Dropout3d(p=0.25)', tostring(m))
    local x = lumen.ones(2, 8, 2, 2, 2)
    assert(m(x):eq(0):sum():item() > 0)
    m:eval()
    assert.are.equal(x, m(x))
  end)

  it('writes into x with inplace = true when autograd need not track it', function()
    lumen.manual_seed(5)
    local x = lumen.ones(100)
    local y = F.dropout(x, 0.5, true, true)
    assert.are.equal(x, y)
    assert(x:eq(0):sum():item() > 0)
    local r = lumen.randn(3):requires_grad_()
    assert.has_error(function() F.dropout(r, 0.5, true, true) end,
      'lumen.dropout: inplace = true cannot be tracked by autograd (the input requires grad), expected inplace = false')
  end)

  it('names the function on bad input', function()
    local x = lumen.randn(2, 3)
    assert.has_error(function() F.dropout(x, 1.5) end, 'lumen.dropout: dropout probability has to be between 0 and 1, got 1.5')
    assert.has_error(function() F.dropout(x, -0.1) end, 'lumen.dropout: dropout probability has to be between 0 and 1, got -0.1')
    assert.has_error(function() F.dropout(x, 0.5, 'yes') end, 'lumen.dropout: training must be a boolean, got string')
    assert.has_error(function() F.dropout(x:int(), 0.5) end, 'lumen.dropout: input dtype i32, expected f32 or f64')
    assert.has_error(function() F.dropout('x', 0.5) end, 'lumen.dropout: input must be a tensor, got string')
    assert.has_error(function() F.dropout(x, { q = 0.5 }) end, "lumen.dropout: unknown option 'q' (expected inplace, p, training)")
    assert.has_error(function() F.dropout2d(x, 0.5) end,
      'lumen.dropout2d: input is 2-D (2x3), expected 3-D (C x spatial) or 4-D (N x C x spatial)')
    assert.has_error(function() nn.Dropout(2) end, 'lumen.nn.Dropout: dropout probability has to be between 0 and 1, got 2')
    assert.has_error(function() nn.Dropout(0.5, { in_place = true }) end, "lumen.nn.Dropout: unknown option 'in_place' (expected inplace)")
  end)
end)
