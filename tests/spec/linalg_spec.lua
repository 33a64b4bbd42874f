-- Matrix products against PyTorch: layouts BLAS reads in place (transposed,
-- column-sliced), layouts that need a copy (stepped, expanded), 1-D
-- promotion, batch broadcasting, zero sizes, f32 and f64.
local lumen = require 'lumen'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'

-- Deterministic values in [-1, 1] computed in Lua.
local mk = check.sine

local F32 = { rtol = 1e-4, atol = 1e-4 }
local F64 = { rtol = 1e-11, atol = 1e-11 }

describe('linalg', function()
  local cases = {}
  local function case(expr, inputs, fn, tol)
    cases[#cases + 1] = { expr = expr, inputs = inputs, fn = fn, tol = tol or F32 }
  end
  local function mm2(expr, a, b, tol) case(expr, { a = a, b = b }, function() return lumen.matmul(a, b) end, tol) end

  local A, B = mk({ 5, 7 }, 'f32', 1), mk({ 7, 3 }, 'f32', 2)
  mm2('a @ b  (2-D, contiguous)', A, B)
  mm2('a @ b  (a transposed view)', mk({ 7, 5 }, 'f32', 3):t(), B)
  mm2('a @ b  (b transposed view)', A, mk({ 3, 7 }, 'f32', 4):t())
  mm2('a @ b  (both transposed)', mk({ 7, 5 }, 'f32', 5):t(), mk({ 3, 7 }, 'f32', 6):t())
  mm2('a @ b  (stepped slices)', mk({ 10, 14 }, 'f32', 7)[{ { 0, nil, 2 }, { 0, nil, 2 } }], B)
  mm2('a @ b  (column slice, ld > cols)', mk({ 5, 10 }, 'f32', 8)[{ {}, { 1, 8 } }], mk({ 7, 9 }, 'f32', 9)[{ {}, { 2, 5 } }])
  mm2('a @ b  (expanded rows)', mk({ 7 }, 'f32', 10):unsqueeze(0):expand(5, 7), B)
  mm2('a @ b  (expanded b)', A, mk({ 1, 3 }, 'f32', 11):expand(7, 3))
  mm2('a @ b  (1-D @ 2-D)', mk({ 7 }, 'f32', 12), B)
  mm2('a @ b  (2-D @ 1-D)', A, mk({ 7 }, 'f32', 13))
  mm2('a @ b  (1-D @ 1-D)', mk({ 7 }, 'f32', 14), mk({ 7 }, 'f32', 15))
  mm2('a @ b  (stepped 1-D @ 2-D)', mk({ 14 }, 'f32', 16)[{ { 0, nil, 2 } }], B)
  mm2('a @ b  (2-D @ stepped 1-D)', A, mk({ 21 }, 'f32', 17)[{ { 1, nil, 3 } }])
  mm2('a @ b  (stepped dot)', mk({ 14 }, 'f32', 18)[{ { 0, nil, 2 } }], mk({ 21 }, 'f32', 19)[{ { 0, nil, 3 } }])
  mm2('a @ b  (expanded dot)', mk({ 1 }, 'f32', 20):expand(7), mk({ 7 }, 'f32', 21))
  mm2('a @ b  (2x1x3x4 @ 5x4x6)', mk({ 2, 1, 3, 4 }, 'f32', 22), mk({ 5, 4, 6 }, 'f32', 23))
  mm2('a @ b  (3-D @ 2-D, folded)', mk({ 4, 3, 5 }, 'f32', 24), mk({ 5, 2 }, 'f32', 25))
  mm2('a @ b  (3-D @ 1-D)', mk({ 4, 3, 5 }, 'f32', 26), mk({ 5 }, 'f32', 27))
  mm2('a @ b  (1-D @ 3-D)', mk({ 5 }, 'f32', 28), mk({ 4, 5, 2 }, 'f32', 29))
  mm2('a @ b  (batched transposed)', mk({ 4, 5, 3 }, 'f32', 30):transpose(1, 2), mk({ 4, 2, 5 }, 'f32', 31):transpose(1, 2))
  mm2('a @ b  (permuted batch, not foldable)', mk({ 3, 4, 5 }, 'f32', 32):permute(1, 0, 2), mk({ 5, 2 }, 'f32', 33))
  mm2('a @ b  (sliced batch, foldable with ld)', mk({ 4, 3, 8 }, 'f32', 34)[{ {}, {}, { 0, 5 } }], mk({ 5, 2 }, 'f32', 35))
  mm2('a @ b  (expanded batch of a)', mk({ 1, 3, 5 }, 'f32', 36):expand(4, 3, 5), mk({ 4, 5, 2 }, 'f32', 37))
  mm2('a @ b  (2-D @ expanded batch)', mk({ 3, 5 }, 'f32', 38), mk({ 5, 2 }, 'f32', 39):unsqueeze(0):expand(4, 5, 2))
  mm2('a @ b  (M = 1 rows folded)', mk({ 4, 1, 5 }, 'f32', 40), mk({ 5, 3 }, 'f32', 41))
  mm2('a @ b  (4-D batch both sides)', mk({ 2, 3, 4, 5 }, 'f32', 42), mk({ 2, 3, 5, 2 }, 'f32', 43):transpose(0, 1):contiguous():transpose(0, 1))
  mm2('a @ b  (0x3 @ 3x4)', lumen.zeros(0, 3), mk({ 3, 4 }, 'f32', 44))
  mm2('a @ b  (2x0 @ 0x3: zeros)', lumen.zeros(2, 0), lumen.zeros(0, 3))
  mm2('a @ b  (empty dot)', lumen.zeros(0), lumen.zeros(0))
  mm2('a @ b  (0x2x3 @ 3x4)', lumen.zeros(0, 2, 3), mk({ 3, 4 }, 'f32', 45))
  mm2('a @ b  (1x1 @ 1x1)', mk({ 1, 1 }, 'f32', 46), mk({ 1, 1 }, 'f32', 47))
  mm2('a @ b  (65x130 @ 130x33)', mk({ 65, 130 }, 'f32', 48), mk({ 33, 130 }, 'f32', 49):t())
  mm2('a @ b  (f64 2-D)', mk({ 5, 7 }, 'f64', 50), mk({ 7, 3 }, 'f64', 51), F64)
  mm2('a @ b  (f64 transposed batch)', mk({ 2, 7, 5 }, 'f64', 52):transpose(1, 2), mk({ 7, 3 }, 'f64', 53), F64)
  mm2('a @ b  (f64 dot)', mk({ 9 }, 'f64', 54), mk({ 9 }, 'f64', 55), F64)
  mm2('a @ b  (f64 65x130 @ 130x33)', mk({ 130, 65 }, 'f64', 56):t(), mk({ 130, 33 }, 'f64', 57), F64)
  mm2('a @ b  (f64 2-D @ 1-D)', mk({ 6, 4 }, 'f64', 58):t(), mk({ 6 }, 'f64', 59), F64)

  local M5x7, V7, V5 = mk({ 5, 7 }, 'f32', 60), mk({ 7 }, 'f32', 61), mk({ 5 }, 'f32', 62)
  case('torch.mm(a, b)', { a = M5x7, b = B }, function() return lumen.mm(M5x7, B) end)
  case('torch.mv(a, b)', { a = M5x7, b = V7 }, function() return lumen.mv(M5x7, V7) end)
  case('torch.dot(a, b)', { a = V7, b = V7 }, function() return V7:dot(V7) end)
  case('torch.outer(a, b)', { a = V5, b = V7 }, function() return lumen.outer(V5, V7) end)
  local X, Y = mk({ 3, 4, 2 }, 'f32', 63):transpose(1, 2), mk({ 3, 4, 5 }, 'f32', 64)
  case('torch.bmm(a, b)', { a = X, b = Y }, function() return lumen.bmm(X, Y) end)

  local C3, C41, C43 = mk({ 3 }, 'f32', 65), mk({ 4, 1 }, 'f32', 66), mk({ 4, 3 }, 'f32', 67)
  local A45, B53 = mk({ 4, 5 }, 'f32', 68), mk({ 5, 3 }, 'f32', 69)
  case('torch.addmm(c, a, b)', { c = C43, a = A45, b = B53 }, function() return lumen.addmm(C43, A45, B53) end)
  case('torch.addmm(c, a, b, beta=0.5, alpha=2)  (c 3)', { c = C3, a = A45, b = B53 },
    function() return lumen.addmm(C3, A45, B53, { beta = 0.5, alpha = 2 }) end)
  case('torch.addmm(c, a, b, beta=-1, alpha=0.25)  (c 4x1)', { c = C41, a = A45, b = B53 },
    function() return C41:addmm(A45, B53, { beta = -1, alpha = 0.25 }) end)
  local At = mk({ 5, 4 }, 'f32', 70):t()
  case('torch.addmm(c, a, b, alpha=3)  (a transposed)', { c = C43, a = At, b = B53 },
    function() return lumen.addmm(C43, At, B53, { alpha = 3 }) end)
  local NaN = lumen.full({ 4, 3 }, 0 / 0)
  case('torch.addmm(c, a, b, beta=0)  (NaN c ignored)', { c = NaN, a = A45, b = B53 },
    function() return lumen.addmm(NaN, A45, B53, { beta = 0 }) end)
  local Z40, Z03 = lumen.zeros(4, 0), lumen.zeros(0, 3)
  case('torch.addmm(c, a, b, beta=2)  (K = 0)', { c = C43, a = Z40, b = Z03 },
    function() return lumen.addmm(C43, Z40, Z03, { beta = 2 }) end)
  local C64, A64, B64 = mk({ 1, 3 }, 'f64', 71), mk({ 4, 5 }, 'f64', 72), mk({ 3, 5 }, 'f64', 73):t()
  case('torch.addmm(c, a, b, beta=1.5, alpha=-0.5)  (f64)', { c = C64, a = A64, b = B64 },
    function() return lumen.addmm(C64, A64, B64, { beta = 1.5, alpha = -0.5 }) end, F64)

  local batch = {}
  for i, c in ipairs(cases) do
    local e = c.expr:gsub('  %(.*$', '')
    batch[i] = { e }
    for k, v in pairs(c.inputs) do batch[i][k] = v end
  end
  local ref = oracle.run(batch)
  for i, c in ipairs(cases) do
    it(c.expr, function()
      assert(not ref[i].error, ref[i].error)
      check.assert_close(c.fn(), ref[i][1], c.tol)
    end)
  end

  -- Allocation counts show which operands went to BLAS without a copy.
  local function allocs(fn)
    local before = lumen.memory().allocs
    local r = fn()
    return lumen.memory().allocs - before, r
  end
  it('passes transposed, column-sliced and batch-expanded operands to BLAS without copying', function()
    local a, b = mk({ 64, 32 }, 'f32', 80), mk({ 48, 64 }, 'f32', 81)
    assert.are.equal(1, (allocs(function() return lumen.matmul(a:t(), b:t()) end)))
    assert.are.equal(1, (allocs(function() return lumen.matmul(a[{ {}, { 3, 19 } }], b[{ { 0, 16 } }]) end)))
    local e = mk({ 1, 32, 16 }, 'f32', 82):expand(50, 32, 16)
    assert.are.equal(1, (allocs(function() return lumen.matmul(a, e) end)))
    local v = mk({ 64 }, 'f32', 83)[{ { 0, nil, 2 } }]
    assert.are.equal(1, (allocs(function() return lumen.matmul(v, e) end)))
    -- stepped columns need one copy of that operand
    local c = mk({ 16, 8 }, 'f32', 84)
    assert.are.equal(2, (allocs(function() return lumen.matmul(a[{ {}, { 0, nil, 2 } }], c) end)))
  end)

  it('agrees with PyTorch on which inputs are errors', function()
    local f, d, i = mk({ 2, 3 }, 'f32', 90), mk({ 3, 2 }, 'f64', 91), lumen.zeros({ 3, 2 }, 'i64')
    local r = oracle.run {
      { 'torch.matmul(a, b)', a = f, b = d },
      { 'torch.matmul(a, b)', a = f, b = f },
      { 'torch.matmul(a, b)', a = mk({ 2, 3, 4 }, 'f32', 1), b = mk({ 3, 4, 5 }, 'f32', 1) },
    }
    for k = 1, 3 do assert.is_truthy(r[k].error) end
    assert.has_error(function() lumen.matmul(f, d) end, 'lumen.matmul: dtypes f32 and f64 differ (expected both f32 or both f64)')
    assert.has_error(function() lumen.matmul(f, f) end, 'lumen.matmul: shapes 2x3 and 2x3 cannot be multiplied (3 vs 2)')
    assert.has_error(function() lumen.matmul(mk({ 2, 3, 4 }), mk({ 3, 4, 5 })) end,
      'lumen.matmul: batch dimensions of 2x3x4 and 3x4x5 cannot broadcast (2 vs 3)')
    assert.has_error(function() lumen.matmul(i, i:t()) end,
      'lumen.matmul: dtypes i64 and i64 are not supported (expected f32 or f64)')
    assert.has_error(function() lumen.matmul(f, i) end,
      'lumen.matmul: dtypes f32 and i64 are not supported (expected f32 or f64)')
  end)

  it('reports bad arguments clearly, naming the op', function()
    local m, v3, v4 = mk({ 2, 3 }), mk({ 3 }), mk({ 4 })
    assert.has_error(function() lumen.matmul(lumen.tensor(3), m) end,
      'lumen.matmul: both operands need at least 1 dimension, got scalar and 2x3')
    assert.has_error(function() lumen.matmul(1, m) end, 'lumen.matmul: first operand must be a tensor, got number')
    assert.has_error(function() lumen.mm(mk({ 2, 3, 4 }), m) end, 'lumen.mm: expected 2-D matrices, got 2x3x4 and 2x3')
    assert.has_error(function() lumen.mm(m, m) end, 'lumen.mm: shapes 2x3 and 2x3 cannot be multiplied (3 vs 2)')
    assert.has_error(function() lumen.mm(m, mk({ 3, 2 }, 'f64')) end,
      'lumen.mm: dtypes f32 and f64 differ (expected both f32 or both f64)')
    assert.has_error(function() lumen.bmm(mk({ 2, 3, 4 }), mk({ 3, 4, 5 })) end, 'lumen.bmm: batch sizes differ (2x3x4 and 3x4x5)')
    assert.has_error(function() lumen.bmm(m, m) end, 'lumen.bmm: expected 3-D tensors, got 2x3 and 2x3')
    assert.has_error(function() lumen.mv(v3, v3) end, 'lumen.mv: expected a 2-D matrix and a 1-D vector, got 3 and 3')
    assert.has_error(function() lumen.mv(m, v4) end, 'lumen.mv: shapes 2x3 and 4 cannot be multiplied (3 vs 4)')
    assert.has_error(function() lumen.dot(v3, v4) end, 'lumen.dot: lengths differ (3 and 4)')
    assert.has_error(function() lumen.dot(m, v3) end, 'lumen.dot: expected 1-D vectors, got 2x3 and 3')
    assert.has_error(function() lumen.outer(m, v3) end, 'lumen.outer: expected 1-D vectors, got 2x3 and 3')
    assert.has_error(function() lumen.addmm(mk({ 5 }), m, mk({ 3, 4 })) end,
      "lumen.addmm: input of shape 5 does not broadcast to the product's 2x4 (2x3 @ 3x4)")
    assert.has_error(function() lumen.addmm(mk({ 2, 2, 4 }), m, mk({ 3, 4 })) end,
      "lumen.addmm: input of shape 2x2x4 does not broadcast to the product's 2x4 (2x3 @ 3x4)")
    assert.has_error(function() lumen.addmm(mk({ 4 }), v3, mk({ 3, 4 })) end, 'lumen.addmm: expected 2-D matrices, got 3 and 3x4')
    assert.has_error(function() lumen.addmm(mk({ 4 }, 'f64'), m, mk({ 3, 4 })) end,
      'lumen.addmm: dtypes f32 and f64 differ (expected both f32 or both f64)')
    assert.has_error(function() lumen.addmm(mk({ 4 }), m, mk({ 3, 4 }), 2) end,
      'lumen.addmm: options must be a table {beta = ..., alpha = ...}, got number')
    assert.has_error(function() lumen.addmm(mk({ 4 }), m, mk({ 3, 4 }), { beta = 'x' }) end,
      'lumen.addmm: beta and alpha must be numbers')
  end)
end)
