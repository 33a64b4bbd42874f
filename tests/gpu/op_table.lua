-- tests/gpu/op_table.lua: the ops that run on a device, each compared with
-- the CPU. Used by tests/spec/device_ops_spec.lua (the fake device and the
-- CUDA kernels emulated on the host, small tensors) and by
-- tests/gpu/checks.lua (the real CUDA backend, larger tensors).
--
-- A case is { name=, inputs=function(s) -> list of input specs, fn=, dtypes=,
-- grad=, tol= }: s scales the sizes (1 in the specs); an input spec is a
-- shape ({3, 4}), or { shape, dtype = 'i32', positive = true, ints = true,
-- cpu_scalar = true } (ints: small integer values; cpu_scalar: a 0-d
-- tensor left on the CPU, the host value of a device op). fn(inputs...)
-- returns a tensor or a list of them. For each dtype of the case (the
-- dtype of inputs that name none), compare(case, dtype, device) runs fn on
-- CPU inputs and on copies of them on the device, then, with grad, sums
-- each float result times a fixed random tensor and runs backward on both,
-- and compares results and input gradients: integers and bools exactly,
-- floats by the largest |device - cpu| / (1 + |cpu|) against a threshold
-- per dtype of each result (f32 2e-6, f64 1e-13, 4 times that for
-- gradients; f32 GEMMs and long sums (gemm=, loose=) 2e-5, as they add in
-- another order; f32 functions of CUDA may differ from the CPU's by an
-- ulp or two).
local lumen = require 'lumen'
local ffi = require 'ffi'

local M = {}

M.thresholds = { f32 = 2e-6, f64 = 1e-13 }

local F, D = { 'f32', 'f64' }, { 'f64' }
local function ew(name, fn, inputs, dtypes, grad, extra)
  local c = { name = name, fn = fn, inputs = inputs, dtypes = dtypes or F, grad = grad ~= false }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end
local function one(shape) return function(s) return { shape(s) } end end
local function mat(s) return { 3 * s, 5 } end
local function pos(shape) return function(s) return { { shape(s), positive = true } } end end

