-- crf.lua: the Lua face of the crf plugin (plugins/crf/*.c, built to
-- build/plugins/crf.so): refining segmentations with graphical models.
--
--   local crf = require 'lumen.crf'      (lua/lumen/crf.lua loads this file)
--
--   crf.dense{probs = P, image = t1 or {t1, t2, ...}, spacing = {1, 1, 1},
--             smooth = {sigma_mm = 1, weight = 1},
--             bilateral = {sigma_mm = 5, sigma_int = 1, weight = 3},
--             iterations = 5, compat = 'potts', normalize = true, eps = 1e-6}
--       -> refined probabilities (K x spatial, P's dtype)
--     Mean-field inference in a fully connected CRF (Krähenbühl and Koltun
--     2011). P: K x W, K x H x W or K x D x H x W, probabilities over the
--     first dim (checked: 0..1, summing to 1). The unary energies are
--     -log(max(P, eps)). Kernels: smooth = w exp(-d^2 / 2 sigma^2) over
--     distances in mm, applied exactly (separable, truncated at 4 sigma);
--     bilateral = w exp(-d^2 / 2 sigma_mm^2 - sum_c dI_c^2 / 2 sigma_int_c^2)
--     on the permutohedral lattice (Adams et al. 2010; sums within a few
--     percent); either may be false. With normalize (the default) each
--     kernel's message is the kernel-weighted mean of the labels around a
--     voxel, itself included (as Krähenbühl's code), so a weight is in
--     logits whatever the sigmas; normalize = false gives the paper's sums
--     over the other voxels. sigma_int is in image units (1 suits z-scored
--     images), one number or one per channel. compat: 'potts' (1 between
--     different labels) or a K x K matrix (tensor or nested lists), mu(l, k)
--     = the cost of l next to k. image: tensors of the spatial shape, one
--     per channel, a C x spatial tensor, or lumen.image objects (whose
--     spacing is the default). The bilateral kernel is on when an image is
--     given.
--
--   crf.meanfield(logits, image, opts) -> logits
--     The differentiable op: logits N x K x spatial, image N x C x spatial
--     (nil: none); opts as crf.dense's plus compat (tensor K x K) and
--     weights (tensor of 2: smooth, bilateral). Gradients reach the logits,
--     compat and weights (CRF-as-RNN, Zheng et al. 2015: the unrolled
--     iterations, recomputed in the backward), through loss:backward().
--
--   crf.MeanField{labels = K, ndim = 3, spacing =, smooth =, bilateral =,
--                 iterations = 5, compat = 'potts', normalize = true,
--                 learn_compat = true, learn_weights = true}
--       an nn.Module: m(logits, image) -> logits; parameters compat (K x K)
--       and weights (2), trained end to end with the network (false: kept
--       as buffers).
--
--   crf.grid{probs = P (or unary = U), image =, spacing =, neighbours = 6,
--            lambda = 1, beta = nil, solver = 'graphcut' | 'expansion' | 'icm',
--            max_sweeps = 20, eps = 1e-6}  -> labels (i64 spatial), energy
--     A contrast-sensitive Potts MRF: E = sum_i U(x_i) + sum_(i,j) w_ij
--     [x_i ~= x_j], w_ij = lambda exp(-beta |I_i - I_j|^2) / dist_ij (mm),
--     beta = 1 / (2 mean |I_i - I_j|^2) over the edges unless given,
--     U = -log(max(P, eps)); without an image w_ij = lambda / dist_ij.
--     neighbours: 2 in 1-D, 4 or 8 in 2-D, 6, 18 or 26 in 3-D. graphcut:
--     two labels, exact (our Boykov-Kolmogorov max-flow); expansion:
--     alpha-expansion (Boykov, Veksler and Zabih); icm: ICM. Both start from
--     the labels of least cost. The default solver is graphcut for two
--     labels, expansion otherwise.
--   crf.grid_energy{..., labels = x} -> the energy of a labelling
--
--   crf.lattice_filter(features, values) -> N x V: sum_j exp(-|fi - fj|^2
--     / 2) v_j over N points with features N x d (divide by the sigmas
--     first), on the permutohedral lattice; differentiable in values.
--   crf.potts(K) -> the K x K Potts compatibility (f32)
--
-- Errors name the function ("lumen.crf.dense: ...") and point at the
-- caller's line. The plugin's ops (lumen.load_plugin('crf')) are described
-- in plugins/crf/crf.c.
local lumen = require 'lumen'
local nn = require 'lumen.nn'

local crf = {}

local plugin
local function ops()
  plugin = plugin or lumen.load_plugin('crf')
  return plugin
end

local function fail(op, fmt, ...)
  error(string.format('lumen.crf.' .. op .. ': ' .. fmt, ...), 0)
end

local function pack(...) return { n = select('#', ...), ... } end

-- A public function: errors (its own and the plugin's) name it and point
-- at the caller's line.
local function public(name, impl)
  return function(...)
    local res = pack(pcall(impl, ...))
    if res[1] then return unpack(res, 2, res.n) end
    local err = res[2]
    if type(err) == 'string' then
      local bare = err:gsub('^[^\n]-:%d+: (lumen[.:])', '%1', 1)
      if bare:find('^lumen[.:]') then
        bare = bare:gsub('^lumen%.crf_[%w_]+: ', 'lumen.crf.' .. name .. ': ', 1)
        error(bare, 2)
      end
    end
    error(err, 0)
  end
end

local function options(op, opts, known)
  if type(opts) ~= 'table' or lumen.is_tensor(opts) then
    fail(op, 'expected a table of options {%s}, got %s', table.concat(known, ', '), lumen.is_tensor(opts) and 'a tensor' or type(opts))
  end
  local set = {}
  for _, k in ipairs(known) do set[k] = true end
  for k in pairs(opts) do
    if not set[k] then fail(op, "unknown option '%s' (expected %s)", tostring(k), table.concat(known, ', ')) end
  end
  return opts
end

local function is_float(t) return t:dtype() == 'f32' or t:dtype() == 'f64' end
local function shape_str(t) return table.concat(t:size(), 'x') end
local function positive(op, what, v)
  if type(v) ~= 'number' or v ~= v or v == math.huge then fail(op, '%s must be a number, got %s', what, tostring(v)) end
  if v <= 0 then fail(op, '%s is %s, expected a positive number', what, tostring(v)) end
  return v
end
local function number(op, what, v, default)
  if v == nil then return default end
  if type(v) ~= 'number' or v ~= v or math.abs(v) == math.huge then fail(op, '%s must be a finite number, got %s', what, tostring(v)) end
  return v
end
local function integer(op, what, v, default, lo, hi)
  if v == nil then return default end
  if type(v) ~= 'number' or v ~= math.floor(v) or v < lo or v > hi then
    fail(op, '%s must be an integer from %d to %d, got %s', what, lo, hi, tostring(v))
  end
  return v
end

local function spatial_size(t, lead)
  local s = t:size()
  local out = {}
  for i = lead + 1, #s do out[#out + 1] = s[i] end
  return out
end
local function same(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

local function is_image(x) return type(x) == 'table' and lumen.is_tensor(x.data) and type(x.affine) == 'table' end

-- The image as a C x spatial tensor (nil when none) and the spacing it
-- suggests (from lumen.image objects).
local function channels(op, image, spatial)
  if image == nil then return nil end
  local list = image
  if lumen.is_tensor(image) or is_image(image) then list = { image } end
  if type(list) ~= 'table' then fail(op, 'image must be a tensor, a lumen.image or a list of them, got %s', type(image)) end
  if #list == 0 then fail(op, 'image is an empty list') end
  local parts, spacing = {}, nil
  for i, c in ipairs(list) do
    if is_image(c) then
      spacing = spacing or c:spacing()
      c = c.data
    end
    if not lumen.is_tensor(c) then fail(op, 'image channel %d must be a tensor or a lumen.image, got %s', i, type(c)) end
    if not is_float(c) then c = c:to('f32') end
    local s = c:size()
    if same(s, spatial) then
      parts[#parts + 1] = c:unsqueeze(0)
    elseif #s == #spatial + 1 and same(spatial_size(c, 1), spatial) then
      parts[#parts + 1] = c
    else
      fail(op, 'image channel %d is %s, expected %s like the probabilities (one channel) or C x %s',
        i, shape_str(c), table.concat(spatial, 'x'), table.concat(spatial, 'x'))
    end
    if parts[#parts]:dtype() ~= parts[1]:dtype() then parts[#parts] = parts[#parts]:to(parts[1]:dtype()) end
  end
  local img = #parts == 1 and parts[1] or lumen.cat(parts, 0)
  return img:contiguous(), spacing
end

local function spacing_of(op, spacing, ndim, suggested)
  if spacing == nil then
    local s = {}
    for a = 1, ndim do s[a] = suggested and suggested[a] or 1 end
    return s
  end
  if type(spacing) == 'number' then spacing = { spacing } end
  if type(spacing) ~= 'table' then fail(op, 'spacing must be a list of %d numbers (mm), got %s', ndim, type(spacing)) end
  if #spacing ~= ndim then
    fail(op, 'spacing has %d values but the volume has %d spatial dims', #spacing, ndim)
  end
  for a = 1, ndim do positive(op, string.format('spacing[%d]', a), spacing[a]) end
  return spacing
end

-- Checks that P holds probabilities over its first dim (shape_only: the
-- values are left to the caller).
local function check_probs(op, P, what, shape_only)
  what = what or 'probs'
  if not lumen.is_tensor(P) then fail(op, '%s must be a tensor, got %s', what, type(P)) end
  if not is_float(P) then fail(op, '%s must be f32 or f64, got %s', what, P:dtype()) end
  if P:dim() < 2 or P:dim() > 4 then
    fail(op, '%s are %s, expected labels x spatial (2-D: K x H x W, 3-D: K x D x H x W)', what, shape_str(P))
  end
  if P:size(0) < 2 then fail(op, '%s have %d label(s), expected at least 2 along the first dim', what, P:size(0)) end
  if shape_only then return end
  local lo, hi = P:min():item(), P:max():item()
  if lo ~= lo or hi ~= hi then fail(op, '%s are not probabilities: they hold NaN', what) end
  if lo < -1e-4 or hi > 1 + 1e-4 then
    fail(op, '%s are not probabilities: values range from %.4g to %.4g (expected 0 to 1; pass softmax outputs, not logits)', what, lo, hi)
  end
  local s = P:sum(0)
  local slo, shi = s:min():item(), s:max():item()
  if math.abs(slo - 1) > 1e-3 or math.abs(shi - 1) > 1e-3 then
    fail(op, '%s are not probabilities: they sum to %.4g..%.4g over the %d labels (dim 0), expected 1', what, slo, shi, P:size(0))
  end
end

local function compat_of(op, compat, K, dtype)
  if compat == nil or compat == 'potts' then return crf.potts(K):to(dtype) end
  local t = compat
  if type(compat) == 'table' and not lumen.is_tensor(compat) then
    local ok, res = pcall(lumen.tensor, compat, dtype)
    if not ok then fail(op, 'compat must be \'potts\' or a %dx%d matrix', K, K) end
    t = res
  end
  if not lumen.is_tensor(t) then fail(op, "compat must be 'potts' or a %dx%d matrix, got %s", K, K, tostring(compat)) end
  if t:dim() ~= 2 or t:size(0) ~= K or t:size(1) ~= K then
    fail(op, 'compat is %s, expected %dx%d (labels x labels)', shape_str(t), K, K)
  end
  if not is_float(t) then t = t:to(dtype) end
  return t
end

function crf.potts(K)
  if type(K) ~= 'number' or K < 1 or K ~= math.floor(K) then error('lumen.crf.potts: K must be a positive integer, got ' .. tostring(K), 2) end
  return lumen.ones(K, K) - lumen.eye(K)
end

-- The kernel settings as the op's params: use flags, sigmas, the
-- per-channel intensity sigmas; C = channels of the image (0: none).
local function kernel_settings(op, opts, C, defaults)
  local smooth, bil = opts.smooth, opts.bilateral
  if smooth == nil then smooth = defaults.smooth end
  if bil == nil then bil = C > 0 and defaults.bilateral or false end
  local s = { use_s = false, use_b = false, sigma_s = 1, sigma_b = 1, w_s = 0, w_b = 0, sigma_int = {} }
  if smooth then
    if type(smooth) ~= 'table' then fail(op, 'smooth must be a table {sigma_mm =, weight =} or false, got %s', type(smooth)) end
    options(op, smooth, { 'sigma_mm', 'weight' })
    s.use_s = true
    s.sigma_s = positive(op, 'smooth.sigma_mm', smooth.sigma_mm == nil and defaults.smooth.sigma_mm or smooth.sigma_mm)
    s.w_s = number(op, 'smooth.weight', smooth.weight, defaults.smooth.weight)
  end
  if bil then
    if type(bil) ~= 'table' then fail(op, 'bilateral must be a table {sigma_mm =, sigma_int =, weight =} or false, got %s', type(bil)) end
    options(op, bil, { 'sigma_mm', 'sigma_int', 'weight' })
    if C == 0 then fail(op, 'the bilateral kernel needs an image (give image = ..., or bilateral = false)') end
    s.use_b = true
    s.sigma_b = positive(op, 'bilateral.sigma_mm', bil.sigma_mm == nil and defaults.bilateral.sigma_mm or bil.sigma_mm)
    s.w_b = number(op, 'bilateral.weight', bil.weight, defaults.bilateral.weight)
    local si = bil.sigma_int == nil and defaults.bilateral.sigma_int or bil.sigma_int
    if type(si) == 'number' then
      for c = 1, C do s.sigma_int[c] = positive(op, 'bilateral.sigma_int', si) end
    elseif type(si) == 'table' and #si == C then
      for c = 1, C do s.sigma_int[c] = positive(op, string.format('bilateral.sigma_int[%d]', c), si[c]) end
    else
      fail(op, 'bilateral.sigma_int must be a number or a list of %d (one per image channel), got %s', C,
        type(si) == 'table' and ('a list of ' .. #si) or tostring(si))
    end
  end
  if not s.use_b then
    for c = 1, C do s.sigma_int[c] = 1 end -- unused, but the op takes one per channel
  end
  return s
end

local DEFAULTS = {
  smooth = { sigma_mm = 1, weight = 1 },
  bilateral = { sigma_mm = 5, sigma_int = 1, weight = 3 },
}

-- The params of crf_meanfield: eps > 0 when the input is probabilities,
-- probs to return probabilities.
local function mf_params(ndim, iters, ks, normalize, spacing, eps, probs)
  local p = { ndim, iters, ks.use_s, ks.use_b, normalize, eps or 0, probs or false, ks.sigma_s, ks.sigma_b }
  for a = 1, ndim do p[#p + 1] = spacing[a] end
  for _, v in ipairs(ks.sigma_int) do p[#p + 1] = v end
  return p
end

local DENSE_OPTS = { 'probs', 'image', 'spacing', 'smooth', 'bilateral', 'iterations', 'compat', 'normalize', 'eps' }

crf.dense = public('dense', function(opts)
  local op = 'dense'
  options(op, opts, DENSE_OPTS)
  local P = opts.probs
  if P == nil then fail(op, 'probs is required (labels x spatial probabilities)') end
  check_probs(op, P, 'probs', true) -- the values are checked in C, on the way in
  local K, ndim = P:size(0), P:dim() - 1
  local spatial = spatial_size(P, 1)
  local img, suggested = channels(op, opts.image, spatial)
  local C = img and img:size(0) or 0
  local spacing = spacing_of(op, opts.spacing, ndim, suggested)
  local ks = kernel_settings(op, opts, C, DEFAULTS)
  local iters = integer(op, 'iterations', opts.iterations, 5, 0, 1000)
  if opts.normalize ~= nil and type(opts.normalize) ~= 'boolean' then fail(op, 'normalize must be a boolean, got %s', type(opts.normalize)) end
  local normalize = opts.normalize ~= false
  local eps = number(op, 'eps', opts.eps, 1e-6)
  if eps <= 0 or eps >= 1 then fail(op, 'eps is %s, expected a number between 0 and 1', tostring(eps)) end
  local mu = compat_of(op, opts.compat, K, P:dtype())
  local image = img and img:unsqueeze(0) or lumen.zeros({ 1, 0, unpack(spatial) }, P:dtype())
  local weights = lumen.tensor({ ks.w_s, ks.w_b }, 'f64')
  local R = ops().crf_meanfield(P:unsqueeze(0), image, mu, weights, mf_params(ndim, iters, ks, normalize, spacing, eps, true))
  return R:select(0, 0)
end)

local MF_OPTS = { 'spacing', 'smooth', 'bilateral', 'iterations', 'compat', 'weights', 'normalize' }

crf.meanfield = public('meanfield', function(logits, image, opts)
  local op = 'meanfield'
  opts = options(op, opts or {}, MF_OPTS)
  if not lumen.is_tensor(logits) or not is_float(logits) then
    fail(op, 'logits must be an f32 or f64 tensor (N x K x spatial), got %s', lumen.is_tensor(logits) and logits:dtype() or type(logits))
  end
  if logits:dim() < 3 or logits:dim() > 5 then fail(op, 'logits are %s, expected N x K x spatial (1 to 3 spatial dims)', shape_str(logits)) end
  local N, K, ndim = logits:size(0), logits:size(1), logits:dim() - 2
  local spatial = spatial_size(logits, 2)
  if image ~= nil then
    if not lumen.is_tensor(image) then fail(op, 'image must be a tensor N x C x spatial, got %s', type(image)) end
    if image:dim() ~= logits:dim() or image:size(0) ~= N or not same(spatial_size(image, 2), spatial) then
      fail(op, 'image is %s but logits are %s: expected N x C x %s', shape_str(image), shape_str(logits), table.concat(spatial, 'x'))
    end
    if not is_float(image) then image = image:to('f32') end
  end
  local C = image and image:size(1) or 0
  local spacing = spacing_of(op, opts.spacing, ndim)
  local ks = kernel_settings(op, opts, C, DEFAULTS)
  local iters = integer(op, 'iterations', opts.iterations, 5, 0, 1000)
  local normalize = opts.normalize ~= false
  local mu = lumen.is_tensor(opts.compat) and opts.compat or compat_of(op, opts.compat, K, logits:dtype())
  local w = opts.weights
  if w == nil then
    w = lumen.tensor({ ks.w_s, ks.w_b }, logits:dtype())
  elseif not lumen.is_tensor(w) or w:numel() ~= 2 then
    fail(op, 'weights must be a tensor of 2 values (smooth, bilateral)')
  end
  image = image or lumen.zeros({ N, 0, unpack(spatial) }, logits:dtype())
  return ops().crf_meanfield(logits, image, mu, w, mf_params(ndim, iters, ks, normalize, spacing))
end)

-- crf.MeanField: the mean field as a layer with learnable compatibility
-- and kernel weights.
local MeanField = nn.Module:extend('MeanField')
crf.MeanField = MeanField

local MF_MODULE_OPTS = { 'labels', 'ndim', 'spacing', 'smooth', 'bilateral', 'iterations', 'compat', 'normalize',
  'learn_compat', 'learn_weights' }

function MeanField:__init(opts)
  local op = 'MeanField'
  local ok, err = pcall(function()
    options(op, opts, MF_MODULE_OPTS)
    self.labels = integer(op, 'labels', opts.labels, nil, 1, 4096)
    if not self.labels then fail(op, 'labels (the number of classes) is required') end
    self.ndim = integer(op, 'ndim', opts.ndim, opts.spacing and #opts.spacing or 3, 1, 3)
    self.spacing = spacing_of(op, opts.spacing, self.ndim)
    self.iterations = integer(op, 'iterations', opts.iterations, 5, 0, 1000)
    self.normalize = opts.normalize ~= false
    self.smooth, self.bilateral = opts.smooth, opts.bilateral
    -- validate the kernels now (with one image channel when bilateral)
    local ks = kernel_settings(op, { smooth = opts.smooth, bilateral = opts.bilateral }, opts.bilateral and 1 or 0,
      { smooth = DEFAULTS.smooth, bilateral = DEFAULTS.bilateral })
    local mu = compat_of(op, opts.compat, self.labels, 'f32')
    local w = lumen.tensor({ ks.w_s, ks.w_b }, 'f32')
    if opts.learn_compat == false then self:buffer('compat', mu) else self:param('compat', mu) end
    if opts.learn_weights == false then self:buffer('weights', w) else self:param('weights', w) end
  end)
  if not ok then error(err, 0) end
end

function MeanField:forward(logits, image)
  return crf.meanfield(logits, image, {
    spacing = self.spacing, smooth = self.smooth, bilateral = self.bilateral, iterations = self.iterations,
    normalize = self.normalize, compat = self.compat, weights = self.weights,
  })
end

function MeanField:extra_repr()
  return string.format('labels=%d, ndim=%d, iterations=%d', self.labels, self.ndim, self.iterations)
end

-- ---- grid MRFs ----

local SOLVERS = { graphcut = 0, expansion = 1, icm = 2 }
local GRID_OPTS = { 'probs', 'unary', 'image', 'spacing', 'neighbours', 'lambda', 'beta', 'solver', 'max_sweeps', 'eps', 'labels' }

-- The unary costs, image, params and the checked options of crf.grid.
local function grid_setup(op, opts)
  options(op, opts, GRID_OPTS)
  local U
  if opts.probs ~= nil and opts.unary ~= nil then fail(op, 'give probs or unary, not both') end
  local eps = number(op, 'eps', opts.eps, 1e-6)
  if eps <= 0 or eps >= 1 then fail(op, 'eps is %s, expected a number between 0 and 1', tostring(eps)) end
  if opts.probs ~= nil then
    check_probs(op, opts.probs)
    U = -lumen.log(lumen.clamp(opts.probs, eps, 1))
  elseif opts.unary ~= nil then
    U = opts.unary
    if not lumen.is_tensor(U) or not is_float(U) then fail(op, 'unary must be an f32 or f64 tensor (labels x spatial costs)') end
    if U:dim() < 2 or U:dim() > 4 or U:size(0) < 2 then fail(op, 'unary costs are %s, expected labels (at least 2) x spatial', shape_str(U)) end
  else
    fail(op, 'probs (or unary costs) are required')
  end
  local K, ndim = U:size(0), U:dim() - 1
  local spatial = spatial_size(U, 1)
  local img, suggested = channels(op, opts.image, spatial)
  local spacing = spacing_of(op, opts.spacing, ndim, suggested)
  local default_nb = ({ 2, 4, 6 })[ndim]
  local nb = opts.neighbours or default_nb
  local valid = ({ { [2] = true }, { [4] = true, [8] = true }, { [6] = true, [18] = true, [26] = true } })[ndim]
  if not valid[nb] then
    fail(op, 'neighbours is %s, expected %s in %d-D', tostring(nb), ({ '2', '4 or 8', '6, 18 or 26' })[ndim], ndim)
  end
  local lambda = number(op, 'lambda', opts.lambda, 1)
  if lambda < 0 then fail(op, 'lambda is %s, expected a number >= 0', tostring(lambda)) end
  local beta = number(op, 'beta', opts.beta, -1)
  if opts.beta ~= nil and beta < 0 then fail(op, 'beta is %s, expected a number >= 0 (or nil: from the image)', tostring(beta)) end
  local solver = opts.solver or (K == 2 and 'graphcut' or 'expansion')
  if SOLVERS[solver] == nil then fail(op, "solver is %s, expected 'graphcut', 'expansion' or 'icm'", tostring(solver)) end
  if solver == 'graphcut' and K ~= 2 then
    fail(op, "solver 'graphcut' solves two labels exactly; these have %d (use 'expansion')", K)
  end
  local sweeps = integer(op, 'max_sweeps', opts.max_sweeps, 20, 1, 1e6)
  local params = { ndim, nb, lambda, beta, SOLVERS[solver], sweeps }
  for a = 1, ndim do params[#params + 1] = spacing[a] end
  img = img or lumen.zeros({ 0, unpack(spatial) }, U:dtype())
  return U, img, params, spatial
end

crf.grid = public('grid', function(opts)
  local U, img, params = grid_setup('grid', opts)
  if opts.labels ~= nil then fail('grid', "labels is an option of crf.grid_energy") end
  local labels, energy = ops().crf_grid(U, img, params)
  return labels, energy:item()
end)

crf.grid_energy = public('grid_energy', function(opts)
  local U, img, params, spatial = grid_setup('grid_energy', opts)
  local x = opts.labels
  if not lumen.is_tensor(x) then fail('grid_energy', 'labels must be an integer tensor of the spatial shape, got %s', type(x)) end
  if x:dtype() ~= 'i64' and x:dtype() ~= 'i32' then x = x:to('i64') end
  if not same(x:size(), spatial) then
    fail('grid_energy', 'labels are %s, expected %s', shape_str(x), table.concat(spatial, 'x'))
  end
  return ops().crf_grid_energy(U, img, x, params):item()
end)

crf.lattice_filter = public('lattice_filter', function(features, values)
  return ops().crf_lattice_filter(features, values)
end)

return crf
