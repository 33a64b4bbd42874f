-- conv.lua: convolutions and transposed convolutions over 1, 2 or 3
-- spatial dims (src/ops/conv.c), functional and as modules.
--   F.conv2d(x, w, b, {stride = 1, padding = 0, dilation = 1, groups = 1})
--     x: N x Cin x H x W (or unbatched Cin x H x W), w: Cout x Cin/groups x kH x kW,
--     b: nil or Cout values. stride, padding, dilation: a number or one per
--     spatial dim; padding may be 'valid' (none) or 'same' (stride 1 only;
--     an odd total padding puts the extra one at the far end, as torch does).
--   F.conv_transpose2d(x, w, b, {stride, padding, output_padding, dilation, groups})
--     w: Cin x Cout/groups x kH x kW.
--   nn.Conv2d(cin, cout, k, {stride=, padding=, dilation=, groups=, bias = true})
--   nn.ConvTranspose2d(cin, cout, k, {stride=, padding=, output_padding=, dilation=, groups=, bias = true})
-- and the same for 1d and 3d.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

return function(nn, lumen)
  local F = nn.F
  -- Parameter arrays handed to C (copied there at once, so they are shared).
  local stride_, lo_, hi_, dil_, outpad_ = ffi.new('int64_t[3]'), ffi.new('int64_t[3]'), ffi.new('int64_t[3]'),
    ffi.new('int64_t[3]'), ffi.new('int64_t[3]')

  -- Errors point at the user's call: level 4 from conv() (fail, conv,
  -- F.convNd, user); the checkers called in conv() and in the module
  -- constructors (called by the class) take level 3.
  local function fail(op, msg) error('lumen.' .. op .. ': ' .. msg, 4) end

  local function fill(arr, list)
    for d = 1, #list do arr[d - 1] = list[d] end
  end

  -- Runs a C conv function; on failure its message is raised under op.
  local function run(op, fn, ...)
    local out = core.out1
    out[0] = nil
    local st = fn(ctx, ...)
    if st == C.LM_E_OOM then -- collect dead tensors, return the cache and retry once
      collectgarbage('collect')
      C.lm_mem_empty_cache(ctx)
      C.lm_ctx_clear_error(ctx)
      out[0] = nil
      st = fn(ctx, ...)
    end
    if st ~= 0 then core.fail_as(op, 4) end -- run, conv, F.convNd, user
    return core.wrap(out[0])
  end

  -- hx, hw, hb: handles of the input, weight (w itself too) and bias.
  local function conv(op, nsp, hx, hw, hb, w, opts)
    opts = core.options(opts, op, { 'stride', 'padding', 'dilation', 'groups' }, 3)
    local stride = core.int_tuple(opts.stride or 1, nsp, op, 'stride', 3)
    local dil = core.int_tuple(opts.dilation or 1, nsp, op, 'dilation', 3)
    local groups = opts.groups or 1
    if type(groups) ~= 'number' or groups ~= math.floor(groups) then
      fail(op, 'groups must be an integer, got ' .. tostring(groups))
    end
    local lo, hi
    local padding = opts.padding or 0
    if padding == 'valid' then
      lo = core.int_tuple(0, nsp, op, 'padding', 3)
      hi = lo
    elseif padding == 'same' then
      for d = 1, nsp do
        if stride[d] ~= 1 then
          fail(op, string.format("padding 'same' needs stride 1, got stride %s", table.concat(stride, ', ')))
        end
      end
      -- the kernel's span minus one, split with the odd one at the far end
      lo, hi = {}, {}
      local ws = w:size()
      for d = 1, nsp do
        local total = #ws == nsp + 2 and dil[d] * (ws[d + 2] - 1) or 0
        lo[d] = math.floor(total / 2)
        hi[d] = total - lo[d]
      end
    elseif type(padding) == 'string' then
      fail(op, string.format("padding '%s' is not one of 'same' or 'valid' (or integers)", padding))
    else
      lo = core.int_tuple(padding, nsp, op, 'padding', 3)
      hi = lo
    end
    fill(stride_, stride)
    fill(lo_, lo)
    fill(hi_, hi)
    fill(dil_, dil)
    local y = run(op, C.lm_conv, hx, hw, hb, nsp, stride_, lo_, hi_, dil_, groups, core.out1)
    return y
  end

  local function conv_transpose(op, nsp, hx, hw, hb, opts)
    opts = core.options(opts, op, { 'stride', 'padding', 'output_padding', 'dilation', 'groups' }, 3)
    local groups = opts.groups or 1
    if type(groups) ~= 'number' or groups ~= math.floor(groups) then
      fail(op, 'groups must be an integer, got ' .. tostring(groups))
    end
    fill(stride_, core.int_tuple(opts.stride or 1, nsp, op, 'stride', 3))
    fill(lo_, core.int_tuple(opts.padding or 0, nsp, op, 'padding', 3))
    fill(outpad_, core.int_tuple(opts.output_padding or 0, nsp, op, 'output_padding', 3))
    fill(dil_, core.int_tuple(opts.dilation or 1, nsp, op, 'dilation', 3))
    local y = run(op, C.lm_conv_transpose, hx, hw, hb, nsp, stride_, lo_, outpad_, dil_, groups, core.out1)
    return y
  end

  for nsp = 1, 3 do
    local name, tname = 'conv' .. nsp .. 'd', 'conv_transpose' .. nsp .. 'd'
    F[name] = function(x, w, b, opts)
      local hx, hw = core.handle(x, name, 'input'), core.handle(w, name, 'weight')
      local hb = b ~= nil and core.handle(b, name, 'bias') or nil
      local y = conv(name, nsp, hx, hw, hb, w, opts)
      return y
    end
    F[tname] = function(x, w, b, opts)
      local hx, hw = core.handle(x, tname, 'input'), core.handle(w, tname, 'weight')
      local hb = b ~= nil and core.handle(b, tname, 'bias') or nil
      local y = conv_transpose(tname, nsp, hx, hw, hb, opts)
      return y
    end
  end

  ---------------------------------------------------------------------------
  -- modules

  -- "(3, 3)" as torch prints a tuple; "(3,)" for one value.
  local function tuple_repr(t)
    if #t == 1 then return '(' .. t[1] .. ',)' end
    return '(' .. table.concat(t, ', ') .. ')'
  end
  local function all_equal(t, v)
    for _, x in ipairs(t) do if x ~= v then return false end end
    return true
  end

  local function conv_class(name, nsp, transposed)
    local cls = nn.Module:extend(name)
    nn[name] = cls
    local fname = (transposed and 'conv_transpose' or 'conv') .. nsp .. 'd'
    local known = { 'stride', 'padding', 'dilation', 'groups', 'bias', 'padding_mode',
      transposed and 'output_padding' or nil }
    function cls:__init(cin, cout, k, opts)
      local function bad(msg) error('lumen.' .. name .. ': ' .. msg, 4) end
      opts = core.options(opts, name, known, 3)
      for _, v in ipairs { { cin, 'in_channels' }, { cout, 'out_channels' } } do
        if type(v[1]) ~= 'number' or v[1] ~= math.floor(v[1]) or v[1] < 1 then
          bad(string.format('%s must be a positive integer, got %s', v[2], tostring(v[1])))
        end
      end
      local groups = opts.groups or 1
      if type(groups) ~= 'number' or groups ~= math.floor(groups) or groups < 1 then
        bad('groups must be a positive integer, got ' .. tostring(groups))
      end
      if cin % groups ~= 0 or cout % groups ~= 0 then
        bad(string.format('in_channels %d and out_channels %d must both be divisible by groups %d', cin, cout, groups))
      end
      if opts.padding_mode ~= nil and opts.padding_mode ~= 'zeros' then
        bad(string.format("padding_mode '%s' is not supported (only 'zeros')", tostring(opts.padding_mode)))
      end
      self.in_channels, self.out_channels, self.groups = cin, cout, groups
      self.kernel_size = core.int_tuple(k, nsp, name, 'kernel_size', 3)
      self.stride = core.int_tuple(opts.stride or 1, nsp, name, 'stride', 3)
      self.dilation = core.int_tuple(opts.dilation or 1, nsp, name, 'dilation', 3)
      local p = opts.padding or 0
      self.padding = (p == 'same' or p == 'valid') and p or core.int_tuple(p, nsp, name, 'padding', 3)
      if transposed then
        if type(self.padding) == 'string' then bad("padding must be integers, not '" .. self.padding .. "'") end
        self.output_padding = core.int_tuple(opts.output_padding or 0, nsp, name, 'output_padding', 3)
      end
      local shape = transposed and { cin, cout / groups } or { cout, cin / groups }
      for d = 1, nsp do shape[d + 2] = self.kernel_size[d] end
      self:param('weight', lumen.empty(shape))
      self:param('bias', opts.bias ~= false and lumen.empty(cout) or nil)
      nn.init.default_(self.weight, self.bias)
    end
    function cls:forward(x)
      return F[fname](x, self.weight, self.bias, { stride = self.stride, padding = self.padding,
        dilation = self.dilation, groups = self.groups, output_padding = self.output_padding })
    end
    function cls:extra_repr()
      local s = string.format('%d, %d, kernel_size=%s, stride=%s', self.in_channels, self.out_channels,
        tuple_repr(self.kernel_size), tuple_repr(self.stride))
      if type(self.padding) == 'string' then s = s .. ", padding='" .. self.padding .. "'"
      elseif not all_equal(self.padding, 0) then s = s .. ', padding=' .. tuple_repr(self.padding) end
      if not all_equal(self.dilation, 1) then s = s .. ', dilation=' .. tuple_repr(self.dilation) end
      if self.output_padding and not all_equal(self.output_padding, 0) then
        s = s .. ', output_padding=' .. tuple_repr(self.output_padding)
      end
      if self.groups ~= 1 then s = s .. ', groups=' .. self.groups end
      if not self.bias then s = s .. ', bias=False' end
      return s
    end
  end

  for nsp = 1, 3 do
    conv_class('Conv' .. nsp .. 'd', nsp, false)
    conv_class('ConvTranspose' .. nsp .. 'd', nsp, true)
  end
end
