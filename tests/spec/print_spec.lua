-- Printing tensors: exact strings for small cases, and the value layout
-- checked against PyTorch's own formatter (torch._tensor_str._tensor_str
-- with indent 0) on many inputs in one Python process.
local lumen = require 'lumen'
local ffi = require 'ffi'

local C = lumen.core.C

-- A Python expression that rebuilds t's values in PyTorch.
local torch_dtype = { f32 = 'float32', f64 = 'float64', i32 = 'int32', i64 = 'int64', u8 = 'uint8', bool = 'bool' }
local function pyexpr(t)
  local c = t:contiguous()
  local dt = c:dtype()
  local p = ffi.cast(lumen.core.ctypes[lumen.core.dtypes[dt]], c:data_ptr())
  local vals = {}
  for i = 0, c:numel() - 1 do
    local v = p[i]
    if dt == 'i64' then vals[#vals + 1] = (tostring(v):gsub('LL$', ''))
    elseif dt == 'bool' then vals[#vals + 1] = v ~= 0 and 'True' or 'False'
    else
      v = tonumber(v)
      if v ~= v then vals[#vals + 1] = "float('nan')"
      elseif v == math.huge then vals[#vals + 1] = "float('inf')"
      elseif v == -math.huge then vals[#vals + 1] = "float('-inf')"
      else
        local s = string.format('%.17g', v)
        -- a float literal, so that -0 stays negative zero
        vals[#vals + 1] = s:find('[.e]') and s or s .. '.0'
      end
    end
  end
  local shape = c:size()
  return string.format('torch.tensor([%s], dtype=torch.%s).reshape((%s))', table.concat(vals, ','),
    torch_dtype[dt], #shape > 0 and (table.concat(shape, ',') .. ',') or '')
end

-- PyTorch's body strings for each {tensor, options} case.
local function torch_bodies(cases)
  local script = os.tmpname()
  local f = assert(io.open(script, 'w'))
  f:write('import torch\nfrom torch._tensor_str import _tensor_str\ncases = [\n')
  for _, c in ipairs(cases) do
    local o = {}
    for k, v in pairs(c.opts or {}) do o[#o + 1] = string.format('%s=%s', k, v == math.huge and "float('inf')"
      or v == true and 'True' or v == false and 'False' or tostring(v)) end
    f:write(string.format('  (dict(%s), %s),\n', table.concat(o, ','), pyexpr(c[1])))
  end
  f:write([[]
for o, e in cases:
    torch.set_printoptions(profile='default')
    torch.set_printoptions(**o)
    print(_tensor_str(e, 0))
    print('<<END>>')
]])
  f:close()
  local pipe = io.popen((os.getenv('LUMEN_PYTHON') or '/usr/bin/python3') .. ' ' .. script .. ' 2>&1')
  local out = pipe:read('*a')
  pipe:close()
  os.remove(script)
  local res = {}
  for body in out:gmatch('(.-)\n<<END>>\n') do res[#res + 1] = body end
  assert(#res == #cases, 'python output: ' .. out:sub(1, 2000))
  return res
end

-- values i = 1..n of a deterministic wavy sequence times scale
local function wave(n, scale, dtype)
  local v = {}
  for i = 1, n do v[i] = math.sin(i * 1.7) * scale end
  return lumen.tensor(v, dtype or 'f32')
end

describe('print', function()
  after_each(function() lumen.set_printoptions({ profile = 'default' }) end)

  it('shows small tensors exactly', function()
    assert.are.equal('[[0.0000, 1.5000, 2.0000],\n [3.0000, 4.0000, 5.2500]]\n[lumen.Tensor f32 2x3 cpu]',
      tostring(lumen.tensor({ { 0, 1.5, 2 }, { 3, 4, 5.25 } })))
    assert.are.equal('[[ 1., -2.],\n [ 3., 40.]]\n[lumen.Tensor f64 2x2 cpu]',
      tostring(lumen.tensor({ { 1, -2 }, { 3, 40 } }, 'f64')))
    assert.are.equal('[ 1.0000e-05, -2.5000e+00]\n[lumen.Tensor f32 2 cpu]', tostring(lumen.tensor({ 1e-5, -2.5 })))
    assert.are.equal('[1.0000e+00, 1.0000e+09]\n[lumen.Tensor f64 2 cpu]', tostring(lumen.tensor({ 1, 1e9 }, 'f64')))
    assert.are.equal('[1.5000,    nan,    inf,   -inf]\n[lumen.Tensor f64 4 cpu]',
      tostring(lumen.tensor({ 1.5, 0 / 0, math.huge, -math.huge }, 'f64')))
    assert.are.equal('[[  1,  -2, 300]]\n[lumen.Tensor i32 1x3 cpu]', tostring(lumen.tensor({ { 1, -2, 300 } }, 'i32')))
    assert.are.equal('[  0, 255]\n[lumen.Tensor u8 2 cpu]', tostring(lumen.tensor({ 0, 255 }, 'u8')))
    local big = lumen.empty({ 2 }, 'i64')
    ffi.cast('int64_t*', big:data_ptr())[0] = -9223372036854775807LL
    ffi.cast('int64_t*', big:data_ptr())[1] = 7
    assert.are.equal('[-9223372036854775807,                    7]\n[lumen.Tensor i64 2 cpu]', tostring(big))
    assert.are.equal('[[ true, false],\n [false,  true]]\n[lumen.Tensor bool 2x2 cpu]',
      tostring(lumen.tensor({ { true, false }, { false, true } })))
    assert.are.equal('[0., 0.]\n[lumen.Tensor f32 2 cpu]', tostring(lumen.zeros(2)))
  end)

  it('shows 0-d, empty and freed tensors', function()
    assert.are.equal('3.5000\n[lumen.Tensor f32 scalar cpu]', tostring(lumen.tensor(3.5)))
    assert.are.equal('-7\n[lumen.Tensor i64 scalar cpu]', tostring(lumen.tensor(-7, 'i64')))
    assert.are.equal('true\n[lumen.Tensor bool scalar cpu]', tostring(lumen.tensor(true)))
    assert.are.equal('[]\n[lumen.Tensor f32 0 cpu]', tostring(lumen.zeros(0)))
    assert.are.equal('[]\n[lumen.Tensor i32 2x0x3 cpu]', tostring(lumen.zeros(2, 0, 3, 'i32')))
    local t = lumen.zeros(2)
    t:free()
    assert.are.equal('[lumen.Tensor (freed)]', tostring(t))
  end)

  it('summarises large tensors', function()
    assert.are.equal('[   0,    1,    2,  ..., 1998, 1999, 2000]\n[lumen.Tensor i64 2001 cpu]',
      tostring(lumen.arange(2001)))
    local t = lumen.arange(100, 1300, 'f32'):reshape(40, 30)
    assert.are.equal(table.concat({
      '[[ 100.,  101.,  102.,  ...,  127.,  128.,  129.],',
      ' [ 130.,  131.,  132.,  ...,  157.,  158.,  159.],',
      ' [ 160.,  161.,  162.,  ...,  187.,  188.,  189.],',
      ' ...,',
      ' [1210., 1211., 1212.,  ..., 1237., 1238., 1239.],',
      ' [1240., 1241., 1242.,  ..., 1267., 1268., 1269.],',
      ' [1270., 1271., 1272.,  ..., 1297., 1298., 1299.]]',
      '[lumen.Tensor f32 40x30 cpu]' }, '\n'), tostring(t))
    -- the options change the cut
    lumen.set_printoptions({ threshold = 5, edgeitems = 2, precision = 2 })
    assert.are.equal('[0.00, 0.50,  ..., 4.00, 4.50]\n[lumen.Tensor f64 10 cpu]',
      tostring(lumen.arange(0, 5, 0.5, 'f64')))
  end)

  it('reads strided views', function()
    local x = lumen.arange(12, 'i32'):reshape(3, 4)
    assert.are.equal('[[ 0,  4,  8],\n [ 1,  5,  9],\n [ 2,  6, 10],\n [ 3,  7, 11]]\n[lumen.Tensor i32 4x3 cpu]',
      tostring(x:t()))
    assert.are.equal('[[ 1,  3],\n [ 9, 11]]\n[lumen.Tensor i32 2x2 cpu]',
      tostring(x:slice(0, 0, 3, 2):slice(1, 1, 4, 2)))
    assert.are.equal('[[5, 5, 5]]\n[lumen.Tensor i32 1x3 cpu]', tostring(x[{ { 1, 2 }, { 1, 2 } }]:expand(1, 3)))
  end)

  it('lays values out like PyTorch', function()
    local t3 = lumen.arange(12 * 12 * 12, 'f32'):reshape(12, 12, 12)
    local nonfinite = lumen.tensor({ 0 / 0, math.huge }, 'f64')
    local cases = {
      { wave(7, 1) }, { wave(7, 1000) }, { wave(7, 1e-3) }, { wave(7, 1e5, 'f64') }, { wave(50, 10) },
      { wave(60, 1e6, 'f64') }, { wave(2000, 3) }, { wave(1001, 1, 'f64'):reshape(7, 11, 13) },
      { lumen.tensor({ 1, 2000 }) }, { lumen.tensor({ 1, 1e9, -3 }, 'f64') }, { lumen.tensor({ -0.0, 0, 1 }) },
      { lumen.tensor({ -0.0, 0.5 }) }, { lumen.tensor({ 1 / 3, 2 / 3, -1 / 7 }) }, { lumen.tensor({ 123456789.5, 1 }, 'f64') },
      { lumen.tensor({ 1e-4, 0.5 }) }, { lumen.tensor({ 9.99e-5, 0.5 }, 'f64') }, { lumen.tensor({ 1e8, 1 }, 'f64') },
      { nonfinite }, { lumen.tensor({ 0 / 0, 1, 2 }) }, { lumen.tensor({ math.huge, 1.25 }) },
      { lumen.zeros(3, 4) }, { lumen.tensor(2.0) }, { lumen.tensor(1e-7, 'f64') }, { lumen.tensor(0 / 0) },
      { t3 }, { t3:permute(2, 0, 1) }, { t3[{ {}, { 0, 12, 5 } }] },
      { lumen.arange(-50, 50, 'i32') }, { lumen.arange(300, 'i64'):reshape(3, 100) }, { lumen.arange(5000, 'i64') },
      { lumen.tensor({ { 0, 7, 255 } }, 'u8') }, { lumen.arange(2000, 'u8') },
      { lumen.tensor({ true, false, true }) }, { lumen.arange(40, 'i32'):reshape(2, 4, 5):transpose(0, 2) },
      { lumen.tensor({ { 5 } }, 'i64') }, { lumen.zeros(2, 0) }, { lumen.zeros(0, 'i32') },
      { wave(7, 1), opts = { precision = 2 } }, { wave(7, 1e-3), opts = { precision = 6 } },
      { wave(30, 100), opts = { threshold = 10, edgeitems = 1 } },
      { wave(30, 100), opts = { linewidth = 40 } }, { wave(30, 1), opts = { sci_mode = true } },
      { lumen.tensor({ 1e-6, 1 }), opts = { sci_mode = false } },
      { lumen.arange(100, 'i64'), opts = { threshold = math.huge } },
    }
    local bodies = torch_bodies(cases)
    for i, c in ipairs(cases) do
      if c.opts then lumen.set_printoptions(c.opts) end
      local ours = lumen.format_values(c[1], 0)
      lumen.set_printoptions({ profile = 'default' })
      -- PyTorch's True/False have the same widths as our true/false
      local want = bodies[i]:gsub('True', 'true'):gsub('False', 'false')
      assert.are.equal(want, ours, 'case ' .. i .. ': ' .. pyexpr(c[1]):sub(1, 120))
    end
  end)

  it('rejects bad print options', function()
    assert.has_error(function() lumen.set_printoptions({ precision = -1 }) end,
      'lumen.set_printoptions: precision must be a non-negative integer, got -1')
    assert.has_error(function() lumen.set_printoptions({ digits = 3 }) end,
      "lumen.set_printoptions: unknown option 'digits' (expected precision, threshold, edgeitems, linewidth, sci_mode or profile)")
    assert.has_error(function() lumen.set_printoptions({ profile = 'long' }) end,
      "lumen.set_printoptions: profile must be 'default', 'short' or 'full'")
    assert.has_error(function() lumen.set_printoptions(3) end, 'lumen.set_printoptions: expected a table of options')
  end)
end)
