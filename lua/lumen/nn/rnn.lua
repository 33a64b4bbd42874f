-- rnn.lua: recurrent layers, as torch.nn has them.
--
--   nn.RNN / nn.LSTM / nn.GRU(input_size, hidden_size, {num_layers = 1,
--     bias = true, batch_first = false, dropout = 0, bidirectional = false,
--     nonlinearity = 'tanh' (RNN only)})
--   rnn(x, h0) -> output, h_n          (RNN, GRU)
--   lstm(x, {h0, c0}) -> output, {h_n, c_n}
--     x: T x N x input_size (N x T x ... with batch_first), or T x input_size
--     unbatched; output: T x N x (D * hidden_size); states: (D * num_layers)
--     x N x hidden_size (D = 2 when bidirectional). Missing states are zeros.
--   nn.RNNCell / nn.LSTMCell / nn.GRUCell(input_size, hidden_size, {bias,
--     nonlinearity}): cell(x, h) -> h; lstm_cell(x, {h, c}) -> h, c
--   Parameters are named as torch's (weight_ih_l0, bias_hh_l1_reverse, ...)
--   so that a torch state_dict loads as it is.
--
-- Functional forms: F.rnn_tanh_cell, F.rnn_relu_cell, F.gru_cell(x, h, w_ih,
-- w_hh, b_ih, b_hh) -> h; F.lstm_cell(x, {h, c}, ...) -> h, c; and the fused
-- pointwise steps that follow a cell's two GEMMs (src/ops/rnn.c):
-- F.fused_lstm_cell(gates_x, gates_h, c) -> h, c and
-- F.fused_gru_cell(gates_x, gates_h, h) -> h.
--
-- A layer precomputes the input projection of every time step with one GEMM,
-- then loops over time with one GEMM (h W_hh^T) and one fused op per step;
-- everything is ordinary lumen ops, so autograd differentiates the loop.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

