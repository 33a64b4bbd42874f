-- Recurrent layers against PyTorch: the fused LSTM / GRU steps (values,
-- gradients, strided operands, finite differences in f64), the sequence
-- modules (RNN tanh / relu, LSTM, GRU; 1 and 2 layers, bidirectional,
-- batch_first, no bias, unbatched, with and without initial states: outputs,
-- final states and the gradients of the input, the states and every weight,
-- against torch._VF with the same weights), the cells, loading a torch
-- state_dict, and the errors for bad inputs.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'
local gradcheck = require 'helpers.gradcheck'

local F = nn.F
local TOL = { rtol = 1e-4, atol = 1e-5 }

local function dims(t) return table.concat(t:size(), 'x') end

-- Seeds backward of several outputs at once (each with its own gradient).
local function backward_all(outs, grads)
  for i = 1, #outs do outs[i]:backward(grads[i], { retain_graph = i < #outs }) end
end

-- The pieces of a flat reference, reshaped like the given tensors.
local function split_flat(flat, likes)
  local pieces, at = {}, 0
  for i, t in ipairs(likes) do
    pieces[i] = flat:narrow(0, at, t:numel()):reshape(t:size())
    at = at + t:numel()
  end
  return pieces
end

local function flat_cat(ts)
  local flat = {}
  for i, t in ipairs(ts) do flat[i] = t:reshape(-1) end
  return lumen.cat(flat)
end

