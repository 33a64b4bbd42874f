-- initializers.lua: nn.init, the weight initializations torch users know.
-- All work in place without recording and return the tensor.
return function(nn, lumen)
  local init = {}
  nn.init = init

  local function no_grad(fn) return function(t, ...) local a = { ... }; lumen.no_grad(function() fn(t, unpack(a, 1, 3)) end); return t end end

  -- fan_in, fan_out of a weight: dims 1 and 0 times the receptive field.
  function init.fans(t)
    local s = t:size()
    if #s < 2 then error('lumen.nn.init: fan in and fan out need a tensor of 2 or more dimensions, got ' .. #s, 3) end
    local rf = 1
    for d = 3, #s do rf = rf * s[d] end
    return s[2] * rf, s[1] * rf
  end

  function init.calculate_gain(nonlinearity, param)
    nonlinearity = nonlinearity or 'leaky_relu'
    if nonlinearity == 'linear' or nonlinearity == 'sigmoid' or nonlinearity:find('^conv') then return 1 end
    if nonlinearity == 'tanh' then return 5 / 3 end
    if nonlinearity == 'relu' then return math.sqrt(2) end
    if nonlinearity == 'leaky_relu' then
      local a = param or 0.01
      return math.sqrt(2 / (1 + a * a))
    end
    if nonlinearity == 'selu' then return 3 / 4 end
    error("lumen.nn.init: unknown nonlinearity '" .. tostring(nonlinearity) .. "'", 2)
  end

  local function fan_of(t, mode)
    local fin, fout = init.fans(t)
    if mode == nil or mode == 'fan_in' then return fin end
    if mode == 'fan_out' then return fout end
    error("lumen.nn.init: mode must be 'fan_in' or 'fan_out', got " .. tostring(mode), 4)
  end

  init.uniform_ = no_grad(function(t, a, b) t:uniform_(a or 0, b or 1) end)
  init.normal_ = no_grad(function(t, mean, std) t:normal_(mean or 0, std or 1) end)
  init.constant_ = no_grad(function(t, v) t:fill_(v) end)
  init.zeros_ = no_grad(function(t) t:fill_(0) end)
  init.ones_ = no_grad(function(t) t:fill_(1) end)

  -- opts: a (negative slope, 0), mode ('fan_in'), nonlinearity ('leaky_relu')
  init.kaiming_uniform_ = no_grad(function(t, opts)
    opts = opts or {}
    local gain = init.calculate_gain(opts.nonlinearity or 'leaky_relu', opts.a or 0)
    local bound = gain * math.sqrt(3 / fan_of(t, opts.mode))
    t:uniform_(-bound, bound)
  end)
  init.kaiming_normal_ = no_grad(function(t, opts)
    opts = opts or {}
    local gain = init.calculate_gain(opts.nonlinearity or 'leaky_relu', opts.a or 0)
    t:normal_(0, gain / math.sqrt(fan_of(t, opts.mode)))
  end)
  -- opts: gain (1)
  init.xavier_uniform_ = no_grad(function(t, opts)
    local fin, fout = init.fans(t)
    local bound = ((opts and opts.gain) or 1) * math.sqrt(6 / (fin + fout))
    t:uniform_(-bound, bound)
  end)
  init.xavier_normal_ = no_grad(function(t, opts)
    local fin, fout = init.fans(t)
    t:normal_(0, ((opts and opts.gain) or 1) * math.sqrt(2 / (fin + fout)))
  end)

  -- torch's default for Linear and Conv: kaiming_uniform_(a = sqrt(5)) on
  -- the weight, uniform(+-1/sqrt(fan_in)) on the bias.
  function init.default_(weight, bias)
    init.kaiming_uniform_(weight, { a = math.sqrt(5) })
    if bias then
      local fin = init.fans(weight)
      local bound = fin > 0 and 1 / math.sqrt(fin) or 0
      init.uniform_(bias, -bound, bound)
    end
  end
end
