-- Joining, splitting, reordering and padding against PyTorch.
local lumen = require 'lumen'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'

-- Deterministic values computed in Lua, suited to each dtype.
local function vals(shape, dtype, k)
  dtype = dtype or 'f32'
  k = k or 0
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  local flat = {}
  for i = 1, n do
    local v = math.sin(i * 1.37 + k * 0.71)
    if dtype == 'f32' or dtype == 'f64' then flat[i] = math.floor(v * 400) / 16
    elseif dtype == 'u8' then flat[i] = math.floor((v + 1) * 100)
    elseif dtype == 'bool' then flat[i] = v > 0 and 1 or 0
    else flat[i] = math.floor(v * 1000) end
  end
  local t = n > 0 and lumen.tensor(flat, dtype) or lumen.empty({ 0 }, dtype)
  return t:reshape(shape)
end

local dtypes = { 'f32', 'f64', 'i32', 'i64', 'u8', 'bool' }
local torch_dt = { f32 = 'torch.float32', f64 = 'torch.float64', i32 = 'torch.int32', i64 = 'torch.int64',
  u8 = 'torch.uint8', bool = 'torch.bool' }

-- Inputs: contiguous, transposed, sliced with steps, expanded.
local x = vals({ 2, 3, 4 })
local xt = vals({ 4, 3, 2 }, 'f32', 1):transpose(0, 2)       -- 2x3x4, non-contiguous
local xs = vals({ 2, 6, 9 }, 'f32', 2):slice(1, 0, 6, 2):slice(2, 1, 9, 2) -- 2x3x4 stepped
local xe = vals({ 1, 3, 1 }, 'f32', 3):expand(2, 3, 4)       -- 2x3x4 expanded
local big = vals({ 300, 200 }, 'f32', 4)
local bigt = vals({ 200, 300 }, 'f32', 5):t()

