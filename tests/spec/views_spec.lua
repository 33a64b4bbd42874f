-- Views and creation against PyTorch.
local lumen = require 'lumen'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'

describe('views', function()
  local x = lumen.arange(24, 'f32'):reshape(2, 3, 4)
  local cases = {
    { 'x.transpose(0, 2)', lumen = x:transpose(0, 2) },
    { 'x.permute(2, 0, 1)', lumen = x:permute(2, 0, 1) },
    { 'x[:, 1:3, ::2]', lumen = x[{ {}, { 1, 3 }, { 0, nil, 2 } }] },
    { 'x[1]', lumen = x[1] },
    { 'x.transpose(0, 1).reshape(6, 4)', lumen = x:transpose(0, 1):reshape(6, 4) },
    { 'x.unsqueeze(1).expand(2, 5, 3, 4)', lumen = x:unsqueeze(1):expand(2, 5, 3, 4) },
    { 'x[:, :1].squeeze()', lumen = x[{ {}, { 0, 1 } }]:squeeze() },
    { 'x.narrow(2, 1, 2).contiguous()', lumen = x:narrow(2, 1, 2):contiguous() },
    { 'x.view(4, 6)[:, -2:]', lumen = x:view(4, 6)[{ {}, { -2 } }] },
    { 'x[:, 0:0]', lumen = x[{ {}, { 0, 0 } }] },
    { 'torch.eye(3, 4, dtype=torch.int64)', lumen = lumen.eye(3, 4, 'i64') },
    { 'torch.linspace(-1, 2, 7)', lumen = lumen.linspace(-1, 2, 7) },
    { 'torch.arange(2, 11, 3)', lumen = lumen.arange(2, 11, 3) },
    { 'torch.full((2, 2), 7, dtype=torch.uint8)', lumen = lumen.full({ 2, 2 }, 7, 'u8') },
    { 'torch.tensor([[True, False]])', lumen = lumen.tensor({ { true, false } }) },
    { 'x.to(torch.int32)[1, 2]', lumen = x:i32()[{ 1, 2 }] },
  }
  local batch = {}
  for i, c in ipairs(cases) do batch[i] = { c[1], x = x } end
  local ref = oracle.run(batch)
  for i, c in ipairs(cases) do
    it(c[1], function()
      assert(not ref[i].error, ref[i].error)
      check.assert_close(c.lumen, ref[i][1], { rtol = 0, atol = 0 })
    end)
  end

  it('assigns through indexing', function()
    local t = lumen.zeros(3, 4)
    t[{ 1, { 1, 3 } }] = 5
    t[2] = lumen.tensor({ 1, 2, 3, 4 })
    assert.are.same({ { 0, 0, 0, 0 }, { 0, 5, 5, 0 }, { 1, 2, 3, 4 } }, t:totable())
    assert.are.equal(5, t[{ 1, 2 }])
  end)

  it('reports bad views clearly', function()
    assert.has_error(function() x:view(5, 5) end, 'lumen.view: cannot reshape 2x3x4 (24 elements) to 5x5')
    assert.has_error(function() x:select(3, 0) end, 'lumen.select: dimension 3 out of range for a 3-D tensor')
    assert.has_error(function() x:permute(0, 0, 1) end)
    assert.has_error(function() lumen.zeros(2, 'f16') end)
  end)
end)

describe('guards', function()
  it('refuses shapes whose element count overflows', function()
    assert.has_error(function() lumen.empty({ 0 }):view(2 ^ 32, 2 ^ 32) end,
      'lumen.view: shape 4294967296x4294967296 has too many elements, expected at most 576460752303423487')
    assert.has_error(function() lumen.ones(1):expand(2 ^ 32, 2 ^ 32) end)
  end)

  it('copies between overlapping views as if through a temporary', function()
    local a = lumen.arange(12, 'f32')
    a[{ { 1, 11 } }]:copy_(a[{ { 0, 10 } }])
    assert.are.same({ 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11 }, a:totable())
    local m = lumen.arange(9, 'f64'):view(3, 3)
    m:copy_(m:t())
    assert.are.same({ { 0, 3, 6 }, { 1, 4, 7 }, { 2, 5, 8 } }, m:totable())
  end)

  it('refuses to write into expanded views', function()
    local ex = lumen.zeros(1, 4):expand(3, 4)
    assert.has_error(function() ex:copy_(lumen.ones(3, 4)) end,
      'lumen.copy: the destination of shape 3x4 is an expanded view (stride 0 in dimension 0), expected memory of its own (clone it first)')
    assert.has_error(function() ex:masked_fill_(lumen.ones(3, 4, 'bool'), 1) end)
    assert.has_error(function() ex:scatter_add_(0, lumen.zeros(3, 4, 'i64'), lumen.ones(3, 4)) end)
  end)
end)

describe('tensor from tables', function()
  it('refuses ragged tables wherever the mismatch is', function()
    assert.has_error(function() lumen.tensor({ 1, { 2 } }) end,
      'lumen.tensor: ragged nested table (a table where a number was expected)')
    assert.has_error(function() lumen.tensor({ { 1 }, 2 }) end,
      'lumen.tensor: ragged nested table (a number where a table was expected)')
    assert.has_error(function() lumen.tensor({ { 1, 2 }, { 3 } }) end,
      'lumen.tensor: ragged nested table (dimension 1 has lengths 2 and 1)')
  end)

  it('reads item() correctly while the collector runs hard', function()
    collectgarbage('setpause', 0)
    collectgarbage('setstepmul', 100000)
    local bad = 0
    for k = 1, 2000 do
      if lumen.full({ 1 }, k, 'f64'):item() ~= k then bad = bad + 1 end
    end
    collectgarbage('setpause', 200)
    collectgarbage('setstepmul', 200)
    assert.are.equal(0, bad)
  end)
end)