M.cases = {
  -- unary elementwise, on a transposed (strided) view of the device tensor too
  ew('neg', function(x) return -x end, one(mat)),
  ew('abs', function(x) return x:abs() end, one(mat)),
  ew('exp', function(x) return x:exp() end, one(mat)),
  ew('log', function(x) return x:log() end, pos(mat)),
  ew('log1p', function(x) return x:log1p() end, pos(mat)),
  ew('sqrt', function(x) return x:sqrt() end, pos(mat)),
  ew('rsqrt', function(x) return x:rsqrt() end, pos(mat)),
  ew('sin of a transposed view', function(x) return x:t():sin() end, one(mat)),
  ew('cos', function(x) return x:cos() end, one(mat)),
  ew('sigmoid', function(x) return x:sigmoid() end, one(mat)),
  ew('tanh', function(x) return x:tanh() end, one(mat)),
  ew('relu', function(x) return x:relu() end, one(mat)),
  ew('reciprocal', function(x) return x:reciprocal() end, pos(mat)),
  ew('floor, ceil, round, sign', function(x) return { (x * 3):floor(), (x * 3):ceil(), (x * 3):round(), x:sign() } end,
    one(mat), F, false),
  ew('exp of an integer tensor (f32)', function(x) return x:exp() end,
    function(s) return { { { 4 * s, 3 }, dtype = 'i32', ints = true } } end, { 'i32' }, false),
  ew('neg, abs, sign of integers', function(x) return { -x, x:abs(), x:sign(), x:relu() } end,
    function(s) return { { { 4 * s, 3 }, ints = true } } end, { 'i32', 'i64' }, false),
  ew('logical_not', function(x) return x:logical_not() end,
    function(s) return { { { 4 * s, 3 }, ints = true } } end, { 'f32', 'i64', 'u8', 'bool' }, false),
  -- binary, broadcasting, strided, scalars, mixed dtypes
  ew('add broadcast', function(a, b) return a + b end, function(s) return { { 3 * s, 1, 5 }, { 4, 5 } } end),
  ew('sub of slices', function(a, b) return a:slice(0, 0, -1, 2) - b:select(1, 1) end,
    function(s) return { { 6 * s, 4 }, { 4, 3 } } end),
  ew('mul, transposed', function(a, b) return a:t() * b end, function(s) return { { 5, 3 * s }, { 3 * s, 5 } } end),
  ew('div', function(a, b) return a / b end, function(s) return { { 3 * s, 5 }, { { 5 }, positive = true } } end),
  ew('pow', function(a, b) return a ^ b end, function(s) return { { { 3 * s, 5 }, positive = true }, { 3 * s, 5 } } end),
  ew('maximum, minimum', function(a, b) return { lumen.maximum(a, b), lumen.minimum(a, b) } end,
    function(s) return { { 3 * s, 5 }, { 1, 5 } } end),
  ew('comparisons', function(a, b) return { a:eq(b), a:ne(b), a:lt(b), a:le(b), a:gt(b), a:ge(b) } end,
    function(s) return { { { 3 * s, 5 }, ints = true }, { { 5 }, ints = true } } end, { 'f32', 'i32', 'u8' }, false),
  ew('logical and, or, xor', function(a, b) return { a:logical_and(b), a:logical_or(b), a:logical_xor(b) } end,
    function(s) return { { { 3 * s, 5 }, ints = true }, { { 3 * s, 5 }, ints = true } } end, { 'f32', 'i64', 'bool' }, false),
  ew('integer arithmetic wraps', function(a, b) return { a + b, a - b, a * b, a ^ b:abs():clamp(0, 4) } end,
    function(s) return { { 4 * s, 3 }, { 4 * s, 3 } } end, { 'i32', 'i64', 'u8' }, false),
  ew('integer division is true division', function(a, b) return a / (b:abs() + 1) end,
    function(s) return { { { 4 * s, 3 }, ints = true }, { { 4 * s, 3 }, ints = true } } end, { 'i32', 'i64' }, false),
  ew('bool add and mul stay bool', function(a, b) return { a + b, a * b, lumen.maximum(a, b) } end,
    function(s) return { { 4 * s, 3 }, { 4 * s, 3 } } end, { 'bool' }, false),
  ew('i32 + f32 (promotion)', function(a, b) return a + b end,
    function(s) return { { { 3 * s, 5 }, dtype = 'i32', ints = true }, { 3 * s, 5 } } end, { 'f32' }),
  ew('u8 * i64 (promotion)', function(a, b) return a * b end,
    function(s) return { { { 3 * s, 5 }, dtype = 'u8' }, { { 5 }, dtype = 'i64' } } end, { 'i64' }, false),
  ew('scalars on either side', function(x) return { x + 2.5, 3 - x, x * -2, 1 / (x:abs() + 1), x ^ 2 } end, one(mat)),
  ew('integer tensor and scalars', function(x) return { x + 3, x * 2.5, x - 300, x:gt(0.5) } end,
    function(s) return { { { 4 * s, 3 }, ints = true } } end, { 'i32', 'u8' }, false),
  ew('a 0-d CPU tensor with a device tensor', function(x, c) return { x * c, c - x, lumen.where(x:gt(0), x, c) } end,
    function(s) return { mat(s), { {}, cpu_scalar = true } } end),
  ew('in place', function(x, y)
    local c = x:clone()
    c:add_(y)
    c:mul_(2)
    c:exp_()
    c:clamp_(0, 3)
    return c
  end, function(s) return { mat(s), { 5 } } end, F, false),
  ew('clamp', function(x) return { x:clamp(-0.5, 0.5), x:clamp(nil, 0.2), x:clamp(-0.1, nil) } end, one(mat)),
  ew('clamp integers', function(x) return { x:clamp(-2, 3), x:clamp(0.5, 2.5) } end,
    function(s) return { { { 4 * s, 3 }, ints = true } } end, { 'i32', 'i64', 'u8' }, false),
  ew('where', function(c, a, b) return lumen.where(c:gt(0), a, b) end,
    function(s) return { { 3 * s, 5 }, { 3 * s, 5 }, { 5 } } end),
  ew('where with a number', function(c, a) return { lumen.where(c:gt(0), a, 0.5), lumen.where(c:gt(0), 2, a) } end,
    function(s) return { { 3 * s, 5 }, { 3 * s, 5 } } end),
  -- copies and conversions
  ew('to(dtype)', function(x) return { x:to('f64'), x:to('f32'), x:to('i32'), x:to('i64'), x:to('u8'), x:to('bool') } end,
    function(s) return { { { 4 * s, 3 }, ints = true } } end, { 'f32', 'i64', 'u8', 'bool' }, false),
  ew('contiguous and clone of views', function(x) return { x:t():contiguous(), x:slice(1, 1, 5, 2):clone(),
    x:select(0, 1):unsqueeze(0):expand(3, 5):contiguous() } end, one(mat)),
  ew('fill_ and zero_ of views', function(x)
    local c = x:clone()
    c:select(1, 2):fill_(7)
    c:slice(0, 0, -1, 2):fill_(0)
    return c
  end, one(mat), { 'f32', 'i32', 'bool' }, false),
  ew('copy_ from another device and broadcast', function(x, y)
    local c = x:clone()
    c:copy_(y:cpu()) -- from the CPU into the device tensor
    c:slice(0, 0, 1):copy_(y:select(0, 0))
    return c
  end, function(s) return { mat(s), mat(s) } end, F, false),
  -- reductions
  ew('sum', function(x) return { x:sum(), x:sum(1), x:sum(0, true), x:sum { 0, 2 } } end,
    function(s) return { { 4 * s, 3, 5 } } end),
  ew('sum over a transposed view (permuted copy)', function(x) return x:transpose(0, 2):sum { 0, 2 } end,
    function(s) return { { 4 * s, 3, 5 } } end),
  ew('sum of a long run (split into pieces)', function(x) return { x:sum(1), x:sum(0), x:mean() } end,
    function(s) return { { 3, 700 * s } } end, F, true, { loose = true }),
  ew('mean', function(x) return { x:mean(), x:mean(0), x:mean(1, true) } end, function(s) return { { 4 * s, 6 } } end),
  ew('prod', function(x) return { x:prod(), x:prod(1) } end, function(s) return { { 3, 5 * s } } end),
  ew('max and min with indices', function(x)
    local v, i = x:max(1)
    local w, j = x:min(0, true)
    return { v, i, w, j }
  end, function(s) return { { 4 * s, 6 } } end),
  ew('amax, amin over dims', function(x) return { x:amax { 0, 1 }, x:amin(2), x:max() } end,
    function(s) return { { 3 * s, 4, 5 } } end),
  ew('argmax, argmin', function(x) return { x:argmax(), x:argmax(1), x:argmin(0) } end,
    function(s) return { { 4 * s, 6 } } end, F, false),
  ew('argmax, argmin, max with many ties (first position wins)', function(x, y)
    local v, i = x:max(1)
    return { x:argmax(1), x:argmin(), y:argmax(0), y:argmin(0), v, i }
  end, function(s) return { { { 3, 90 * s }, ints = true }, { { 90 * s, 3 }, ints = true } } end,
    { 'f32', 'i32', 'u8' }, false),
  ew('var, std', function(x) return { x:var(), x:var(1), x:std(0, { correction = 0 }), x:std(1, { keepdim = true }) } end,
    function(s) return { { 4 * s, 6 } } end, F, true, { loose = true }),
  ew('norm p = 2, 1, 3, inf, 0', function(x) return { x:norm(), x:norm(1, 1), x:norm(3, 0), x:norm('inf', 1),
    x:norm(0, 1) } end, function(s) return { { 4 * s, 6 } } end, F, true, { grad_of = { 1, 2, 3, 4 } }),
  ew('all, any, count_nonzero', function(x) return { x:all(), x:any(1), x:count_nonzero(0), x:gt(0):all(1) } end,
    function(s) return { { { 4 * s, 6 }, ints = true } } end, { 'f32', 'i32', 'u8', 'bool' }, false),
  ew('integer sums and extrema', function(x) return { x:sum(), x:sum(1), x:prod(0), x:amax(1), x:argmin() } end,
    function(s) return { { { 4 * s, 6 }, ints = true } } end, { 'i32', 'i64', 'u8', 'bool' }, false),
  -- products
  ew('matmul', function(a, b) return a:matmul(b) end, function(s) return { { 4 * s, 6 }, { 6, 5 } } end, F, true,
    { gemm = true }),
  ew('matmul of transposed operands', function(a, b) return a:t():matmul(b:t()) end,
    function(s) return { { 6, 4 * s }, { 5, 6 } } end, F, true, { gemm = true }),
  ew('batched matmul with broadcast', function(a, b) return a:matmul(b) end,
    function(s) return { { 2, 3, 4 * s, 6 }, { 3, 6, 5 } } end, F, true, { gemm = true }),
  ew('bmm', function(a, b) return a:bmm(b) end, function(s) return { { 3, 4 * s, 6 }, { 3, 6, 2 } } end, F, true,
    { gemm = true }),
  ew('mv, dot, outer', function(a, v, w) return { a:mv(v), v:dot(w), v:outer(w) } end,
    function(s) return { { 4 * s, 6 }, { 6 }, { 6 } } end, F, true, { gemm = true }),
  ew('addmm', function(c, a, b) return lumen.addmm(c, a, b, { beta = 0.5, alpha = 2 }) end,
    function(s) return { { 5 }, { 4 * s, 6 }, { 6, 5 } } end, F, true, { gemm = true }),
  ew('linear', function(x, w, b) return require('lumen.nn').F.linear(x, w, b) end,
    function(s) return { { 2, 4 * s, 6 }, { 5, 6 }, { 5 } } end, F, true, { gemm = true }),
  -- layer families: convolution through im2col /
  -- col2im and the GEMM, forward and backward (input, weight, bias)
  ew('conv2d, stride 2, padding 1, bias', function(x, w, b)
    return require('lumen.nn').F.conv2d(x, w, b, { stride = 2, padding = 1 })
  end, function(s) return { { 2, 3, 5 * s, 6 }, { 4, 3, 3, 3 }, { 4 } } end, F, true, { gemm = true }),
  ew('conv2d, dilation 2, groups 2, asymmetric', function(x, w)
    return require('lumen.nn').F.conv2d(x, w, nil, { dilation = { 2, 1 }, padding = { 1, 2 }, groups = 2, stride = { 1, 2 } })
  end, function(s) return { { 2, 4, 6 * s, 5 }, { 6, 2, 2, 3 } } end, F, true, { gemm = true }),
  ew('conv2d 1x1 (no im2col), unbatched', function(x, w, b)
    return require('lumen.nn').F.conv2d(x, w, b)
  end, function(s) return { { 3, 4 * s, 5 }, { 2, 3, 1, 1 }, { 2 } } end, F, true, { gemm = true }),
  ew('conv1d and conv3d', function(x1, w1, x3, w3, b3)
    local F_ = require('lumen.nn').F
    return { F_.conv1d(x1, w1, nil, { padding = 2, stride = 3 }), F_.conv3d(x3, w3, b3, { padding = 1, stride = { 1, 2, 1 } }) }
  end, function(s) return { { 2, 3, 9 * s }, { 2, 3, 4 }, { 1, 2, 3 * s, 4, 3 }, { 3, 2, 2, 3, 2 }, { 3 } } end, F, true,
    { gemm = true }),
  ew('conv_transpose2d, stride 2, output_padding, groups', function(x, w, b)
    return require('lumen.nn').F.conv_transpose2d(x, w, b, { stride = 2, padding = 1, output_padding = 1, groups = 2 })
  end, function(s) return { { 2, 4, 3 * s, 4 }, { 4, 3, 3, 3 }, { 6 } } end, F, true, { gemm = true }),
  ew('conv_transpose1d and conv_transpose3d, dilation', function(x1, w1, x3, w3)
    local F_ = require('lumen.nn').F
    return { F_.conv_transpose1d(x1, w1, nil, { dilation = 2, stride = 3 }),
      F_.conv_transpose3d(x3, w3, nil, { stride = { 2, 1, 1 }, padding = { 0, 1, 0 } }) }
  end, function(s) return { { 2, 3, 4 * s }, { 3, 2, 3 }, { 1, 2, 2 * s, 3, 3 }, { 2, 2, 2, 3, 2 } } end, F, true,
    { gemm = true }),
  -- pooling: max (indices, ties, overlapping windows, dilation, ceil mode),
  -- average (count_include_pad, divisor_override), adaptive
  ew('max_pool2d with indices, overlapping, padding', function(x)
    local y, i = require('lumen.nn').F.max_pool2d(x, 3, { stride = 1, padding = 1, return_indices = true })
    return { y, i }
  end, function(s) return { { 2, 3, 5 * s, 6 } } end),
  ew('max_pool2d of ties, dilation, ceil_mode', function(x)
    local F_ = require('lumen.nn').F
    local y, i = F_.max_pool2d(x, { 2, 3 }, { stride = 2, dilation = { 2, 1 }, ceil_mode = true, return_indices = true })
    return { y, i, F_.max_pool2d(x, 2) }
  end, function(s) return { { { 2, 2, 7 * s, 6 }, ints = true } } end),
  ew('max_pool1d and max_pool3d', function(x1, x3)
    local F_ = require('lumen.nn').F
    return { F_.max_pool1d(x1, 3, { stride = 2, padding = 1 }), F_.max_pool3d(x3, 2, { stride = { 1, 2, 2 } }) }
  end, function(s) return { { 2, 3, 9 * s }, { 1, 2, 3 * s, 4, 5 } } end),
  ew('avg_pool2d, count_include_pad both ways, ceil_mode', function(x)
    local F_ = require('lumen.nn').F
    return { F_.avg_pool2d(x, 3, { stride = 2, padding = 1 }),
      F_.avg_pool2d(x, 3, { stride = 2, padding = 1, count_include_pad = false, ceil_mode = true }),
      F_.avg_pool2d(x, 2, { divisor_override = 3 }) }
  end, function(s) return { { 2, 3, 6 * s, 7 } } end),
  ew('avg_pool1d and avg_pool3d, unbatched', function(x1, x3)
    local F_ = require('lumen.nn').F
    return { F_.avg_pool1d(x1, 2), F_.avg_pool3d(x3, { 2, 2, 3 }, { stride = 1, padding = { 1, 0, 1 } }) }
  end, function(s) return { { 3, 8 * s }, { 2, 3 * s, 4, 5 } } end),
  ew('adaptive_avg_pool 1-3-D, sizes that do not divide', function(x1, x2, x3)
    local F_ = require('lumen.nn').F
    return { F_.adaptive_avg_pool1d(x1, 4), F_.adaptive_avg_pool2d(x2, { 3, 4 }), F_.adaptive_avg_pool3d(x3, { 2, 3, 1 }),
      F_.adaptive_avg_pool2d(x2, 1) }
  end, function(s) return { { 2, 3, 7 * s }, { 2, 3, 5 * s, 7 }, { 1, 2, 3 * s, 5, 4 } } end),
  -- normalisation: batch norm (training with running statistics, eval),
  -- group, instance and layer norm, forward and backward
  ew('batch_norm training, running stats updated', function(x, w, b, rm, rv)
    local m, v = rm:detach():clone(), rv:detach():abs():clone()
    local y = require('lumen.nn').F.batch_norm(x, m, v, w, b, true, 0.2, 1e-5)
    return { y, m, v }
  end, function(s) return { { 3, 4, 5 * s, 2 }, { 4 }, { 4 }, { 4 }, { 4 } } end),
  ew('batch_norm eval and without affine (1-D input)', function(x, rm, rv)
    local F_ = require('lumen.nn').F
    local m, v = rm:detach(), rv:detach():abs() + 0.5
    return { F_.batch_norm(x, m, v, nil, nil, false, 0.1, 1e-3), F_.batch_norm(x, nil, nil, nil, nil, true) }
  end, function(s) return { { 6 * s, 3 }, { 3 }, { 3 } } end),
  ew('group_norm and instance_norm', function(x, w, b)
    local F_ = require('lumen.nn').F
    return { F_.group_norm(x, 2, w, b, 1e-5), F_.instance_norm(x, { weight = w, bias = b }), F_.group_norm(x, 1) }
  end, function(s) return { { 2, 4, 3 * s, 5 }, { 4 }, { 4 } } end),
  ew('layer_norm over two dims, with and without affine', function(x, w, b)
    local F_ = require('lumen.nn').F
    return { F_.layer_norm(x, { 3, 5 }, w, b, 1e-5), F_.layer_norm(x, { 5 }) }
  end, function(s) return { { 2, 2 * s, 3, 5 }, { 3, 5 }, { 3, 5 } } end),
  -- the fused LSTM and GRU cells (gates of a step selected out of a
  -- sequence: strided rows), and whole cells with their GEMMs
  ew('fused lstm and gru cells, strided gates', function(gx, gh, c, gx3, gh3, h)
    local F_ = require('lumen.nn').F
    local hl, cl = F_.fused_lstm_cell(gx:select(1, 1), gh, c)
    return { hl, cl, F_.fused_gru_cell(gx3:select(1, 0), gh3, h) }
  end, function(s) return { { 3 * s, 2, 20 }, { 3 * s, 20 }, { 3 * s, 5 }, { 3 * s, 2, 15 }, { 3 * s, 15 }, { 3 * s, 5 } } end),
  ew('lstm_cell and gru_cell with weights', function(x, h, c, wi, wh, bi, bh, wi3, wh3)
    local F_ = require('lumen.nn').F
    local h1, c1 = F_.lstm_cell(x, { h, c }, wi, wh, bi, bh)
    return { h1, c1, F_.gru_cell(x, h, wi3, wh3) }
  end, function(s) return { { 2 * s, 4 }, { 2 * s, 5 }, { 2 * s, 5 }, { 20, 4 }, { 20, 5 }, { 20 }, { 20 }, { 15, 4 }, { 15, 5 } } end,
    F, true, { gemm = true }),
  -- interpolation: nearest and linear in 1-3-D, up and down, align_corners,
  -- scale factors
  ew('interpolate nearest and bilinear, up and down', function(x)
    local F_ = require('lumen.nn').F
    return { F_.interpolate(x, { size = { 7, 5 } }), F_.interpolate(x, { scale_factor = 2 }),
      F_.interpolate(x, { size = { 9, 3 }, mode = 'bilinear' }),
      F_.interpolate(x, { size = { 2, 7 }, mode = 'bilinear', align_corners = true }),
      F_.interpolate(x, { scale_factor = 1.7, mode = 'bilinear' }) }
  end, function(s) return { { 2, 3, 4 * s, 5 } } end),
  ew('interpolate linear and trilinear', function(x1, x3)
    local F_ = require('lumen.nn').F
    return { F_.interpolate(x1, { size = 11, mode = 'linear' }), F_.interpolate(x1, { size = 3, mode = 'linear', align_corners = true }),
      F_.interpolate(x3, { size = { 5, 3, 7 }, mode = 'trilinear' }), F_.interpolate(x3, { scale_factor = 2, mode = 'nearest' }) }
  end, function(s) return { { 2, 3, 6 * s }, { 1, 2, 3 * s, 4, 3 } } end),
  ew('affine_grid 2-D and 3-D, align_corners both ways', function(t2, t3)
    local F_ = require('lumen.nn').F
    return { F_.affine_grid(t2, { 2, 1, 4, 5 }), F_.affine_grid(t2, { 2, 3, 3, 6 }, { align_corners = false }),
      F_.affine_grid(t3, { 1, 1, 3, 2, 4 }) }
  end, function(s) return { { 2, 2, 3 }, { 1, 3, 4 } } end, F, true, { gemm = true }),
  ew('grid_sample 2-D: bilinear zeros, nearest border, align_corners', function(x, g)
    local F_ = require('lumen.nn').F
    local gg = g * 0.8
    return { F_.grid_sample(x, gg), F_.grid_sample(x, gg, { mode = 'nearest', padding_mode = 'border', align_corners = true }),
      F_.grid_sample(x, gg, { padding_mode = 'border' }) }
  end, function(s) return { { 2, 3, 4 * s, 5 }, { 2, 3, 4 * s, 2 } } end),
  ew('grid_sample 3-D, bilinear and nearest', function(x, g)
    local F_ = require('lumen.nn').F
    return { F_.grid_sample(x, g * 0.8, { align_corners = true }), F_.grid_sample(x, g * 0.6, { mode = 'nearest' }) }
  end, function(s) return { { 1, 2, 3 * s, 4, 3 }, { 1, 2, 3, 2 * s, 3 } } end),
  -- autograd through compositions
  ew('a small network', function(x, w1, w2)
    local h = (x:matmul(w1) + 1):tanh()
    return (h:matmul(w2)):sigmoid():mean()
  end, function(s) return { { 4 * s, 6 }, { 6, 8 }, { 8, 3 } } end, F, true, { gemm = true }),
  ew('slice, select and unbind backward', function(x)
    local parts = x:unbind(0)
    return parts[1] * 2 + x:select(1, 0):sum() + x:slice(1, 1, 3):sum()
  end, function(s) return { { 3, 4 * s } } end),
  -- activations (src/cuda/activation.cu)
  ew('leaky_relu, elu, gelu (erf and tanh)', function(x)
    local F = require('lumen.nn').F
    return { F.leaky_relu(x, 0.1), F.elu(x, 0.7), F.gelu(x), F.gelu(x, 'tanh') }
  end, one(mat)),
  ew('activations of a transposed view', function(x)
    local F = require('lumen.nn').F
    return { F.leaky_relu(x:t(), 0.2), F.gelu(x:t()) }
  end, one(mat)),
  ew('prelu per channel and shared', function(x, w, w1)
    local F = require('lumen.nn').F
    return { F.prelu(x, w), F.prelu(x, w1) }
  end, function(s) return { { 2, 3, 4 * s, 2 }, { 3 }, { 1 } } end),
  ew('softmax and log_softmax over each dim', function(x)
    local F = require('lumen.nn').F
    return { F.softmax(x, 0), F.softmax(x, 1), F.log_softmax(x, 2), F.log_softmax(x:transpose(1, 2), 1) }
  end, function(s) return { { 2, 5 * s, 3 } } end),
  ew('softmax of a long row', function(x)
    local F = require('lumen.nn').F
    return { F.softmax(x, 1), F.log_softmax(x, 1) }
  end, function(s) return { { 3, 200 * s } } end),
  -- losses (src/cuda/loss.cu); class targets are clamped into range on the device
  ew('cross_entropy: N x C, weights, mean / sum / none', function(x, t, w)
    local F = require('lumen.nn').F
    t = t:clamp(0, 4)
    return { F.cross_entropy(x, t), F.cross_entropy(x, t, { weight = w, reduction = 'sum' }),
      F.cross_entropy(x, t, { weight = w, reduction = 'none' }) }
  end, function(s) return { { 6 * s, 5 }, { { 6 * s }, dtype = 'i64' }, { { 5 }, positive = true } } end),
  ew('cross_entropy: N x C x H x W, ignore_index, label smoothing, weights', function(x, t, w)
    local F = require('lumen.nn').F
    t = t:clamp(-1, 2)
    return { F.cross_entropy(x, t, { ignore_index = -1, label_smoothing = 0.1 }),
      F.cross_entropy(x, t, { weight = w, ignore_index = -1, label_smoothing = 0.2, reduction = 'none' }),
      F.cross_entropy(x:transpose(2, 3), t:transpose(1, 2), { weight = w, ignore_index = -1 }) }
  end, function(s) return { { 2, 3, 4 * s, 5 }, { { 2, 4 * s, 5 }, dtype = 'i64' }, { { 3 }, positive = true } } end),
  ew('cross_entropy: probability targets (gradient for both)', function(x, p, w)
    local F = require('lumen.nn').F
    return { F.cross_entropy(x, p, { label_smoothing = 0.1 }), F.cross_entropy(x, p, { weight = w, reduction = 'none' }) }
  end, function(s) return { { 2, 4, 3 * s }, { { 2, 4, 3 * s }, positive = true }, { { 4 }, positive = true } } end),
  ew('cross_entropy: a 1-D input and an i32 target', function(x, t)
    return require('lumen.nn').F.cross_entropy(x, t:select(0, 0):clamp(0, 6))
  end, function(s) return { { 7 * s }, { { 2 }, dtype = 'i32' } } end),
  ew('nll_loss with weights and ignore_index', function(x, t, w)
    local F = require('lumen.nn').F
    t = t:clamp(-1, 3)
    return { F.nll_loss(F.log_softmax(x, 1), t, { ignore_index = -1 }),
      F.nll_loss(x, t, { weight = w, ignore_index = -1, reduction = 'none' }),
      F.nll_loss(x, t, { weight = w, ignore_index = -1 }) }
  end, function(s) return { { 3, 4, 2 * s }, { { 3, 2 * s }, dtype = 'i64' }, { { 4 }, positive = true } } end),
  ew('binary_cross_entropy_with_logits: weight, pos_weight, reductions', function(x, t, w, pw)
    local F = require('lumen.nn').F
    t = t:sigmoid()
    return { F.binary_cross_entropy_with_logits(x * 4, t),
      F.binary_cross_entropy_with_logits(x, t, { weight = w, pos_weight = pw, reduction = 'sum' }),
      F.binary_cross_entropy_with_logits(x:t(), t:t(), { pos_weight = pw:t(), reduction = 'none' }) }
  end, function(s) return { { 3 * s, 4 }, { 3 * s, 4 }, { { 4 }, positive = true }, { { 1, 4 }, positive = true } } end),
  -- creation on the device (src/cuda/random.cu): made where x is
  ew('zeros, ones, full, empty+fill_ on the device', function(x)
    local o = { dtype = x:dtype(), device = x:device() }
    return { lumen.zeros(3, 2, o), lumen.ones({ 2, 4 }, o), lumen.full({ 3 }, -2.5, o), lumen.empty(2, o):fill_(7) }
  end, one(mat), { 'f32', 'f64', 'i32', 'u8', 'bool' }, false),
  ew('arange, linspace, eye on the device', function(x)
    local d, dt = x:device(), x:dtype()
    return { lumen.arange(5, { device = d }), lumen.arange(-2, 7 * 4, 0.75, { dtype = dt, device = d }),
      lumen.arange(10, 0, -3, { dtype = dt, device = d }), lumen.linspace(-1, 2, 7 * 3, { dtype = dt, device = d }),
      lumen.linspace(0, 10, 11, { dtype = 'i64', device = d }), lumen.linspace(3, 4, 1, { dtype = dt, device = d }),
      lumen.eye(3, { dtype = dt, device = d }), lumen.eye(2, 5, { dtype = 'bool', device = d }) }
  end, one(mat), F, false),
  -- Philox on the device: a seed and offset give the CPU's numbers
  ew('rand, randn, randint, bernoulli: the CPU numbers for a seed', function(x)
    local o = { dtype = x:dtype(), device = x:device() }
    lumen.manual_seed(77)
    local r = { lumen.rand(4, 33, o), lumen.randn({ 5, 7 }, o), lumen.randint(-3, 9, { 40 }, { device = x:device() }),
      lumen.randint(0, 2, { 9 }, { dtype = 'bool', device = x:device() }), lumen.randint(5, { 6 }, { dtype = 'i32', device = x:device() }) }
    r[#r + 1] = lumen.empty(6, 5, o):uniform_(-2, 3)
    r[#r + 1] = lumen.empty(6, 5, o):normal_(1, 0.5)
    r[#r + 1] = lumen.empty(50, o):bernoulli_(0.3)
    r[#r + 1] = x:sigmoid():bernoulli()
    r[#r + 1] = lumen.empty(4, 6, o):t():uniform_(0, 1) -- a strided target
    return r
  end, one(mat)),
  -- shape ops that copy: cat, stack, flip, roll, pad (copies between views on the device)
  ew('cat, stack (mixed dtypes promote), flip, roll', function(a, b, c)
    return { lumen.cat({ a, b, c:t() }, 1), lumen.cat({ a:t(), b:t() }, 0), lumen.stack({ a, b:slice(1, 0, 4) }, 1),
      a:flip { 0, 1 }, b:t():flip { 1 }, a:roll({ 2, -1 }, { 0, 1 }), b:roll(3), a:t():roll(1, 0) }
  end, function(s) return { { 3 * s, 4 }, { 3 * s, 5 }, { 2, 3 * s } } end),
  ew('cat with an integer tensor and an empty 1-D one', function(a, i)
    return { lumen.cat({ a, i, lumen.empty(0, { dtype = a:dtype(), device = a:device() }) }, 0) }
  end, function(s) return { { 4 * s }, { { 3 }, dtype = 'i32' } } end),
  ew('pad: constant (grow and crop), reflect, replicate', function(x)
    return { x:pad({ 1, 2, 0, 1 }, 'constant', 0.5), x:pad({ -1, 2 }), x:pad({ 2, 1, 1, 2 }, 'reflect'),
      x:pad({ 3, 1, 0, 2 }, 'replicate'), x:transpose(1, 2):pad({ 1, 1 }, 'reflect'), x:pad({ -1, 2, 1, 0 }, 'replicate') }
  end, function(s) return { { 2, 4 * s, 5 } } end),
  -- indexing along a dim (src/cuda/index.cu); indices made in range on the device
  ew('gather, index_select (forward and backward)', function(x, i)
    local g0, g1 = i:clamp(0, 3), i:abs():clamp(0, 4)
    return { x:gather(0, g0), x:gather(1, g1:t():contiguous():t()), x:index_select(1, g1:select(0, 0)),
      x:t():index_select(0, g1:select(1, 1)), x:gather(1, g1:slice(1, 0, 2)) }
  end, function(s) return { { 4, 5 * s }, { { 4, 5 * s }, dtype = 'i64' } } end),
  ew('scatter (unique indices), scatter_add (duplicates), with a number and in place', function(x, src, i)
    local d = x:device()
    local perm = lumen.arange(4, { device = d }):flip { 0 }:reshape { 4, 1 }:expand { 4, 3 }
    local dup = i:abs():clamp(0, 3)
    local r = { x:scatter(0, perm, src), x:scatter_add(0, dup, src), x:scatter(1, lumen.arange(3, { device = d }):flip { 0 }:reshape { 1, 3 }:expand { 4, 3 }:slice(1, 0, 2), -1.5),
      x:scatter_add(1, dup:clamp(0, 2):slice(1, 0, 2), src:slice(1, 0, 2)) }
    local y = x:detach():clone()
    y:scatter_add_(0, dup, src:detach())
    r[#r + 1] = y
    return r
  end, function(s) return { { 4, 3 }, { 4, 3 }, { { 4, 3 }, dtype = 'i64' } } end),
  ew('masked_fill (broadcast mask, in place, integers and bools)', function(x, m)
    local y = x:detach():clone()
    y:masked_fill_(m:gt(0), 3)
    return { x:masked_fill(m:gt(0.5), -2.25), x:masked_fill(m:select(0, 0):gt(0), 0), y,
      x:gt(0):masked_fill(m:gt(0), true), (x * 10):to('i32'):masked_fill(m:lt(0), 7) }
  end, function(s) return { { 3 * s, 4 }, { 3 * s, 4 } } end),
  ew('cumsum along each dim (in order: the CPU sums bit for bit)', function(x)
    return { x:cumsum(0), x:cumsum(1), x:t():cumsum(1), x:cumsum(-1):cumsum(0) }
  end, function(s) return { { 7 * s, 33 } } end),
  ew('cumsum of integers (i64, wrapping) and bools', function(x)
    return { x:cumsum(1), (x * 4000000000000000000):cumsum(0), x:gt(0):cumsum(1) }
  end, function(s) return { { { 5 * s, 4 }, ints = true } } end, { 'i32', 'i64' }, false),
  ew('masked_select and nonzero (a device-side count)', function(x, m)
    return { x:masked_select(m:gt(0)), x:masked_select(m:select(0, 1):gt(0.3)), x:t():masked_select(m:t():lt(0)),
      x:gt(0.2):nonzero(), (m * 0):nonzero(), x:reshape { 2, -1, 2 }:gt(0):nonzero(),
      lumen.tensor(0.5):to(x:device()):nonzero(), x:masked_select(m:gt(100)) }
  end, function(s) return { { 3, 4 * s }, { 3, 4 * s } } end),
  ew('masked_select of a long tensor (slots past a scan row)', function(x)
    return { x:masked_select(x:gt(0.5)), x:lt(-1):nonzero() }
  end, function(s) return { { 3, 1500 * s } } end),
  ew('integer gather and scatter_add (wrapping)', function(x, i)
    local j = i:abs():clamp(0, 2)
    return { x:gather(1, j), x:scatter_add(1, j, x * 1000000000) }
  end, function(s) return { { { 3, 3 }, dtype = 'i32', ints = true }, { { 3, 3 }, dtype = 'i64' } } end, { 'i32', 'i64' }, false),
  -- fused optimizers (src/cuda/optim.cu): two steps on parameters x, y (made leaves here)
  ew('SGD, Adam, AdamW, RMSprop steps and clip_grad_norm', function(x, y, gx, gy)
    local optim = require 'lumen.optim'
    local out = {}
    local configs = {
      { 'SGD', { lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 0.01 } },
      { 'SGD', { lr = 0.05, momentum = 0.5, dampening = 0.2 } },
      { 'Adam', { lr = 0.01, weight_decay = 0.1, amsgrad = true } },
      { 'AdamW', { lr = 0.02, weight_decay = 0.1 } },
      { 'RMSprop', { lr = 0.01, momentum = 0.8, centered = true, weight_decay = 0.05 } },
      { 'RMSprop', { lr = 0.01, maximize = true } },
    }
    for _, c in ipairs(configs) do
      local a, b = x:detach():clone():requires_grad_(), y:t():detach():clone():requires_grad_()
      local opt = optim[c[1]]({ a, b }, c[2])
      for step = 1, 2 do
        a.grad = gx * step
        b.grad = gy:t() * step -- a strided gradient
        opt:step()
      end
      out[#out + 1] = a:detach()
      out[#out + 1] = b:detach()
    end
    for _, p in ipairs { 2, 1, 'inf' } do
      local a, b = gx:clone(), gy:t():clone()
      local pa, pb = x:detach():clone():requires_grad_(), y:t():detach():clone():requires_grad_()
      pa.grad, pb.grad = a, b
      local total = optim.clip_grad_norm_({ pa, pb }, 0.5, p)
      out[#out + 1] = a
      out[#out + 1] = b
      out[#out + 1] = lumen.tensor(total, 'f64'):to(x:device())
    end
    return out
  end, function(s) return { { 3 * s, 4 }, { 5, 2 }, { 3 * s, 4 }, { 5, 2 } } end, F, false),
  ew('dropout draws its mask where x is', function(x)
    local F = require('lumen.nn').F
    lumen.manual_seed(5)
    local n = x:size()[2]
    return { F.dropout(x, 0.4), F.dropout2d(x:reshape { 3, n, 1, 1 }:expand { 3, n, 2, 2 }, 0.5) }
  end, function(s) return { { 3, 5 * s } } end),
  -- sorting (src/cuda/sort.cu): a merge sort of (key, position) pairs, so
  -- ties keep their order, NaN goes last (first when descending), -0 ties +0
  ew('sort, argsort: each dim, descending, ties, NaN, -0, a strided view', function(x)
    local y = x:masked_fill(x:gt(1.2), 0 / 0):masked_fill(x:lt(-0.6), -0.5):masked_fill(x:abs():lt(0.1), -0.0)
    local r = {}
    for _, args in ipairs { { 1 }, { 0 }, { 1, true }, { 0, true }, { -1 } } do
      local v, i = y:sort(args[1], args[2])
      r[#r + 1], r[#r + 2] = v, i
    end
    local v, i = y:t():sort(1, true)
    r[#r + 1], r[#r + 2] = v, i
    r[#r + 1] = y:argsort(0)
    return r
  end, function(s) return { { 6 * s, 9 } } end),
  ew('sort of a long row and of one element (0-d)', function(x, z)
    local v, i = x:sort(1)
    local vd, id = x:sort(0, true)
    local v0, i0 = z:sum():sort(0)
    return { v, i, vd, id, v0, i0 }
  end, function(s) return { { 3, 1500 * s }, { 2 } } end),
  ew('sort and topk of integers and bools (ties stable)', function(x)
    local r = {}
    local b = x:gt(0)
    for _, t in ipairs { x, b } do
      local v, i = t:sort(1)
      local vd, id = t:sort(0, true)
      local tv, ti = t:topk(2, 1)
      r[#r + 1], r[#r + 2], r[#r + 3], r[#r + 4], r[#r + 5], r[#r + 6] = v, i, vd, id, tv, ti
    end
    return r
  end, function(s) return { { { 5 * s, 7 }, ints = true } } end, { 'i32', 'i64', 'u8' }, false),
  ew('topk: largest and smallest, k = 1 .. len, each dim', function(x)
    local r = {}
    for _, a in ipairs { { 3, 1 }, { 1, 1 }, { 7, 1 }, { 2, 0, false }, { 0, 1 }, { 4, -1, false } } do
      local v, i = x:topk(a[1], a[2], a[3])
      r[#r + 1], r[#r + 2] = v, i
    end
    return r
  end, function(s) return { { 4 * s, 7 } } end),
  ew('unique with inverse and counts (NaN alone, -0 with +0)', function(x)
    local y = (x * 2):round():masked_fill(x:gt(1.5), 0 / 0):masked_fill(x:lt(-1.5), -0.0)
    local v, inv, cnt = y:unique { return_inverse = true, return_counts = true }
    local iv, ii, ic = (x * 2):round():to('i32'):unique { return_inverse = true, return_counts = true }
    return { v, inv, cnt, iv, ii, ic, x:gt(0):unique(), x:slice(0, 0, 0):unique() }
  end, function(s) return { { 5 * s, 6 } } end, F, false),
  ew('randperm: the CPU permutation for a seed, and the offset moves alike', function(x)
    lumen.manual_seed(77)
    local d = x:device()
    return { lumen.randperm(40, { device = d }), lumen.randperm(7, { dtype = 'i32', device = d }),
      lumen.randperm(0, { device = d }), lumen.rand(3, { device = d }) }
  end, function(s) return { { 2 } } end, D, false),
  ew('max_unpool 1-3-D, overlapping windows and output_size (forward and backward)', function(x)
    local F_ = require('lumen.nn').F
    local r = {}
    local v1, i1 = F_.max_pool1d(x:reshape { 2, 3, 12 }, 3, { stride = 2, return_indices = true })
    r[#r + 1] = F_.max_unpool1d(v1, i1, 3, { stride = 2 })
    local v2, i2 = F_.max_pool2d(x:reshape { 2, 3, 4, 3 }, 2, { return_indices = true })
    r[#r + 1] = F_.max_unpool2d(v2, i2, 2, { output_size = { 5, 3 } })
    local v3, i3 = F_.max_pool3d(x:reshape { 1, 2, 3, 4, 3 }, { 2, 2, 1 }, { stride = 1, return_indices = true })
    r[#r + 1] = F_.max_unpool3d(v3, i3, { 2, 2, 1 }, { stride = 1 })
    r[#r + 1] = F_.max_unpool2d(v2:select(0, 1), i2:select(0, 1), 2, { output_size = { 4, 3 } }) -- unbatched, strided
    return r
  end, function(s) return { { 72 } } end),
}

-- Inputs of a case for dtype, on the CPU (seeded: the same on every call).
local function make_inputs(case, dtype, s)
  lumen.manual_seed(1234)
  local list = {}
  for i, spec in ipairs(case.inputs(s)) do
    if spec.dtype == nil and spec.positive == nil and spec.ints == nil and spec.cpu_scalar == nil then
      spec = { spec }
    end
    local dt = spec.dtype or dtype
    local x = lumen.randn(spec[1], 'f64')
    if spec.positive then x = x:abs() + 0.2 end
    if spec.ints or (dt ~= 'f32' and dt ~= 'f64') then x = (x * 3):round() end
    if dt == 'bool' then x = x:gt(0) elseif dt == 'u8' then x = x:abs() * 40 end
    list[i] = { x = x:to(dt), cpu_scalar = spec.cpu_scalar }
  end
  return list
end

local function as_list(r)
  if lumen.is_tensor(r) then return { r } end
  return r
end

local function is_float(t) return t:dtype() == 'f32' or t:dtype() == 'f64' end

-- How far a (device result, on the CPU) is from e: the largest
-- |a - e| / (1 + |e|) for floats (NaN matching NaN), the number of
-- differing elements otherwise; nil, why when they cannot be compared.
function M.error(a, e)
  if a:dtype() ~= e:dtype() then return nil, 'dtype ' .. a:dtype() .. ' vs ' .. e:dtype() end
  local sa, se = table.concat(a:size(), 'x'), table.concat(e:size(), 'x')
  if sa ~= se then return nil, 'shape ' .. sa .. ' vs ' .. se end
  a, e = a:cpu():contiguous(), e:contiguous()
  local n, worst = a:numel(), 0
  if n == 0 then return 0 end
  if is_float(a) then
    local ct = a:dtype() == 'f32' and 'float *' or 'double *'
    local p, q = ffi.cast(ct, a:data_ptr()), ffi.cast(ct, e:data_ptr())
    for i = 0, n - 1 do
      local x, y = p[i], q[i]
      local d
      if x ~= x or y ~= y then d = (x ~= x and y ~= y) and 0 or math.huge
      elseif x == y then d = 0
      else d = math.abs(x - y) / (1 + math.abs(y)) end
      if d > worst then worst = d end
    end
    return worst
  end
  local es = ({ i32 = 4, i64 = 8, u8 = 1, bool = 1 })[a:dtype()]
  local p, q = ffi.cast('uint8_t *', a:data_ptr()), ffi.cast('uint8_t *', e:data_ptr())
  for i = 0, n - 1 do
    if ffi.string(p + i * es, es) ~= ffi.string(q + i * es, es) then worst = worst + 1 end
  end
  return worst
end

-- Runs one case for dtype on the CPU and on device; returns a record:
-- { name=, dtype=, fwd= (largest error of the results), bwd= (of the
-- gradients, or nil), tol=, ok=, why= }.
function M.compare(case, dtype, device, s)
  s = s or 1
  local rec = { name = case.name, dtype = dtype }
  -- the threshold of a result by its own dtype (an integer case may give floats)
  local function tol(t)
    local dt = t:dtype()
    if dt == 'f32' and (case.gemm or case.loose) then return 2e-5 end
    return M.thresholds[dt] or 0
  end
  local worst = 0 -- error / threshold, the largest
  local function note(e, t, scale)
    local limit = tol(t) * (scale or 1)
    worst = math.max(worst, limit > 0 and e / limit or (e > 0 and math.huge or 0))
  end
  local ok, err = pcall(function()
    local cpu_in, dev_in = make_inputs(case, dtype, s), {}
    local grad = case.grad and (dtype == 'f32' or dtype == 'f64')
    local cx, dx = {}, {}
    for i, v in ipairs(cpu_in) do
      cx[i] = v.x
      dx[i] = v.cpu_scalar and v.x:clone() or v.x:to(device)
      if grad and is_float(v.x) and not v.cpu_scalar then
        cx[i]:requires_grad_()
        dx[i]:requires_grad_()
      end
    end
    local rc, rd = as_list(case.fn(unpack(cx))), as_list(case.fn(unpack(dx)))
    if #rc ~= #rd then error('results: ' .. #rc .. ' on the CPU, ' .. #rd .. ' on ' .. device, 0) end
    rec.fwd = 0
    for i = 1, #rc do
      if rd[i]:device() ~= device then error('result ' .. i .. ' is on ' .. rd[i]:device(), 0) end
      local e, why = M.error(rd[i], rc[i])
      if not e then error('result ' .. i .. ': ' .. why, 0) end
      if e > rec.fwd then rec.fwd = e end
      note(e, rc[i])
    end
    if grad then
      -- sum of each chosen float result times a fixed random tensor
      local lc, ld
      lumen.manual_seed(99)
      for k, i in ipairs(case.grad_of or (function() local t = {} for j = 1, #rc do t[j] = j end return t end)()) do
        if is_float(rc[i]) and rc[i].requires_grad then
          local g = lumen.randn(rc[i]:size(), rc[i]:dtype())
          local tc, td = (rc[i] * g):sum(), (rd[i] * g:to(device)):sum()
          lc = lc and lc + tc or tc
          ld = ld and ld + td or td
        end
      end
      if lc then
        lc:backward()
        ld:backward()
        rec.bwd = 0
        for i = 1, #cx do
          if cx[i].requires_grad then
            local gc, gd = cx[i].grad, dx[i].grad
            if gc == nil and gd ~= nil then error('a gradient for input ' .. i .. ' on ' .. device .. ' only', 0) end
            if gc ~= nil and gd == nil then error('no gradient for input ' .. i .. ' on ' .. device, 0) end
            if gd and gd:device() ~= device then error('the gradient of input ' .. i .. ' is on ' .. gd:device(), 0) end
            if gc ~= nil then
              local e, why = M.error(gd, gc)
              if not e then error('gradient ' .. i .. ': ' .. why, 0) end
              if e > rec.bwd then rec.bwd = e end
              note(e, gc, 4) -- gradients pass through more ops
            end
          end
        end
      end
    end
  end)
  if not ok then
    rec.ok, rec.why = false, tostring(err)
  else
    rec.ok = worst <= 1
    if not rec.ok then rec.why = string.format('error %.1f times the threshold', worst) end
  end
  return rec
end

-- Every case and dtype: the list of records.
function M.run_all(device, s)
  local out = {}
  for _, case in ipairs(M.cases) do
    for _, dt in ipairs(case.dtypes) do out[#out + 1] = M.compare(case, dt, device, s) end
  end
  return out
end

-- The records as a table of lines (failures say why).
function M.report(records)
  local lines = { string.format('%-46s %-5s %10s %10s  %s', 'op', 'dtype', 'forward', 'backward', 'result') }
  for _, r in ipairs(records) do
    local function num(v) return v == nil and '-' or (v == 0 and '0' or string.format('%.1e', v)) end
    lines[#lines + 1] = string.format('%-46s %-5s %10s %10s  %s', r.name:sub(1, 46), r.dtype, num(r.fwd), num(r.bwd),
      r.ok and 'ok' or ('FAIL: ' .. tostring(r.why)))
  end
  return lines
end

return M