describe('nn rnn', function()
  lumen.manual_seed(2024)
  local batch, checks = {}, {}
  -- add(oracle case, fn(ref)): fn compares once the oracle has run
  local function add(case, name, fn)
    batch[#batch + 1] = case
    checks[#checks + 1] = { name = name, fn = fn, i = #batch }
  end

  ---------------------------------------------------------------------------
  -- fused steps
  local LSTM_REF = 'grad_of(lambda gx, gh, c: (lambda i, f, g, o: (lambda cn: torch.stack([torch.sigmoid(o) * '
    .. 'torch.tanh(cn), cn]))(torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)))(*(gx + gh).chunk(4, 1)), '
    .. '[gx, gh, c], g)'
  local GRU_REF = 'grad_of(lambda gx, gh, h: (lambda xr, xz, xn, hr, hz, hn: (lambda r, z: (1 - z) * torch.tanh(xn '
    .. '+ r * hn) + z * h)(torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)))(*gx.chunk(3, 1), *gh.chunk(3, 1)), '
    .. '[gx, gh, h], g)'

  for _, dt in ipairs { 'f32', 'f64' } do
    local N, H = 3, 5
    local gx, gh, c = lumen.randn({ N, 4 * H }, dt) * 2, lumen.randn({ N, 4 * H }, dt) * 2, lumen.randn({ N, H }, dt)
    local g = lumen.randn({ 2, N, H }, dt)
    add({ LSTM_REF, gx = gx, gh = gh, c = c, g = g }, 'fused_lstm_cell: values and gradients (' .. dt .. ')', function(ref)
      local a, b, s = gx:clone():requires_grad_(), gh:clone():requires_grad_(), c:clone():requires_grad_()
      local h2, c2 = F.fused_lstm_cell(a, b, s)
      assert.are.equal('lstm_cell', h2.grad_fn)
      check.assert_close(h2, ref[1]:select(0, 0), TOL, 'h')
      check.assert_close(c2, ref[1]:select(0, 1), TOL, 'c')
      backward_all({ h2, c2 }, { g:select(0, 0), g:select(0, 1) })
      check.assert_close(a.grad, ref[2], TOL, 'grad gates_x')
      check.assert_close(b.grad, ref[3], TOL, 'grad gates_h')
      check.assert_close(s.grad, ref[4], TOL, 'grad c_prev')
    end)
    local hp, gg = lumen.randn({ N, H }, dt), lumen.randn({ N, H }, dt)
    local gx3, gh3 = gx:narrow(1, 0, 3 * H):contiguous(), gh:narrow(1, 0, 3 * H):contiguous()
    add({ GRU_REF, gx = gx3, gh = gh3, h = hp, g = gg }, 'fused_gru_cell: values and gradients (' .. dt .. ')', function(ref)
      local a, b, s = gx3:clone():requires_grad_(), gh3:clone():requires_grad_(), hp:clone():requires_grad_()
      local h2 = F.fused_gru_cell(a, b, s)
      assert.are.equal('gru_cell', h2.grad_fn)
      check.assert_close(h2, ref[1], TOL, 'h')
      h2:backward(gg)
      check.assert_close(a.grad, ref[2], TOL, 'grad gates_x')
      check.assert_close(b.grad, ref[3], TOL, 'grad gates_h')
      check.assert_close(s.grad, ref[4], TOL, 'grad h_prev')
    end)
  end

  do -- strided operands: a step of a batch-major sequence, transposed and stepped views
    local N, H = 4, 3
    local seq = lumen.randn(N, 3, 4 * H)
    local gx = seq:select(1, 1)                     -- rows 3*4H apart
    local gh = lumen.randn(4 * H, N):t()           -- column-major
    local c = lumen.randn(N, 2 * H):slice(1, 0, 2 * H, 2) -- stepped columns
    local g = lumen.randn(2, N, H)
    add({ LSTM_REF, gx = gx, gh = gh, c = c, g = g }, 'fused_lstm_cell: strided and transposed operands', function(ref)
      local h2, c2 = F.fused_lstm_cell(gx, gh, c)
      check.assert_close(h2, ref[1]:select(0, 0), TOL, 'h')
      check.assert_close(c2, ref[1]:select(0, 1), TOL, 'c')
      assert.is_nil(h2.grad_fn) -- nothing required grad: nothing recorded
    end)
    local gx3, gh3 = seq:narrow(2, 0, 3 * H):select(1, 2), lumen.randn(3 * H, N):t()
    local hp = lumen.randn(N, 2 * H):slice(1, 1, 2 * H, 2)
    add({ GRU_REF, gx = gx3, gh = gh3, h = hp, g = lumen.randn(N, H) }, 'fused_gru_cell: strided and transposed operands',
      function(ref) check.assert_close(F.fused_gru_cell(gx3, gh3, hp), ref[1], TOL, 'h') end)
  end

  do -- the f32 kernels' own exp: a wide range, saturation, infinities and NaN, checked tightly
    local N, H = 4, 50
    local gx = lumen.linspace(-30, 30, N * 4 * H):reshape(N, 4 * H)
    local gh = lumen.zeros(N, 4 * H)
    for k, v in ipairs { 1 / 0, -1 / 0, 0 / 0, 100, -100, 1e-7, -1e-7 } do gh[{ k % N, k * 7 }] = v end
    local c, hp = lumen.randn(N, H), lumen.randn(N, H)
    local gx3, gh3 = gx:narrow(1, 0, 3 * H):contiguous(), gh:narrow(1, 0, 3 * H):contiguous()
    local g2, g1 = lumen.zeros(2, N, H), lumen.zeros(N, H)
    local tight = { rtol = 2e-6, atol = 2e-7 }
    add({ LSTM_REF, gx = gx, gh = gh, c = c, g = g2 }, 'fused_lstm_cell: f32 activations over -30..30, inf and NaN', function(ref)
      local h2, c2 = F.fused_lstm_cell(gx, gh, c)
      check.assert_close(h2, ref[1]:select(0, 0), tight, 'h')
      check.assert_close(c2, ref[1]:select(0, 1), tight, 'c')
    end)
    add({ GRU_REF, gx = gx3, gh = gh3, h = hp, g = g1 }, 'fused_gru_cell: f32 activations over -30..30, inf and NaN',
      function(ref) check.assert_close(F.fused_gru_cell(gx3, gh3, hp), ref[1], tight, 'h') end)
  end

  it('fused cells: finite differences in f64 (every input, both LSTM outputs)', function()
    local N, H = 2, 3
    local gx, gh = lumen.randn({ N, 4 * H }, 'f64'), lumen.randn({ N, 4 * H }, 'f64')
    local c = lumen.randn({ N, H }, 'f64')
    assert(gradcheck(function(a, b, s) return (F.fused_lstm_cell(a, b, s)) end, { gx, gh, c }))
    assert(gradcheck(function(a, b, s) return select(2, F.fused_lstm_cell(a, b, s)) end, { gx, gh, c }))
    local gx3, gh3 = lumen.randn({ N, 3 * H }, 'f64'), lumen.randn({ N, 3 * H }, 'f64')
    assert(gradcheck(function(a, b, s) return F.fused_gru_cell(a, b, s) end, { gx3, gh3, c }))
  end)

  it('fused cells: a gradient only for the state that needs one, none recorded under no_grad', function()
    local gx, gh = lumen.randn(2, 8), lumen.randn(2, 8)
    local c = lumen.randn(2, 2):requires_grad_()
    local h = F.fused_lstm_cell(gx, gh, c)
    h:backward(lumen.ones(2, 2))
    assert.are.same({ 2, 2 }, c.grad:size())
    local h2 = lumen.no_grad(function() return F.fused_lstm_cell(gx, gh, c) end)
    assert.is_nil(h2.grad_fn)
  end)

  ---------------------------------------------------------------------------
  -- sequence modules against torch._VF with the same weights
  local VF = { RNN = 'rnn_tanh', RNN_RELU = 'rnn_relu', LSTM = 'lstm', GRU = 'gru' }

  -- cfg: kind, I, H, T, N, opts, states (give initial states), unbatched
  local function module_case(name, cfg)
    local opts = cfg.opts or {}
    local L, D = opts.num_layers or 1, opts.bidirectional and 2 or 1
    local m = nn[cfg.kind](cfg.I, cfg.H, opts)
    local is_lstm = cfg.kind == 'LSTM'
    local xs = cfg.unbatched and { cfg.T, cfg.I } or (opts.batch_first and { cfg.N, cfg.T, cfg.I } or { cfg.T, cfg.N, cfg.I })
    local x = lumen.randn(xs)
    local ss = cfg.unbatched and { D * L, cfg.H } or { D * L, cfg.N, cfg.H }
    local h0, c0 = lumen.randn(ss), lumen.randn(ss)
    -- the gradients seeding output, h_n (and c_n)
    local os = cfg.unbatched and { cfg.T, D * cfg.H } or
      (opts.batch_first and { cfg.N, cfg.T, D * cfg.H } or { cfg.T, cfg.N, D * cfg.H })
    local seeds = { lumen.randn(os), lumen.randn(ss) }
    if is_lstm then seeds[3] = lumen.randn(ss) end

    local case = { x = x, h0 = cfg.states and h0 or lumen.zeros(ss), g = flat_cat(seeds) }
    if is_lstm then case.c0 = cfg.states and c0 or lumen.zeros(ss) end
    local wnames = {}
    for k, p in ipairs(m:parameters()) do
      wnames[k] = 'w' .. k
      case['w' .. k] = p:detach()
    end
    local vf = VF[cfg.kind == 'RNN' and opts.nonlinearity == 'relu' and 'RNN_RELU' or cfg.kind]
    local u, sq = cfg.unbatched and '.unsqueeze(1)' or '', cfg.unbatched and '.squeeze(1)' or ''
    local hx = is_lstm and ('(h0' .. u .. ', c0' .. u .. ')') or ('h0' .. u)
    local args = is_lstm and 'x, h0, c0, ' or 'x, h0, '
    case[1] = string.format('grad_of(lambda %s*w: torch.cat([t%s.reshape(-1) for t in torch._VF.%s(x%s, %s, list(w), %s, '
      .. '%d, 0.0, False, %s, %s)]), [%s%s], g)', args, sq, vf, u, hx, opts.bias == false and 'False' or 'True', L,
      opts.bidirectional and 'True' or 'False', opts.batch_first and 'True' or 'False', args, table.concat(wnames, ', '))

    add(case, name, function(ref)
      assert(not ref.error, ref.error)
      local xi = x:clone():requires_grad_()
      local hi, ci = h0:clone():requires_grad_(), c0:clone():requires_grad_()
      local out, st
      if is_lstm then out, st = m(xi, cfg.states and { hi, ci } or nil) else out, st = m(xi, cfg.states and hi or nil) end
      local outs = is_lstm and { out, st[1], st[2] } or { out, st }
      local want = split_flat(ref[1], seeds)
      check.assert_close(out, want[1], TOL, 'output')
      check.assert_close(outs[2], want[2], TOL, 'h_n')
      if is_lstm then check.assert_close(outs[3], want[3], TOL, 'c_n') end
      backward_all(outs, seeds)
      check.assert_close(xi.grad, ref[2], TOL, 'grad input')
      local k = 3
      if cfg.states then
        check.assert_close(hi.grad, ref[3], TOL, 'grad h0')
        if is_lstm then check.assert_close(ci.grad, ref[4], TOL, 'grad c0') end
      end
      k = is_lstm and 5 or 4
      for j, p in ipairs(m:named_parameters()) do
        check.assert_close(p[2].grad, ref[k + j - 1], TOL, 'grad ' .. p[1])
      end
    end)
  end

  module_case('RNN tanh, 1 layer', { kind = 'RNN', I = 5, H = 6, T = 4, N = 3 })
  module_case('RNN relu, 2 layers, initial state', { kind = 'RNN', I = 4, H = 5, T = 3, N = 2, states = true,
    opts = { nonlinearity = 'relu', num_layers = 2 } })
  module_case('RNN tanh, 2 layers, bidirectional, no bias', { kind = 'RNN', I = 3, H = 4, T = 5, N = 2,
    opts = { num_layers = 2, bidirectional = true, bias = false } })
  module_case('LSTM, 1 layer, initial states', { kind = 'LSTM', I = 5, H = 4, T = 4, N = 3, states = true })
  module_case('LSTM, 2 layers, bidirectional, batch_first, initial states', { kind = 'LSTM', I = 3, H = 4, T = 5,
    N = 2, states = true, opts = { num_layers = 2, bidirectional = true, batch_first = true } })
  module_case('LSTM, unbatched input, initial states', { kind = 'LSTM', I = 3, H = 2, T = 4, unbatched = true,
    states = true, opts = { num_layers = 2 } })
  module_case('LSTM, no bias, no initial state', { kind = 'LSTM', I = 4, H = 3, T = 3, N = 2, opts = { bias = false } })
  module_case('GRU, 2 layers, bidirectional', { kind = 'GRU', I = 4, H = 3, T = 4, N = 3,
    opts = { num_layers = 2, bidirectional = true } })
  module_case('GRU, batch_first, no bias, initial state', { kind = 'GRU', I = 5, H = 4, T = 3, N = 2, states = true,
    opts = { batch_first = true, bias = false } })
  module_case('GRU, unbatched, bidirectional, initial state', { kind = 'GRU', I = 3, H = 2, T = 3, unbatched = true,
    states = true, opts = { bidirectional = true } })

  -- past 4000 steps the projection is split by selecting step views (one
  -- Lua call cannot return more values than that)
  module_case('RNN tanh, 4001 steps', { kind = 'RNN', I = 2, H = 1, T = 4001, N = 1, states = true })

  ---------------------------------------------------------------------------
  -- cells against torch.rnn_tanh_cell, rnn_relu_cell, gru_cell, lstm_cell
  local function cell_case(name, kind, opts, cfg)
    local m = nn[kind](cfg.I, cfg.H, opts)
    local is_lstm = kind == 'LSTMCell'
    local xs = cfg.unbatched and { cfg.I } or { cfg.N, cfg.I }
    local ss = cfg.unbatched and { cfg.H } or { cfg.N, cfg.H }
    local x, h, c = lumen.randn(xs), lumen.randn(ss), lumen.randn(ss)
    local seeds = { lumen.randn(ss) }
    if is_lstm then seeds[2] = lumen.randn(ss) end
    local case = { x = x, h = cfg.states and h or lumen.zeros(ss), g = flat_cat(seeds),
      w_ih = m.weight_ih:detach(), w_hh = m.weight_hh:detach() }
    if is_lstm then case.c = cfg.states and c or lumen.zeros(ss) end
    local bias = 'None, None'
    if m.bias_ih then
      case.b_ih, case.b_hh = m.bias_ih:detach(), m.bias_hh:detach()
      bias = 'b_ih, b_hh'
    end
    local fn = kind == 'GRUCell' and 'gru_cell' or is_lstm and 'lstm_cell' or
      ((opts and opts.nonlinearity == 'relu') and 'rnn_relu_cell' or 'rnn_tanh_cell')
    local ws = 'w_ih, w_hh' .. (m.bias_ih and ', b_ih, b_hh' or '')
    local u = cfg.unbatched and '.unsqueeze(0)' or '' -- torch's functional cells want a batch
    if is_lstm then
      case[1] = string.format('grad_of(lambda x, h, c, %s: torch.cat([t.reshape(-1) for t in torch.lstm_cell(x%s, (h%s, '
        .. 'c%s), w_ih, w_hh, %s)]), [x, h, c, %s], g)', ws, u, u, u, bias, ws)
    else
      case[1] = string.format('grad_of(lambda x, h, %s: torch.%s(x%s, h%s, w_ih, w_hh, %s).reshape(-1), [x, h, %s], g)',
        ws, fn, u, u, bias, ws)
    end
    add(case, name, function(ref)
      assert(not ref.error, ref.error)
      local xi, hi, ci = x:clone():requires_grad_(), h:clone():requires_grad_(), c:clone():requires_grad_()
      local outs
      if is_lstm then outs = { m(xi, cfg.states and { hi, ci } or nil) } else outs = { m(xi, cfg.states and hi or nil) } end
      local want = split_flat(ref[1], seeds)
      for i = 1, #outs do check.assert_close(outs[i], want[i], TOL, i == 1 and 'h' or 'c') end
      backward_all(outs, seeds)
      check.assert_close(xi.grad, ref[2], TOL, 'grad input')
      if cfg.states then
        check.assert_close(hi.grad, ref[3], TOL, 'grad h')
        if is_lstm then check.assert_close(ci.grad, ref[4], TOL, 'grad c') end
      end
      local k = is_lstm and 5 or 4
      for j, p in ipairs(m:named_parameters()) do
        check.assert_close(p[2].grad, ref[k + j - 1], TOL, 'grad ' .. p[1])
      end
    end)
  end

  cell_case('RNNCell tanh, given state', 'RNNCell', nil, { I = 4, H = 5, N = 3, states = true })
  cell_case('RNNCell relu, no bias, no state', 'RNNCell', { nonlinearity = 'relu', bias = false }, { I = 4, H = 3, N = 2 })
  cell_case('LSTMCell, given state', 'LSTMCell', nil, { I = 4, H = 3, N = 2, states = true })
  cell_case('LSTMCell, unbatched, no state', 'LSTMCell', nil, { I = 3, H = 2, unbatched = true })
  cell_case('GRUCell, given state', 'GRUCell', nil, { I = 5, H = 4, N = 3, states = true })
  cell_case('GRUCell, no bias, unbatched, given state', 'GRUCell', { bias = false }, { I = 3, H = 4, unbatched = true,
    states = true })

  ---------------------------------------------------------------------------
  -- a state_dict made by torch loads as it is
  local function torch_weights_case(name, kind, ctor, I, H, opts, x)
    local m = nn[kind](I, H, opts)
    add({ '(lambda m: [m(x)[0]] + list(m.state_dict().values()))((torch.manual_seed(0), ' .. ctor .. ')[1])', x = x },
      name, function(ref)
        assert(not ref.error, ref.error)
        local _, names = m:state_dict()
        assert.are.equal(#names, #ref - 1)
        local sd = {}
        for k, n in ipairs(names) do sd[n] = ref[k + 1] end
        m:load_state_dict(sd)
        check.assert_close((m(x)), ref[1], TOL, 'output')
      end)
  end
  torch_weights_case('loads the state_dict of torch.nn.LSTM (2 layers, bidirectional)', 'LSTM',
    'torch.nn.LSTM(4, 3, 2, bidirectional=True)', 4, 3, { num_layers = 2, bidirectional = true }, lumen.randn(5, 2, 4))
  torch_weights_case('loads the state_dict of torch.nn.GRU (batch_first)', 'GRU',
    'torch.nn.GRU(3, 5, batch_first=True)', 3, 5, { batch_first = true }, lumen.randn(2, 4, 3))

  local ref = oracle.run(batch)
  for _, c in ipairs(checks) do
    it(c.name, function() c.fn(ref[c.i]) end)
  end

  ---------------------------------------------------------------------------
  it('initializes every parameter uniformly in +-1/sqrt(hidden_size)', function()
    for _, kind in ipairs { 'RNN', 'LSTM', 'GRU', 'RNNCell', 'LSTMCell', 'GRUCell' } do
      local m = nn[kind](7, 16)
      for _, p in ipairs(m:named_parameters()) do
        local lo, hi = p[2]:min():item(), p[2]:max():item()
        assert(lo >= -0.25 and hi <= 0.25, kind .. ' ' .. p[1] .. ' out of range')
        assert(hi - lo > 0.2, kind .. ' ' .. p[1] .. ' is not spread over the range')
      end
    end
    local m = nn.GRU(3, 4, { num_layers = 2, bidirectional = true })
    assert.are.same({ 12, 8 }, m.weight_ih_l1_reverse:size())
    assert.are.equal('3, 4, num_layers=2, bidirectional=true', m:extra_repr())
  end)

  it('whole layers: finite differences in f64 (input and initial states)', function()
    local lstm = nn.LSTM(2, 2, { num_layers = 2, bidirectional = true }):to('f64')
    local x, h0, c0 = lumen.randn({ 3, 2, 2 }, 'f64'), lumen.randn({ 4, 2, 2 }, 'f64'), lumen.randn({ 4, 2, 2 }, 'f64')
    assert(gradcheck(function(a, h, c) return (lstm(a, { h, c })) end, { x, h0, c0 }))
    assert(gradcheck(function(a, h, c) return select(2, lstm(a, { h, c }))[2] end, { x, h0, c0 }))
    local gru = nn.GRU(2, 3, { batch_first = true }):to('f64')
    assert(gradcheck(function(a, h) return (gru(a, h)) end, { x, lumen.randn({ 1, 3, 3 }, 'f64') }))
  end)

  it('gives the same values under no_grad, and records nothing', function()
    local m = nn.GRU(3, 4, { num_layers = 2 })
    local x = lumen.randn(5, 2, 3)
    local y, h = m(x)
    local y2, h2 = lumen.no_grad(function() return m(x) end)
    assert.is_truthy(y.grad_fn)
    assert.is_nil(y2.grad_fn)
    check.assert_close(y2, y, { rtol = 0, atol = 0 })
    check.assert_close(h2, h, { rtol = 0, atol = 0 })
  end)

  it('drops out between layers only in training', function()
    local m = nn.LSTM(3, 4, { num_layers = 2, dropout = 0.5 })
    local plain = nn.LSTM(3, 4, { num_layers = 2 })
    plain:load_state_dict((m:state_dict()))
    local x = lumen.randn(6, 2, 3)
    m:eval()
    check.assert_close((m(x)), (plain(x)), { rtol = 0, atol = 0 })
    m:train()
    local a, b = m(x), m(x)
    assert.is_false(check.close(a, (plain(x))))
    assert.is_false(check.close(a, b))
    a:sum():backward()
    assert.are.same({ 16, 4 }, m.weight_ih_l1.grad:size())
    -- one layer: nothing to drop
    local one = nn.GRU(3, 4, { dropout = 0.5 })
    check.assert_close((one(x)), (lumen.no_grad(function() return one(x) end)), { rtol = 0, atol = 0 })
  end)

  it('reports bad inputs and options clearly', function()
    local lstm = nn.LSTM(4, 3, { num_layers = 2 })
    local x = lumen.randn(5, 2, 4)
    assert.has_error(function() lstm(lumen.randn(5, 2, 6)) end,
      'lumen.LSTM: input of shape 5x2x6 has 6 features, expected input_size 4')
    assert.has_error(function() lstm(lumen.randn(2, 3, 5, 4)) end,
      'lumen.LSTM: input has shape 2x3x5x4, expected 3-D (seq x batch x input_size) or 2-D (seq x input_size, unbatched)')
    assert.has_error(function() lstm(x, { lumen.zeros(2, 3, 3), lumen.zeros(2, 2, 3) }) end,
      'lumen.LSTM: h0 has shape 2x3x3, expected 2x2x3 (num_layers*directions x batch x hidden_size)')
    assert.has_error(function() lstm(x, { lumen.zeros(2, 2, 3), lumen.zeros(1, 2, 3) }) end,
      'lumen.LSTM: c0 has shape 1x2x3, expected 2x2x3 (num_layers*directions x batch x hidden_size)')
    assert.has_error(function() lstm(x, lumen.zeros(2, 2, 3)) end,
      'lumen.LSTM: the initial state must be a table {h0, c0}, got a tensor')
    assert.has_error(function() lstm(x, { lumen.zeros(2, 2, 3) }) end, 'lumen.LSTM: the initial state needs both h0 and c0')
    assert.has_error(function() lstm(x:to('f64')) end,
      "lumen.LSTM: input is f64 but the weights are f32, expected one dtype (m:to('f64') converts the module)")
    assert.has_error(function() lstm(lumen.randn(0, 2, 4)) end, 'lumen.LSTM: input of shape 0x2x4 has no time steps')
    assert.has_error(function() lstm('x') end, 'lumen.LSTM: input must be a tensor, got string')
    local gru = nn.GRU(4, 3, { bidirectional = true, batch_first = true })
    assert.has_error(function() gru(x, lumen.zeros(1, 5, 3)) end,
      'lumen.GRU: h0 has shape 1x5x3, expected 2x5x3 (num_layers*directions x batch x hidden_size)')
    assert.has_error(function() gru(x, lumen.zeros(2, 5, 3, 'f64')) end,
      'lumen.GRU: h0 is f64 but the input is f32, expected one dtype')
    assert.has_error(function() nn.RNN(4, 3, { nonlinearity = 'sigmoid' }) end,
      "lumen.RNN: nonlinearity must be 'tanh' or 'relu', got 'sigmoid'")
    assert.has_error(function() nn.LSTM(4, 3, { nonlinearity = 'relu' }) end,
      "lumen.LSTM: unknown option 'nonlinearity' (expected batch_first, bias, bidirectional, dropout, num_layers)")
    assert.has_error(function() nn.GRU(4, 0) end, 'lumen.GRU: hidden_size must be a positive integer, got 0')
    assert.has_error(function() nn.GRU(4, 3, { dropout = 2 }) end, 'lumen.GRU: dropout must be a number in [0, 1], got 2')

    local cell = nn.LSTMCell(4, 3)
    assert.has_error(function() cell(lumen.randn(2, 5)) end,
      'lumen.LSTMCell: input of shape 2x5 has 5 features, expected input_size 4')
    assert.has_error(function() cell(lumen.randn(2, 4), { lumen.zeros(3, 3), lumen.zeros(2, 3) }) end,
      'lumen.LSTMCell: h has shape 3x3, expected 2x3 (batch x hidden_size)')
    assert.has_error(function() cell(lumen.randn(2, 4), lumen.zeros(2, 3)) end,
      'lumen.LSTMCell: the state must be a table {h, c}, got a tensor')
    assert.has_error(function() nn.GRUCell(4, 3)(lumen.randn(4), lumen.zeros(2, 3)) end,
      'lumen.GRUCell: h has shape 2x3, expected 3 (hidden_size, for an unbatched input)')
    assert.has_error(function() nn.RNNCell(4, 3)(lumen.randn(2, 3, 4)) end,
      'lumen.RNNCell: input has shape 2x3x4, expected 2-D (batch x input_size) or 1-D (input_size)')

    assert.has_error(function() F.gru_cell(lumen.randn(2, 4), nil, lumen.randn(9, 4), nil) end,
      'lumen.gru_cell: w_hh must be a 2-D tensor, got nil')

    -- the fused steps check their operands in C
    assert.has_error(function() F.fused_lstm_cell(lumen.randn(2, 12), lumen.randn(2, 12), lumen.randn(2, 4)) end,
      'lumen.fused_lstm_cell: gates_x has shape 2x12, expected 2x16 (batch x 4*hidden, from c_prev of shape 2x4)')
    assert.has_error(function() F.fused_lstm_cell(lumen.randn(2, 12), lumen.randn(3, 12), lumen.randn(2, 3)) end,
      'lumen.fused_lstm_cell: gates_h has shape 3x12, expected 2x12 (batch x 4*hidden, from c_prev of shape 2x3)')
    assert.has_error(function() F.fused_lstm_cell(lumen.randn(2, 12), lumen.randn(2, 12), lumen.randn(2, 3, 1)) end,
      'lumen.fused_lstm_cell: c_prev has shape 2x3x1, expected 2-D (batch x hidden)')
    assert.has_error(function() F.fused_gru_cell(lumen.randn(2, 9), lumen.randn(2, 9, 'f64'), lumen.randn(2, 3)) end,
      'lumen.fused_gru_cell: gates_x is f32 but gates_h is f64, expected one dtype')
    assert.has_error(function() F.fused_gru_cell(lumen.zeros({ 2, 9 }, 'i32'), lumen.randn(2, 9), lumen.randn(2, 3)) end,
      'lumen.fused_gru_cell: gates_x has dtype i32, expected f32 or f64')
    assert.has_error(function() F.fused_gru_cell(lumen.randn(2, 9), nil, lumen.randn(2, 3)) end,
      'lumen.fused_gru_cell: gates_h must be a tensor, got nil')
  end)
end)