return function(nn, lumen)
  local F = nn.F
  local fmt = string.format

  local function shape_str(t)
    local s = t:size()
    return #s == 0 and 'scalar' or table.concat(s, 'x')
  end

  ---------------------------------------------------------------------------
  -- fused pointwise steps

  local out_a, out_b = ffi.new('lm_tensor*[1]'), ffi.new('lm_tensor*[1]')

  -- Runs one of the C cells; errors carry the Lua name.
  local function fused(name, fn, n_out, gx, gh, s, state_name)
    local hx = core.handle(gx, name, 'gates_x')
    local hh = core.handle(gh, name, 'gates_h')
    local hs = core.handle(s, name, state_name)
    for attempt = 1, 2 do
      out_a[0], out_b[0] = nil, nil
      local st = n_out == 2 and fn(ctx, hx, hh, hs, out_a, out_b) or fn(ctx, hx, hh, hs, out_a)
      if st == 0 then break end
      if st ~= C.LM_E_OOM or attempt == 2 then core.fail_as(name, 3) end
      collectgarbage('collect') -- out of memory: free dead tensors, retry once
      C.lm_mem_empty_cache(ctx)
      C.lm_ctx_clear_error(ctx)
    end
    local a = core.wrap(out_a[0])
    if n_out == 1 then return a end
    return a, core.wrap(out_b[0])
  end

  -- fused_lstm_cell(gates_x, gates_h, c_prev) -> h, c
  function F.fused_lstm_cell(gx, gh, c)
    return fused('fused_lstm_cell', C.lm_lstm_cell, 2, gx, gh, c, 'c_prev')
  end
  -- fused_gru_cell(gates_x, gates_h, h_prev) -> h
  function F.fused_gru_cell(gx, gh, h)
    return fused('fused_gru_cell', C.lm_gru_cell, 1, gx, gh, h, 'h_prev')
  end

  ---------------------------------------------------------------------------
  -- one step of each kind, after the input projection gx (batch x G*H).
  -- w_hh_t is a transposed view of w_hh. For RNN and LSTM, b_hh is folded
  -- into gx, so it is nil here; the GRU needs b_hh inside gates_h because r
  -- scales its n block.

  local function hidden_gates(h, w_hh_t, b_hh)
    if b_hh then return lumen.addmm(b_hh, h, w_hh_t) end
    return lumen.matmul(h, w_hh_t)
  end

  local steps = {
    RNN_TANH = function(gx, h, c, w_hh_t) return lumen.tanh(lumen.addmm(gx, h, w_hh_t)) end,
    RNN_RELU = function(gx, h, c, w_hh_t) return lumen.relu(lumen.addmm(gx, h, w_hh_t)) end,
    LSTM = function(gx, h, c, w_hh_t) return F.fused_lstm_cell(gx, lumen.matmul(h, w_hh_t), c) end,
    GRU = function(gx, h, c, w_hh_t, b_hh) return F.fused_gru_cell(gx, hidden_gates(h, w_hh_t, b_hh), h) end,
  }
  local gate_count = { RNN_TANH = 1, RNN_RELU = 1, LSTM = 4, GRU = 3 }

  -- The input projection x W_ih^T + bias of rows x (rows x in).
  local function project(x2, w_ih, bias)
    if bias then return lumen.addmm(bias, x2, w_ih:t()) end
    return lumen.matmul(x2, w_ih:t())
  end

  -- Biases of the input projection: b_ih, plus b_hh where the step does not
  -- need it separately.
  local function input_bias(mode, b_ih, b_hh)
    if not b_ih then return nil, nil end
    if mode == 'GRU' then return b_ih, b_hh end
    return b_ih + b_hh, nil
  end

  -- The time steps of a projection: unbind records one node for all of
  -- them, so backward writes the steps' gradients once (selecting each step
  -- would send back a full-size gradient per step: O(T^2) work).
  local function time_steps(gx, tdim) return lumen.unbind(gx, tdim) end

  -- One layer in one direction. x: time-major (T x N x I, tdim 0) or
  -- batch-major (N x T x I, tdim 1). Returns the outputs (shaped like x with
  -- H features) and the last h and c.
  local function run_direction(mode, x, tdim, h, c, w, reverse)
    local s = x:size()
    local T = s[tdim + 1]
    local bias, b_hh = input_bias(mode, w.b_ih, w.b_hh)
    local gx = project(x:reshape(s[1] * s[2], s[3]), w.w_ih, bias)
    local gxs = time_steps(gx:view(s[1], s[2], gx:size(1)), tdim)
    local step = steps[mode]
    local outs = {}
    for k = 1, T do
      local t = reverse and T - k or k - 1
      -- a new transposed view per step: each step's weight gradient then
      -- adds into w_hh.grad in place instead of into a fresh sum
      h, c = step(gxs[t + 1], h, c, w.w_hh:t(), b_hh)
      outs[t + 1] = h
    end
    return lumen.stack(outs, tdim), h, c
  end

  ---------------------------------------------------------------------------
  -- cells

  local function check_cell_input(name, x, w_ih)
    if not lumen.is_tensor(x) then error(fmt('lumen.%s: input must be a tensor, got %s', name, type(x)), 4) end
    local nd = x:dim()
    if nd ~= 1 and nd ~= 2 then
      error(fmt('lumen.%s: input has shape %s, expected 2-D (batch x input_size) or 1-D (input_size)', name,
        shape_str(x)), 4)
    end
    local fin = w_ih:size(1)
    if x:size(nd - 1) ~= fin then
      error(fmt('lumen.%s: input of shape %s has %d features, expected input_size %d', name, shape_str(x),
        x:size(nd - 1), fin), 4)
    end
    if x:dtype() ~= w_ih:dtype() then
      error(fmt('lumen.%s: input is %s but the weights are %s, expected one dtype', name, x:dtype(), w_ih:dtype()), 4)
    end
  end

  -- A state of a cell: nil gives zeros; otherwise it must be batch x H
  -- (or H when the input is unbatched).
  local function cell_state(name, what, s, x, H)
    local want = x:dim() == 2 and { x:size(0), H } or { H }
    if s == nil then -- on the input's device
      local z = lumen.zeros(want, x:dtype())
      return x:device() == 'cpu' and z or z:to(x:device())
    end
    if not lumen.is_tensor(s) then error(fmt('lumen.%s: %s must be a tensor, got %s', name, what, type(s)), 4) end
    if shape_str(s) ~= table.concat(want, 'x') then
      error(fmt('lumen.%s: %s has shape %s, expected %s (%s)', name, what, shape_str(s), table.concat(want, 'x'),
        #want == 2 and 'batch x hidden_size' or 'hidden_size, for an unbatched input'), 4)
    end
    if s:dtype() ~= x:dtype() then
      error(fmt('lumen.%s: %s is %s but the input is %s, expected one dtype', name, what, s:dtype(), x:dtype()), 4)
    end
    return s
  end

  -- One step of a cell with torch's weights (w_ih: G*H x I, w_hh: G*H x H).
  local function cell_step(name, mode, x, h, c, w_ih, w_hh, b_ih, b_hh)
    for _, w in ipairs { { w_ih, 'w_ih' }, { w_hh, 'w_hh' } } do
      if not lumen.is_tensor(w[1]) or w[1]:dim() ~= 2 then
        error(fmt('lumen.%s: %s must be a 2-D tensor, got %s', name, w[2],
          lumen.is_tensor(w[1]) and shape_str(w[1]) or type(w[1])), 3)
      end
    end
    check_cell_input(name, x, w_ih)
    local H = w_hh:size(1)
    h = cell_state(name, 'h', h, x, H)
    if mode == 'LSTM' then c = cell_state(name, 'c', c, x, H) end
    local unbatched = x:dim() == 1
    if unbatched then
      x, h = x:unsqueeze(0), h:unsqueeze(0)
      if c then c = c:unsqueeze(0) end
    end
    local bias, hbias = input_bias(mode, b_ih, b_hh)
    h, c = steps[mode](project(x, w_ih, bias), h, c, w_hh:t(), hbias)
    if unbatched then
      h = h:squeeze(0)
      if c then c = c:squeeze(0) end
    end
    return h, c
  end

  function F.rnn_tanh_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    return (cell_step('rnn_tanh_cell', 'RNN_TANH', x, h, nil, w_ih, w_hh, b_ih, b_hh))
  end
  function F.rnn_relu_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    return (cell_step('rnn_relu_cell', 'RNN_RELU', x, h, nil, w_ih, w_hh, b_ih, b_hh))
  end
  function F.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    return (cell_step('gru_cell', 'GRU', x, h, nil, w_ih, w_hh, b_ih, b_hh))
  end
  -- lstm_cell(x, {h, c}, ...) -> h, c
  function F.lstm_cell(x, hc, w_ih, w_hh, b_ih, b_hh)
    if hc ~= nil and (type(hc) ~= 'table' or lumen.is_tensor(hc)) then
      error('lumen.lstm_cell: the state must be a table {h, c}, got ' .. (lumen.is_tensor(hc) and 'a tensor' or type(hc)), 2)
    end
    hc = hc or {}
    return cell_step('lstm_cell', 'LSTM', x, hc[1], hc[2], w_ih, w_hh, b_ih, b_hh)
  end

  ---------------------------------------------------------------------------
  -- options

  local function positive_int(name, what, v)
    if type(v) ~= 'number' or v ~= math.floor(v) or v < 1 then
      error(fmt('lumen.%s: %s must be a positive integer, got %s', name, what, tostring(v)), 4)
    end
    return v
  end

  local function mode_of(name, nonlinearity)
    if name == 'LSTM' or name == 'LSTMCell' then return 'LSTM' end
    if name == 'GRU' or name == 'GRUCell' then return 'GRU' end
    nonlinearity = nonlinearity or 'tanh'
    if nonlinearity == 'tanh' then return 'RNN_TANH' end
    if nonlinearity == 'relu' then return 'RNN_RELU' end
    error(fmt("lumen.%s: nonlinearity must be 'tanh' or 'relu', got '%s'", name, tostring(nonlinearity)), 4)
  end

  -- uniform(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as torch.
  local function reset(m)
    local k = 1 / math.sqrt(m.hidden_size)
    for _, p in ipairs(m:parameters()) do nn.init.uniform_(p, -k, k) end
  end

  ---------------------------------------------------------------------------
  -- sequence modules

  -- Dropout on the outputs of every layer but the last (training only):
  -- zeros with probability p, the rest scaled by 1 / (1 - p), as torch.
  local function dropout(x, p)
    if p >= 1 then return x * 0 end
    local keep = lumen.empty(x:size(), x:dtype()):bernoulli_(1 - p)
    return x * (keep * (1 / (1 - p)))
  end

  local layer_opts = { num_layers = true, bias = true, batch_first = true, dropout = true, bidirectional = true }
  local rnn_opts = { nonlinearity = true }
  for k in pairs(layer_opts) do rnn_opts[k] = true end

  local function define_layer(name)
    local cls = nn.Module:extend(name)
    nn[name] = cls

    function cls:__init(input_size, hidden_size, opts)
      opts = core.options(opts, name, name == 'RNN' and rnn_opts or layer_opts, 3)
      self.mode = mode_of(name, opts.nonlinearity)
      self.input_size = positive_int(name, 'input_size', input_size)
      self.hidden_size = positive_int(name, 'hidden_size', hidden_size)
      self.num_layers = positive_int(name, 'num_layers', opts.num_layers or 1)
      self.bias = opts.bias ~= false
      self.batch_first = opts.batch_first == true
      self.bidirectional = opts.bidirectional == true
      self.dropout = opts.dropout or 0
      if type(self.dropout) ~= 'number' or self.dropout < 0 or self.dropout > 1 then
        error(fmt('lumen.%s: dropout must be a number in [0, 1], got %s', name, tostring(opts.dropout)), 3)
      end
      local G, H = gate_count[self.mode], self.hidden_size
      local D = self.bidirectional and 2 or 1
      for l = 0, self.num_layers - 1 do
        local fin = l == 0 and self.input_size or D * H
        for d = 0, D - 1 do
          local sfx = '_l' .. l .. (d == 1 and '_reverse' or '')
          self:param('weight_ih' .. sfx, lumen.empty(G * H, fin))
          self:param('weight_hh' .. sfx, lumen.empty(G * H, H))
          if self.bias then
            self:param('bias_ih' .. sfx, lumen.empty(G * H))
            self:param('bias_hh' .. sfx, lumen.empty(G * H))
          end
        end
      end
      reset(self)
    end

    function cls:extra_repr()
      local s = fmt('%d, %d', self.input_size, self.hidden_size)
      if self.mode == 'RNN_RELU' then s = s .. ", nonlinearity='relu'" end
      if self.num_layers ~= 1 then s = s .. ', num_layers=' .. self.num_layers end
      if not self.bias then s = s .. ', bias=false' end
      if self.batch_first then s = s .. ', batch_first=true' end
      if self.dropout ~= 0 then s = s .. ', dropout=' .. self.dropout end
      if self.bidirectional then s = s .. ', bidirectional=true' end
      return s
    end

    -- The weights of layer l, direction d.
    function cls:_weights(l, d)
      local sfx = '_l' .. l .. (d == 1 and '_reverse' or '')
      return { w_ih = self['weight_ih' .. sfx], w_hh = self['weight_hh' .. sfx], b_ih = self['bias_ih' .. sfx],
        b_hh = self['bias_hh' .. sfx] }
    end

    -- A given initial state must be (D * num_layers) x N x H (no batch dim
    -- when the input is unbatched); nil gives zeros.
    function cls:_state(what, s, N, unbatched, dtype, device)
      local D = self.bidirectional and 2 or 1
      local want = { D * self.num_layers, N, self.hidden_size }
      if unbatched then want = { want[1], want[3] } end
      if s == nil then -- on the input's device
        s = lumen.zeros(want, dtype)
        if device and device ~= 'cpu' then s = s:to(device) end
      elseif not lumen.is_tensor(s) then
        error(fmt('lumen.%s: %s must be a tensor, got %s', name, what, type(s)), 4)
      elseif shape_str(s) ~= table.concat(want, 'x') then
        error(fmt('lumen.%s: %s has shape %s, expected %s (num_layers*directions x %shidden_size)', name, what,
          shape_str(s), table.concat(want, 'x'), unbatched and '' or 'batch x '), 4)
      elseif s:dtype() ~= dtype then
        error(fmt('lumen.%s: %s is %s but the input is %s, expected one dtype', name, what, s:dtype(), dtype), 4)
      end
      if unbatched then s = s:unsqueeze(1) end
      return s
    end

    function cls:forward(x, hx)
      if not lumen.is_tensor(x) then error(fmt('lumen.%s: input must be a tensor, got %s', name, type(x)), 2) end
      local nd = x:dim()
      if nd ~= 2 and nd ~= 3 then
        error(fmt('lumen.%s: input has shape %s, expected 3-D (%s x input_size) or 2-D (seq x input_size, unbatched)',
          name, shape_str(x), self.batch_first and 'batch x seq' or 'seq x batch'), 2)
      end
      local fin = x:size(nd - 1)
      if fin ~= self.input_size then
        error(fmt('lumen.%s: input of shape %s has %d features, expected input_size %d', name, shape_str(x), fin,
          self.input_size), 2)
      end
      local w0 = self.weight_ih_l0
      if x:dtype() ~= w0:dtype() then
        error(fmt("lumen.%s: input is %s but the weights are %s, expected one dtype (m:to('%s') converts the module)",
          name, x:dtype(), w0:dtype(), x:dtype()), 2)
      end
      local unbatched = nd == 2
      -- an unbatched sequence runs as a batch of one, time-major
      local tdim = (self.batch_first and not unbatched) and 1 or 0
      if unbatched then x = x:unsqueeze(1) end
      local T, N = x:size(tdim), x:size(1 - tdim)
      if T == 0 then error(fmt('lumen.%s: input of shape %s has no time steps', name, shape_str(x)), 2) end
      local is_lstm = self.mode == 'LSTM'
      local h0, c0
      if is_lstm then
        if hx ~= nil and (type(hx) ~= 'table' or lumen.is_tensor(hx)) then
          error(fmt('lumen.%s: the initial state must be a table {h0, c0}, got %s', name,
            lumen.is_tensor(hx) and 'a tensor' or type(hx)), 2)
        end
        if hx ~= nil and (hx[1] == nil) ~= (hx[2] == nil) then
          error(fmt('lumen.%s: the initial state needs both h0 and c0', name), 2)
        end
        hx = hx or {}
        h0 = self:_state('h0', hx[1], N, unbatched, x:dtype(), x:device())
        c0 = self:_state('c0', hx[2], N, unbatched, x:dtype(), x:device())
      else
        h0 = self:_state('h0', hx, N, unbatched, x:dtype(), x:device())
      end
      local D = self.bidirectional and 2 or 1
      local hn, cn = {}, {}
      for l = 0, self.num_layers - 1 do
        if l > 0 and self.dropout > 0 and self.training then x = dropout(x, self.dropout) end
        local outs = {}
        for d = 0, D - 1 do
          local k = l * D + d
          local c = is_lstm and c0:select(0, k) or nil
          local out, h
          out, h, c = run_direction(self.mode, x, tdim, h0:select(0, k), c, self:_weights(l, d), d == 1)
          outs[d + 1], hn[k + 1], cn[k + 1] = out, h, c
        end
        x = D == 1 and outs[1] or lumen.cat(outs, 2)
      end
      local h_n = lumen.stack(hn, 0)
      local c_n = is_lstm and lumen.stack(cn, 0) or nil
      if unbatched then
        x = x:squeeze(1)
        h_n = h_n:squeeze(1)
        if c_n then c_n = c_n:squeeze(1) end
      end
      if is_lstm then return x, { h_n, c_n } end
      return x, h_n
    end
  end

  define_layer('RNN')
  define_layer('LSTM')
  define_layer('GRU')

  ---------------------------------------------------------------------------
  -- cell modules

  local function define_cell(name, fn)
    local cls = nn.Module:extend(name)
    nn[name] = cls

    function cls:__init(input_size, hidden_size, opts)
      opts = core.options(opts, name, name == 'RNNCell' and { bias = true, nonlinearity = true } or { bias = true }, 3)
      self.mode = mode_of(name, opts.nonlinearity)
      self.input_size = positive_int(name, 'input_size', input_size)
      self.hidden_size = positive_int(name, 'hidden_size', hidden_size)
      self.bias = opts.bias ~= false
      local GH = gate_count[self.mode] * self.hidden_size
      self:param('weight_ih', lumen.empty(GH, self.input_size))
      self:param('weight_hh', lumen.empty(GH, self.hidden_size))
      if self.bias then
        self:param('bias_ih', lumen.empty(GH))
        self:param('bias_hh', lumen.empty(GH))
      end
      reset(self)
    end

    function cls:extra_repr()
      local s = fmt('%d, %d', self.input_size, self.hidden_size)
      if not self.bias then s = s .. ', bias=false' end
      if self.mode == 'RNN_RELU' then s = s .. ", nonlinearity='relu'" end
      return s
    end

    function cls:forward(x, hx)
      if self.mode == 'LSTM' then
        if hx ~= nil and (type(hx) ~= 'table' or lumen.is_tensor(hx)) then
          error(fmt('lumen.%s: the state must be a table {h, c}, got %s', name,
            lumen.is_tensor(hx) and 'a tensor' or type(hx)), 2)
        end
        hx = hx or {}
        return cell_step(name, 'LSTM', x, hx[1], hx[2], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
      end
      return (cell_step(name, self.mode, x, hx, nil, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh))
    end
  end

  define_cell('RNNCell')
  define_cell('LSTMCell')
  define_cell('GRUCell')
end
