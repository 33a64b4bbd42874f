-- nn/resample.lua: interpolate (nearest, linear, bilinear, trilinear),
-- grid_sample and affine_grid as torch.nn.functional names them, and the
-- Upsample modules.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C, ctx = core.C, core.ctx

return function(nn, lumen)
  local F = nn.F
  local size_buf = ffi.new('int64_t[8]')
  local scale_buf = ffi.new('double[3]')

  local is_int, options, flag = core.is_int, core.options, core.flag

  -- A number or a list of n numbers as a Lua list; check(v) validates each.
  local function per_dim(v, n, op, what, check, expect)
    local list
    if type(v) == 'number' then
      list = {}
      for i = 1, n do list[i] = v end
    elseif type(v) == 'table' and #v == n then
      list = v
    else
      error(string.format('lumen.%s: %s must be %s or a list of %d, got %s', op, what, expect, n,
        type(v) == 'table' and ('a list of ' .. #v) or tostring(v)), 3)
    end
    for i = 1, n do
      if not check(list[i]) then
        error(string.format('lumen.%s: %s entry %d is %s, expected %s', op, what, i, tostring(list[i]), expect), 3)
      end
    end
    return list
  end

  ---------------------------------------------------------------------------
  -- interpolate(x, {size=, scale_factor=, mode='nearest', align_corners=,
  --   recompute_scale_factor=}): x is N x C x W, N x C x H x W or
  -- N x C x D x H x W. With scale_factor the output size is
  -- floor(in * scale_factor), and positions map back by the scale factor
  -- itself (unless recompute_scale_factor), as in PyTorch.
  local interp_known = { size = true, scale_factor = true, mode = true, align_corners = true,
    recompute_scale_factor = true }
  local linear_dims = { linear = 1, bilinear = 2, trilinear = 3 }
  local layouts = { 'N x C x W', 'N x C x H x W', 'N x C x D x H x W' }
  function F.interpolate(x, opts)
    local op = 'interpolate'
    local h = core.handle(x, op, 'input')
    opts = options(opts, op, interp_known)
    local mode = opts.mode or 'nearest'
    if mode ~= 'nearest' and not linear_dims[mode] then
      error(string.format("lumen.interpolate: mode '%s' is not supported, expected 'nearest', 'linear', 'bilinear' or 'trilinear'",
        tostring(mode)), 2)
    end
    local s = x:size()
    local nd = #s - 2
    if nd < 1 or nd > 3 then
      error(string.format('lumen.interpolate: input is %d-D (%s), expected 3-D (N x C x W), 4-D (N x C x H x W) or 5-D (N x C x D x H x W)',
        #s, #s > 0 and table.concat(s, 'x') or 'scalar'), 2)
    end
    if linear_dims[mode] and linear_dims[mode] ~= nd then
      local want = linear_dims[mode]
      error(string.format("lumen.interpolate: mode '%s' needs a %d-D input (%s), got %d-D", mode, want + 2, layouts[want], #s), 2)
    end
    local align = flag(opts.align_corners, op, 'align_corners', nil)
    if mode == 'nearest' and align ~= nil then
      error("lumen.interpolate: align_corners can only be set with mode 'linear', 'bilinear' or 'trilinear'", 2)
    end
    if (opts.size == nil) == (opts.scale_factor == nil) then
      error('lumen.interpolate: expected exactly one of size and scale_factor', 2)
    end
    local recompute = flag(opts.recompute_scale_factor, op, 'recompute_scale_factor', false)
    local scales = nil
    if opts.size ~= nil then
      local size = per_dim(opts.size, nd, op, 'size', function(v) return is_int(v) and v >= 1 end, 'a positive integer')
      for i = 1, nd do size_buf[i - 1] = size[i] end
    else
      local sf = per_dim(opts.scale_factor, nd, op, 'scale_factor',
        function(v) return type(v) == 'number' and v > 0 and v < math.huge end, 'a positive number')
      for i = 1, nd do
        local n = math.floor(s[2 + i] * sf[i])
        if n < 1 then
          error(string.format('lumen.interpolate: scale_factor %g makes spatial dim %d of size %d empty', sf[i], i - 1, s[2 + i]), 2)
        end
        size_buf[i - 1] = n
        scale_buf[i - 1] = sf[i]
      end
      if not recompute then scales = scale_buf end
    end
    local st = C.lm_upsample(ctx, h, size_buf, scales, mode == 'nearest' and C.LM_INTERP_NEAREST or C.LM_INTERP_LINEAR,
      align and 1 or 0, core.out1)
    if st ~= 0 then core.fail_as('interpolate', 2) end
    return core.wrap(core.out1[0])
  end
  F.upsample = F.interpolate

  ---------------------------------------------------------------------------
  -- grid_sample(x, grid, {mode='bilinear', padding_mode='zeros',
  --   align_corners=false}): x N x C x H x W with grid N x H' x W' x 2, or
  -- x N x C x D x H x W with grid N x D' x H' x W' x 3 (x, y, z in [-1, 1]).
  local grid_known = { mode = true, padding_mode = true, align_corners = true }
  local grid_modes = { bilinear = C.LM_INTERP_LINEAR, nearest = C.LM_INTERP_NEAREST }
  local pad_modes = { zeros = C.LM_GRID_PAD_ZEROS, border = C.LM_GRID_PAD_BORDER }
  function F.grid_sample(x, grid, opts)
    local op = 'grid_sample'
    local h = core.handle(x, op, 'input')
    local gh = core.handle(grid, op, 'grid')
    opts = options(opts, op, grid_known)
    local mode = grid_modes[opts.mode or 'bilinear']
    if not mode then
      error(string.format("lumen.grid_sample: mode '%s' is not supported, expected 'bilinear' or 'nearest'", tostring(opts.mode)), 2)
    end
    local pad = pad_modes[opts.padding_mode or 'zeros']
    if not pad then
      error(string.format("lumen.grid_sample: padding_mode '%s' is not supported, expected 'zeros' or 'border'",
        tostring(opts.padding_mode)), 2)
    end
    local align = flag(opts.align_corners, op, 'align_corners', false)
    local st = C.lm_grid_sample(ctx, h, gh, mode, pad, align and 1 or 0, core.out1)
    if st ~= 0 then core.fail(2) end
    return core.wrap(core.out1[0])
  end

  -- affine_grid(theta, size, {align_corners=false}): theta N x 2 x 3 with
  -- size {N, C, H, W}, or N x 3 x 4 with size {N, C, D, H, W}; a grid for
  -- grid_sample.
  function F.affine_grid(theta, size, opts)
    local op = 'affine_grid'
    local th = core.handle(theta, op, 'theta')
    opts = options(opts, op, { align_corners = true })
    if type(size) ~= 'table' or (#size ~= 4 and #size ~= 5) then
      error(string.format('lumen.affine_grid: size must be a list of 4 (N, C, H, W) or 5 (N, C, D, H, W) integers, got %s',
        type(size) == 'table' and ('a list of ' .. #size) or tostring(size)), 2)
    end
    for i = 1, #size do
      if not is_int(size[i]) then
        error(string.format('lumen.affine_grid: size entry %d is %s, expected an integer', i, tostring(size[i])), 2)
      end
      size_buf[i - 1] = size[i]
    end
    local align = flag(opts.align_corners, op, 'align_corners', false)
    return core.call(C.lm_affine_grid, th, #size, size_buf, align and 1 or 0, core.out1)
  end

  ---------------------------------------------------------------------------
  -- modules (torch.nn names)
  if not nn.Module then return end

  local function repr(v)
    if type(v) == 'table' then
      local s = {}
      for i, e in ipairs(v) do s[i] = tostring(e) end
      return '(' .. table.concat(s, ', ') .. ')'
    end
    return tostring(v)
  end

  -- Upsample({size=, scale_factor=, mode='nearest', align_corners=})
  local Upsample = nn.Module:extend('Upsample')
  nn.Upsample = Upsample
  function Upsample:__init(opts)
    opts = options(opts, 'Upsample', { size = true, scale_factor = true, mode = true, align_corners = true,
      recompute_scale_factor = true }, 3)
    self.size, self.scale_factor = opts.size, opts.scale_factor
    self.mode, self.align_corners = opts.mode or 'nearest', opts.align_corners
    self.recompute_scale_factor = opts.recompute_scale_factor
  end
  function Upsample:forward(x)
    return F.interpolate(x, { size = self.size, scale_factor = self.scale_factor, mode = self.mode,
      align_corners = self.align_corners, recompute_scale_factor = self.recompute_scale_factor })
  end
  function Upsample:extra_repr()
    local s = self.scale_factor ~= nil and ('scale_factor=' .. repr(self.scale_factor)) or ('size=' .. repr(self.size))
    return s .. ", mode='" .. self.mode .. "'"
  end

  -- UpsamplingNearest2d({size=, scale_factor=}), UpsamplingBilinear2d (align_corners = true)
  local Nearest = Upsample:extend('UpsamplingNearest2d')
  nn.UpsamplingNearest2d = Nearest
  function Nearest:__init(opts)
    opts = options(opts, 'UpsamplingNearest2d', { size = true, scale_factor = true }, 3)
    Upsample.__init(self, { size = opts.size, scale_factor = opts.scale_factor, mode = 'nearest' })
  end
  local Bilinear = Upsample:extend('UpsamplingBilinear2d')
  nn.UpsamplingBilinear2d = Bilinear
  function Bilinear:__init(opts)
    opts = options(opts, 'UpsamplingBilinear2d', { size = true, scale_factor = true }, 3)
    Upsample.__init(self, { size = opts.size, scale_factor = opts.scale_factor, mode = 'bilinear', align_corners = true })
  end
end
