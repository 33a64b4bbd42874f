-- linear.lua: Linear, Identity, Flatten.
return function(nn, lumen)
  local F = nn.F

  -- linear(x, w, b): x @ w^T + b over the last dimension of x.
  function F.linear(x, w, b)
    if not lumen.is_tensor(x) or not lumen.is_tensor(w) then error('lumen.linear: input and weight must be tensors', 2) end
    if w:dim() ~= 2 then error('lumen.linear: weight must be 2-D (out x in), got ' .. w:dim() .. '-D', 2) end
    local s = x:size()
    local fin = w:size(1)
    if #s == 0 or s[#s] ~= fin then
      error(string.format('lumen.linear: input %s has %s features, expected %d (weight %s)', table.concat(s, 'x'),
        tostring(s[#s]), fin, table.concat(w:size(), 'x')), 2)
    end
    if #s == 2 then
      if b then return lumen.addmm(b, x, w:t()) end
      return lumen.matmul(x, w:t())
    end
    local y = lumen.matmul(x:reshape(-1, fin), w:t())
    if b then y = y + b end
    s[#s] = w:size(0)
    return y:reshape(s)
  end

  local Linear = nn.Module:extend('Linear')
  nn.Linear = Linear
  -- Linear(in, out, {bias = true})
  function Linear:__init(fin, fout, opts)
    opts = lumen.core.options(opts, 'nn.Linear', { bias = true })
    fin = lumen.core.int_arg(fin, 'nn.Linear', 'in_features')
    fout = lumen.core.int_arg(fout, 'nn.Linear', 'out_features')
    self.in_features, self.out_features = fin, fout
    self:param('weight', lumen.empty(fout, fin))
    self:param('bias', opts.bias ~= false and lumen.empty(fout) or nil)
    nn.init.default_(self.weight, self.bias)
  end
  function Linear:forward(x) return F.linear(x, self.weight, self.bias) end
  function Linear:extra_repr()
    return string.format('%d, %d%s', self.in_features, self.out_features, self.bias and '' or ', bias=false')
  end

  local Identity = nn.Module:extend('Identity')
  nn.Identity = Identity
  function Identity:forward(x) return x end

  -- Flatten(start_dim = 1, end_dim = -1)
  function F.flatten(x, start_dim, end_dim)
    if not lumen.is_tensor(x) then error('lumen.flatten: input must be a tensor, got ' .. type(x), 2) end
    local s = x:size()
    local a = lumen.core.int_arg(start_dim, 'flatten', 'start_dim', 1)
    local b = lumen.core.int_arg(end_dim, 'flatten', 'end_dim', -1)
    if a < 0 then a = a + #s end
    if b < 0 then b = b + #s end
    if a < 0 or b >= #s or a > b then
      error(string.format('lumen.flatten: dims %s..%s out of range for a %d-D tensor', tostring(start_dim), tostring(end_dim), #s), 2)
    end
    local shape, n = {}, 1
    for d = 0, #s - 1 do
      if d < a or d > b then shape[#shape + 1] = s[d + 1]
      else
        n = n * s[d + 1]
        if d == b then shape[#shape + 1] = n end
      end
    end
    return x:reshape(shape)
  end
  local Flatten = nn.Module:extend('Flatten')
  nn.Flatten = Flatten
  function Flatten:__init(start_dim, end_dim) self.start_dim, self.end_dim = start_dim or 1, end_dim or -1 end
  function Flatten:forward(x) return F.flatten(x, self.start_dim, self.end_dim) end
end
