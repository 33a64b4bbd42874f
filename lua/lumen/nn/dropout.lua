-- dropout.lua: dropout, and channel dropout for 1-D, 2-D and 3-D maps.
--
--   nn.F.dropout(x, p = 0.5, training = true[, inplace])
--   nn.F.dropout1d / dropout2d / dropout3d(x, p, training[, inplace]): whole
--     channels: x is (N, C, *spatial) or unbatched (C, *spatial), with 1, 2
--     or 3 spatial dims
--   nn.Dropout(p), nn.Dropout1d(p), nn.Dropout2d(p), nn.Dropout3d(p)
--     (p = 0.5, {inplace = false}); identity in eval mode
--
-- y = x * mask / (1 - p) with mask drawn by lumen.bernoulli_ (Philox), so a
-- run is reproducible with lumen.manual_seed; the gradient is mask / (1 - p)
-- through mul's backward. Torch's random stream is not reproduced.
return function(nn, lumen)
  local F = nn.F

  local function check_args(op, x, p, training, inplace)
    if not lumen.is_tensor(x) then error(string.format('lumen.%s: input must be a tensor, got %s', op, type(x)), 3) end
    if p == nil then p = 0.5 end
    if type(p) ~= 'number' or not (p >= 0 and p <= 1) then
      error(string.format('lumen.%s: dropout probability has to be between 0 and 1, got %s', op, tostring(p)), 3)
    end
    if training == nil then training = true end
    if type(training) ~= 'boolean' then
      error(string.format('lumen.%s: training must be a boolean, got %s', op, type(training)), 3)
    end
    if inplace ~= nil and type(inplace) ~= 'boolean' then
      error(string.format('lumen.%s: inplace must be a boolean, got %s', op, type(inplace)), 3)
    end
    local dt = x:dtype()
    if dt ~= 'f32' and dt ~= 'f64' then
      error(string.format('lumen.%s: input dtype %s, expected f32 or f64', op, dt), 3)
    end
    return p, training, inplace or false
  end

  -- x * mask, the mask of shape mshape already scaled by 1 / (1 - p).
  local function apply(op, x, p, mshape, inplace)
    -- drawn where x is (a seed gives the same mask on every device)
    local mask = lumen.empty(mshape, { dtype = x:dtype(), device = x:device() })
    if p == 1 then
      mask:fill_(0)
    else
      mask:bernoulli_(1 - p)
      mask:mul_(1 / (1 - p))
    end
    if inplace then
      if lumen.is_grad_enabled() and x.requires_grad then
        error('lumen.' .. op .. ': inplace = true cannot be tracked by autograd (the input requires grad), expected inplace = false', 3)
      end
      return x:mul_(mask)
    end
    return x * mask
  end

  -- dropout(x, p, training, inplace); a table {p =, training =, inplace =}
  -- may stand in for the arguments after x.
  local function unpack_opts(op, p, training, inplace)
    if type(p) ~= 'table' then return p, training, inplace end
    for k in pairs(p) do
      if k ~= 'p' and k ~= 'training' and k ~= 'inplace' then
        error(string.format("lumen.%s: unknown option '%s' (expected inplace, p, training)", op, tostring(k)), 3)
      end
    end
    return p.p, p.training, p.inplace
  end

  function F.dropout(x, p, training, inplace)
    p, training, inplace = unpack_opts('dropout', p, training, inplace)
    p, training, inplace = check_args('dropout', x, p, training, inplace)
    if not training or p == 0 then return x end
    return apply('dropout', x, p, x:size(), inplace)
  end

  -- Channel dropout over `spatial` trailing dims: one draw per (sample,
  -- channel), or per channel for an unbatched input.
  local function channel_dropout(op, spatial)
    return function(x, p, training, inplace)
      p, training, inplace = unpack_opts(op, p, training, inplace)
      p, training, inplace = check_args(op, x, p, training, inplace)
      local s = x:size()
      if #s ~= spatial + 1 and #s ~= spatial + 2 then
        error(string.format('lumen.%s: input is %d-D (%s), expected %d-D (C x spatial) or %d-D (N x C x spatial)', op, #s,
          #s == 0 and 'scalar' or table.concat(s, 'x'), spatial + 1, spatial + 2), 2)
      end
      if not training or p == 0 then return x end
      local mshape = {}
      for d = 1, #s do mshape[d] = d <= #s - spatial and s[d] or 1 end
      return apply(op, x, p, mshape, inplace)
    end
  end
  F.dropout1d = channel_dropout('dropout1d', 1)
  F.dropout2d = channel_dropout('dropout2d', 2)
  F.dropout3d = channel_dropout('dropout3d', 3)

  -- modules: Dropout(p = 0.5, {inplace = false}), also Dropout({p =, inplace =})
  for _, spec in ipairs { { 'Dropout', F.dropout }, { 'Dropout1d', F.dropout1d }, { 'Dropout2d', F.dropout2d },
    { 'Dropout3d', F.dropout3d } } do
    local name, fn = spec[1], spec[2]
    local cls = nn.Module:extend(name)
    nn[name] = cls
    function cls:__init(p, opts)
      if type(p) == 'table' then p, opts = p.p, { inplace = p.inplace } end
      if p == nil then p = 0.5 end
      if type(p) ~= 'number' or not (p >= 0 and p <= 1) then
        error(string.format('lumen.nn.%s: dropout probability has to be between 0 and 1, got %s', name, tostring(p)), 3)
      end
      opts = opts or {}
      if type(opts) ~= 'table' then error(string.format('lumen.nn.%s: options must be a table, got %s', name, type(opts)), 3) end
      for k in pairs(opts) do
        if k ~= 'inplace' then error(string.format("lumen.nn.%s: unknown option '%s' (expected inplace)", name, tostring(k)), 3) end
      end
      self.p, self.inplace = p, opts.inplace or false
    end
    function cls:forward(x) return fn(x, self.p, self.training, self.inplace) end
    function cls:extra_repr() return string.format('p=%g%s', self.p, self.inplace and ', inplace=true' or '') end
  end
end