-- Each case: torch expression, its named inputs, and a function giving
-- lumen's result (a tensor or a list of tensors).
local cases = {
  -- cat
  { 'torch.cat([x, y], 0)', x = x, y = vals({ 1, 3, 4 }, 'f32', 6), fn = function(i) return lumen.cat({ i.x, i.y }, 0) end },
  { 'torch.cat([x, t, s, e], 1)', x = x, t = xt, s = xs, e = xe, fn = function(i) return lumen.cat({ i.x, i.t, i.s, i.e }, 1) end },
  { 'torch.cat([t, e, x], -1)', x = x, t = xt, e = xe, fn = function(i) return lumen.cat({ i.t, i.e, i.x }, -1) end },
  { 'torch.cat([x, z], 1)', x = x, z = lumen.zeros(2, 0, 4), fn = function(i) return lumen.cat({ i.x, i.z }, 1) end },
  { 'torch.cat([z, x, z])', x = x, z = lumen.zeros(0), fn = function(i) return lumen.cat({ i.z, i.x, i.z }) end },
  { 'torch.cat([z, z])', z = lumen.zeros(0, 'i32'), fn = function(i) return lumen.cat({ i.z, i.z }) end },
  { 'torch.cat([x, z])', x = x, z = lumen.zeros(0, 'f64'), fn = function(i) return lumen.cat({ i.x, i.z }) end },
  { 'torch.cat([a, b, a])', a = vals({ 1 }, 'f32', 1), b = vals({ 1 }, 'f32', 2),
    fn = function(i) return lumen.cat({ i.a, i.b, i.a }) end },
  { 'torch.cat([x])', x = xt, fn = function(i) return lumen.cat({ i.x }) end },
  { 'torch.cat([a, b], 1)', a = big, b = vals({ 300, 100 }, 'f32', 7), fn = function(i) return lumen.cat({ i.a, i.b }, 1) end },
  { 'torch.cat([a, b, a], 0)', a = big, b = bigt, fn = function(i) return lumen.cat({ i.a, i.b, i.a }, 0) end },
  { 'torch.cat([a, b], 1)', a = big:i64(), b = bigt, fn = function(i) return lumen.cat({ i.a, i.b }, 1) end },
  -- flip
  { 'torch.flip(x, [0])', x = x, fn = function(i) return i.x:flip(0) end },
  { 'torch.flip(x, [1, 2])', x = xt, fn = function(i) return lumen.flip(i.x, { 1, 2 }) end },
  { 'torch.flip(x, [-1, 0])', x = xs, fn = function(i) return i.x:flip({ -1, 0 }) end },
  { 'torch.flip(x, [0, 1, 2])', x = xe, fn = function(i) return i.x:flip(0, 1, 2) end },
  { 'torch.flip(x, [])', x = xt, fn = function(i) return i.x:flip({}) end },
  { 'torch.flip(x, [1])', x = lumen.zeros(2, 0, 3), fn = function(i) return i.x:flip(1) end },
  { 'torch.flip(x, [])', x = lumen.full({}, 3), fn = function(i) return i.x:flip({}) end },
  { 'torch.flip(x, [0, 1])', x = big, fn = function(i) return i.x:flip({ 0, 1 }) end },
  { 'torch.flip(x, [1])', x = bigt, fn = function(i) return i.x:flip(1) end },
  -- roll
  { 'torch.roll(x, 5)', x = x, fn = function(i) return i.x:roll(5) end },
  { 'torch.roll(x, -7)', x = xt, fn = function(i) return i.x:roll(-7) end },
  { 'torch.roll(x, 1, 2)', x = xs, fn = function(i) return i.x:roll(1, 2) end },
  { 'torch.roll(x, (-1, 10), (0, -1))', x = xt, fn = function(i) return lumen.roll(i.x, { -1, 10 }, { 0, -1 }) end },
  { 'torch.roll(x, (1, 2, 1), (0, 1, 0))', x = xe, fn = function(i) return i.x:roll({ 1, 2, 1 }, { 0, 1, 0 }) end },
  { 'torch.roll(x, (3, 4), (1, 2))', x = x, fn = function(i) return i.x:roll({ 3, 4 }, { 1, 2 }) end },
  { 'torch.roll(x, 2, 0)', x = lumen.zeros(0, 3), fn = function(i) return i.x:roll(2, 0) end },
  { 'torch.roll(x, 2)', x = lumen.full({}, 3), fn = function(i) return i.x:roll(2) end },
  { 'torch.roll(x, (77, -5), (0, 1))', x = bigt, fn = function(i) return i.x:roll({ 77, -5 }, { 0, 1 }) end },
  -- pad
  { 'F.pad(x, (1, 2))', x = x, fn = function(i) return i.x:pad({ 1, 2 }) end },
  { 'F.pad(x, (1, 0, 0, 2, 2, 1), value=-1.5)', x = xt, fn = function(i) return lumen.pad(i.x, { 1, 0, 0, 2, 2, 1 }, 'constant', -1.5) end },
  { 'F.pad(x, (-1, 2, 1, -2))', x = xs, fn = function(i) return i.x:pad({ -1, 2, 1, -2 }) end },
  { 'F.pad(x, (-2, -2))', x = x, fn = function(i) return i.x:pad({ -2, -2 }) end },
  { 'F.pad(x, (-4, 0))', x = x, fn = function(i) return i.x:pad({ -4, 0 }) end },
  { 'F.pad(x, (1, 1), value=7)', x = lumen.zeros(2, 0), fn = function(i) return i.x:pad({ 1, 1 }, 'constant', 7) end },
  { 'F.pad(x, (2, 1, 1, 1), mode="reflect")', x = xt, fn = function(i) return i.x:pad({ 2, 1, 1, 1 }, 'reflect') end },
  { 'F.pad(x, (3, 3), mode="reflect")', x = xs, fn = function(i) return i.x:pad({ 3, 3 }, 'reflect') end },
  { 'F.pad(x, (-1, 2), mode="reflect")', x = x, fn = function(i) return i.x:pad({ -1, 2 }, 'reflect') end },
  { 'F.pad(x, (-3, 3), mode="reflect")', x = x, fn = function(i) return i.x:pad({ -3, 3 }, 'reflect') end },
  { 'F.pad(x, (2, 3, 3, 0), mode="replicate")', x = xe, fn = function(i) return i.x:pad({ 2, 3, 3, 0 }, 'replicate') end },
  { 'F.pad(x, (-1, 4), mode="replicate")', x = xt, fn = function(i) return i.x:pad({ -1, 4 }, 'replicate') end },
  { 'F.pad(x, (1, 2, 0, 1, 2, 0), mode="replicate")', x = vals({ 2, 2, 3, 4 }), fn = function(i) return i.x:pad({ 1, 2, 0, 1, 2, 0 }, 'replicate') end },
  { 'F.pad(x, (1, 2, 2, 1, 1, 1), mode="reflect")', x = vals({ 1, 2, 3, 4 }, 'f64'), fn = function(i) return i.x:pad({ 1, 2, 2, 1, 1, 1 }, 'reflect') end },
  -- beyond PyTorch's ranks for reflect/replicate: compare through a batch dim
  { 'F.pad(x[None, None], (2, 1), mode="reflect")[0, 0]', x = vals({ 5 }), fn = function(i) return i.x:pad({ 2, 1 }, 'reflect') end },
  { 'F.pad(x[None], (1, 1, 2, 0, 1, 1), mode="replicate")[0]', x = xt, fn = function(i) return i.x:pad({ 1, 1, 2, 0, 1, 1 }, 'replicate') end },
  { 'F.pad(x, (1, 1), mode="replicate")', x = vals({ 0, 2, 4 }), fn = function(i) return i.x:pad({ 1, 1 }, 'replicate') end },
  { 'F.pad(x, (0, 0), mode="reflect")', x = x, fn = function(i) return i.x:pad({ 0, 0 }, 'reflect') end },
  { 'F.pad(x, ())', x = lumen.full({}, 2), fn = function(i) return i.x:pad({}, 'replicate') end },
  { 'F.pad(x[None], (5, 7, 3, 2), mode="reflect")[0]', x = big, fn = function(i) return i.x:pad({ 5, 7, 3, 2 }, 'reflect') end },
  { 'F.pad(x, (5, 7, 3, 2))', x = bigt, fn = function(i) return i.x:pad({ 5, 7, 3, 2 }) end },
  -- Lua-level joining and splitting
  { 'torch.stack([x, t, s], 0)', x = x, t = xt, s = xs, fn = function(i) return lumen.stack({ i.x, i.t, i.s }) end },
  { 'torch.stack([x, e], 3)', x = x, e = xe, fn = function(i) return lumen.stack({ i.x, i.e }, 3) end },
  { 'torch.stack([x, e], -2)', x = x, e = xe, fn = function(i) return lumen.stack({ i.x, i.e }, -2) end },
  { 'torch.stack([a, b])', a = lumen.full({}, 1), b = lumen.full({}, 2, 'i32'), fn = function(i) return lumen.stack({ i.a, i.b }) end },
  { 'torch.split(x, 2, 2)', x = xt, fn = function(i) return i.x:split(2, 2) end },
  { 'torch.split(x, 3, -1)', x = xs, fn = function(i) return lumen.split(i.x, 3, -1) end },
  { 'torch.split(x, [1, 0, 2], 1)', x = xe, fn = function(i) return i.x:split({ 1, 0, 2 }, 1) end },
  { 'torch.split(x, 5)', x = x, fn = function(i) return i.x:split(5) end },
  { 'torch.split(x, 2)', x = lumen.zeros(0, 2), fn = function(i) return i.x:split(2) end },
  { 'torch.chunk(x, 3, 2)', x = vals({ 2, 2, 5 }), fn = function(i) return i.x:chunk(3, 2) end },
  { 'torch.chunk(x, 4, 2)', x = vals({ 2, 2, 6 }), fn = function(i) return i.x:chunk(4, 2) end },
  { 'torch.chunk(x, 2)', x = lumen.zeros(0, 2), fn = function(i) return i.x:chunk(2) end },
  { 'torch.unbind(x, 1)', x = xt, fn = function(i) return i.x:unbind(1) end },
  { 'torch.unbind(x)', x = xe, fn = function(i) return lumen.unbind(i.x) end },
}

-- every dtype through each op
for _, dt in ipairs(dtypes) do
  local a, b = vals({ 3, 4 }, dt, 1), vals({ 4, 3 }, dt, 2):t()
  local td = torch_dt[dt]
  cases[#cases + 1] = { 'torch.cat([a, b], 0)', a = a, b = b, fn = function(i) return lumen.cat({ i.a, i.b }) end }
  cases[#cases + 1] = { 'torch.flip(b, [0, 1])', b = b, fn = function(i) return i.b:flip({ 0, 1 }) end }
  cases[#cases + 1] = { 'torch.roll(b, (1, -1), (0, 1))', b = b, fn = function(i) return i.b:roll({ 1, -1 }, { 0, 1 }) end }
  cases[#cases + 1] = { 'F.pad(b, (1, 2, 2, 1), value=3)', b = b, fn = function(i) return i.b:pad({ 1, 2, 2, 1 }, 'constant', 3) end }
  -- PyTorch reflect/replicate take floats only: pad a f64 copy, convert back
  cases[#cases + 1] = { 'F.pad(b[None].double(), (2, 1, 1, 2), mode="reflect")[0].to(' .. td .. ')', b = b,
    fn = function(i) return i.b:pad({ 2, 1, 1, 2 }, 'reflect') end }
  cases[#cases + 1] = { 'F.pad(b[None].double(), (1, 3, 2, 0), mode="replicate")[0].to(' .. td .. ')', b = b,
    fn = function(i) return i.b:pad({ 1, 3, 2, 0 }, 'replicate') end }
  -- promotion against every other dtype
  for _, dt2 in ipairs(dtypes) do
    cases[#cases + 1] = { 'torch.cat([a, c], 1)', a = a, c = vals({ 3, 2 }, dt2, 3),
      fn = function(i) return lumen.cat({ i.a, i.c }, 1) end }
  end
end

describe('shape', function()
  local ref = oracle.run(cases)
  for k, c in ipairs(cases) do
    local inputs = {}
    for name, t in pairs(c) do
      if type(name) == 'string' and name ~= 'fn' then inputs[#inputs + 1] = name .. ':' .. t:dtype() .. ':' .. table.concat(t:size(), 'x') end
    end
    table.sort(inputs)
    it(string.format('%s [%s]', c[1], table.concat(inputs, ' ')), function()
      assert(not ref[k].error, ref[k].error)
      local got = c.fn(c)
      if lumen.is_tensor(got) then got = { got } end
      assert.are.equal(#ref[k], #got, 'number of outputs')
      for j = 1, #got do check.assert_close(got[j], ref[k][j], { rtol = 0, atol = 0 }, 'output ' .. j) end
    end)
  end

  it('returns split, chunk and unbind pieces as views', function()
    local t = lumen.zeros(4, 3)
    local parts = t:split(2)
    parts[2]:fill_(1)
    t:chunk(3, 1)[3]:fill_(2)
    t:unbind(0)[1]:fill_(3)
    assert.are.same({ { 3, 3, 3 }, { 0, 0, 2 }, { 1, 1, 2 }, { 1, 1, 2 } }, t:totable())
  end)

  it('makes new storage for cat, flip, roll and pad', function()
    local t = lumen.zeros(2, 2)
    local outs = { lumen.cat({ t }), t:flip({}), t:roll(0), t:pad({ 0, 0 }), t:pad({}, 'reflect') }
    t:fill_(5)
    for _, o in ipairs(outs) do assert.are.same({ { 0, 0 }, { 0, 0 } }, o:totable()) end
  end)

  it('reports bad cat arguments', function()
    assert.has_error(function() lumen.cat({ x, lumen.zeros(3, 3, 4) }, 1) end,
      'lumen.cat: input 1 has shape 3x3x4, expected 2x3x4 like input 0 except in dimension 1 (size 3 vs 2 in dimension 0)')
    assert.has_error(function() lumen.cat({ x, x, lumen.zeros(2, 3) }) end,
      'lumen.cat: input 2 has shape 2x3 (2-D), expected 3-D like input 0 (2x3x4)')
    assert.has_error(function() lumen.cat({ lumen.zeros(0), lumen.full({}, 1) }) end,
      'lumen.cat: input 1 is 0-dimensional (a scalar) and cannot be concatenated')
    assert.has_error(function() lumen.cat({ x }, 3) end, 'lumen.cat: dimension 3 out of range for 3-D inputs')
    assert.has_error(function() lumen.cat({}) end, 'lumen.cat: expected a non-empty list of tensors')
    assert.has_error(function() lumen.cat({ x, 3 }) end, 'lumen.cat: input 1 is number, expected a tensor')
    assert.has_error(function() lumen.cat(x) end, 'lumen.cat: expected a list of tensors, got a tensor')
    assert.has_error(function() lumen.cat({ x }, 0.5) end, 'lumen.cat: dim must be an integer, got 0.5')
  end)

  it('reports bad stack, split, chunk and unbind arguments', function()
    assert.has_error(function() lumen.stack({ x, x:slice(0, 0, 1) }) end,
      'lumen.stack: input 1 has shape 1x3x4, expected 2x3x4 like input 0 (stack needs equal shapes)')
    assert.has_error(function() lumen.stack({ x }, 4) end, 'lumen.stack: dimension 4 out of range for stacking 3-D tensors')
    assert.has_error(function() lumen.stack({}) end, 'lumen.stack: expected a non-empty list of tensors')
    assert.has_error(function() x:split({ 1, 2 }, 2) end,
      'lumen.split: sizes {1, 2} add up to 3, expected 4 (the size of dimension 2)')
    assert.has_error(function() x:split(0, 1) end,
      'lumen.split: split size 0 is only allowed for a dimension of size 0, got size 3')
    assert.has_error(function() x:split(-1) end, 'lumen.split: split size -1 is negative')
    assert.has_error(function() x:split({ 3, -1 }, 1) end, 'lumen.split: size 2 is -1, expected a non-negative integer')
    assert.has_error(function() x:split(2, 3) end, 'lumen.split: dimension 3 out of range for a 3-D tensor')
    assert.has_error(function() x:chunk(0) end, 'lumen.chunk: chunks must be positive, got 0')
    assert.has_error(function() x:unbind(-4) end, 'lumen.unbind: dimension -4 out of range for a 3-D tensor')
  end)

  it('reports bad flip and roll arguments', function()
    assert.has_error(function() x:flip({ 0, -3 }) end, 'lumen.flip: dimension 0 appears more than once in dims')
    assert.has_error(function() x:flip(3) end, 'lumen.flip: dimension 3 out of range for a 3-D tensor')
    assert.has_error(function() x:flip('a') end, 'lumen.flip: dims must be an integer or a list of integers, got string')
    assert.has_error(function() x:roll({ 1 }, { 0, 1 }) end, 'lumen.roll: 1 shifts for 2 dims, they must pair up')
    assert.has_error(function() x:roll({ 1, 2 }) end,
      'lumen.roll: 2 shifts without dims, expected one shift for the flattened tensor')
    assert.has_error(function() x:roll(1, -4) end, 'lumen.roll: dimension -4 out of range for a 3-D tensor')
    assert.has_error(function() lumen.full({}, 1):roll(1, 0) end, 'lumen.roll: dimension 0 out of range for a 0-D tensor')
  end)

  it('reports bad pad arguments', function()
    assert.has_error(function() x:pad({ 1, 1, 1 }) end, 'lumen.pad: pads has 3 entries, expected (before, after) pairs')
    assert.has_error(function() x:pad({ 1, 1, 1, 1, 1, 1, 1, 1 }) end,
      'lumen.pad: 4 (before, after) pairs for a 3-D tensor (2x3x4), at most 3')
    assert.has_error(function() x:pad({ 1, 1 }, 'wrap') end,
      "lumen.pad: unknown mode 'wrap' (expected 'constant', 'reflect' or 'replicate')")
    assert.has_error(function() x:pad({ 4, 0 }, 'reflect') end,
      'lumen.pad: reflect padding (4, 0) of dimension 2 must be less than its size 4 (input 2x3x4)')
    assert.has_error(function() x:pad({ -3, -2 }) end,
      'lumen.pad: padding (-3, -2) leaves dimension 2 of size 4 with negative size -1 (input 2x3x4)')
    assert.has_error(function() lumen.zeros(2, 0):pad({ 1, 0 }, 'replicate') end,
      'lumen.pad: replicate padding of dimension 1 needs a non-empty dimension (input 2x0)')
    assert.has_error(function() x:pad({ 1.5, 0 }) end, 'lumen.pad: pads entry 1 is 1.5, expected an integer')
    assert.has_error(function() x:pad({ 1, 0 }, 'constant', 'a') end, 'lumen.pad: value must be a number, got string')
    assert.has_error(function() x:pad(1) end, 'lumen.pad: pads must be a list of integers, got number')
  end)
end)
