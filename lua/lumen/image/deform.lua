-- image/deform.lua: smooth random diffeomorphic deformations (image.deform).
--
--   local deform = require('lumen.image').deform
--   local u, v = deform.random_field{shape = {96, 96, 64}, spacing_vox = 16,
--     magnitude = 6, seed = 1, steps = 7}
--   local warped = deform.apply(img, u, {order = 1})   -- labels: order = 0
--
-- A displacement field is a tensor (nd, s1, ..., s_nd) for an image of
-- spatial shape (s1, ..., s_nd) in the image's index order (i, j, k), 2-D
-- or 3-D: component c is the displacement along index dim c, in voxels.
-- The map it stands for is phi(x) = x + u(x), and warping pulls back:
-- warped(x) = img(phi(x)), so the geometry (affine) does not change.
--
-- random_field draws a stationary velocity v: cubic B-spline coefficients
-- on a control grid spacing_vox voxels apart, standard normal per
-- component, evaluated on the voxels (C2-smooth) and scaled so that the
-- largest |v_c| is magnitude voxels. It returns u = exp(v), integrated by
-- scaling and squaring: u = v / 2^steps, then steps times u <- u + u o (x + u)
-- (linear sampling, border padding). A smooth v with v / 2^steps much
-- smaller than a voxel per voxel gives a map with a positive Jacobian
-- everywhere, however large the magnitude, and exp(-v) is its inverse:
-- the plain field u = v of the same size folds (negative Jacobian) once
-- its derivatives pass 1.
--
--   deform.random_velocity{shape=, spacing_vox=, magnitude=, seed=, dtype=}
--   deform.integrate(v, {steps = 7})     scaling and squaring of a velocity
--   deform.compose(a, b)                 the field of phi_a o phi_b:
--                                        x + b(x) + a(x + b(x))
--   deform.sample(t, u, {order =, padding =})  t (C, s...) at x + u(x)
--   deform.apply(img or tensor, u, {order = 1, padding = 'border'})
--   deform.jacobian_det(u)               det(I + grad u) by central
--                                        differences, interior voxels
--                                        (each dim 2 shorter)
--   deform.bspline(coeffs, shape, spacing_vox)  cubic B-spline evaluation
--   deform.rigid_field_for(img, {rotate_deg =, shift_mm =, seed =})  a head motion
--
-- Seeds: the draws use lumen's Philox generator with the given seed; the
-- caller's generator state is saved and restored around them.
-- Sampling goes through nn.F.grid_sample with align_corners = true
-- (normalised -1..1 spans the first to the last voxel centre).
local core = require 'lumen.core'

return function(image, lumen)
  local deform = {}
  image.deform = deform
  local floor = math.floor

  local function fail(fn, fmt, ...) error(string.format('lumen.image.deform.' .. fn .. ': ' .. fmt, ...), 3) end

  -- level 3: the error points at the caller of the public function
  local function check_opts(fn, opts, known) return core.options(opts, 'image.deform.' .. fn, known, 3) end

  local function check_shape(fn, shape)
    if type(shape) ~= 'table' or (#shape ~= 2 and #shape ~= 3) then
      fail(fn, 'shape must be a list of 2 or 3 sizes, got %s',
        type(shape) == 'table' and ('a list of ' .. #shape) or tostring(shape))
    end
    for i, s in ipairs(shape) do
      if type(s) ~= 'number' or s ~= floor(s) or s < 1 then
        fail(fn, 'shape entry %d is %s, expected a positive integer', i, tostring(s))
      end
    end
    return shape
  end

  -- A displacement or velocity field: (nd, s...) float with nd = 2 or 3.
  local function check_field(fn, u, what)
    if not lumen.is_tensor(u) then fail(fn, '%s must be a tensor, got %s', what, type(u)) end
    local s = u:size()
    if (#s ~= 3 and #s ~= 4) or s[1] ~= #s - 1 then
      fail(fn, '%s is %s, expected (2, s1, s2) or (3, s1, s2, s3)', what, #s > 0 and table.concat(s, 'x') or 'scalar')
    end
    if u:dtype() ~= 'f32' and u:dtype() ~= 'f64' then fail(fn, '%s is %s, expected f32 or f64', what, u:dtype()) end
    local shape = {}
    for i = 2, #s do shape[i - 1] = s[i] end
    return shape
  end

  local function same_shape(a, b) return table.concat(a, 'x') == table.concat(b, 'x') end

  local function nn_F() return require('lumen.nn').F end

  -- Runs fn with lumen's generator seeded, then puts the caller's state back.
  local function seeded(seed, fn)
    local saved = lumen.get_rng_state()
    lumen.manual_seed(seed)
    local ok, a, b = pcall(fn)
    lumen.set_rng_state(saved)
    if not ok then error(a, 0) end
    return a, b
  end

  ---------------------------------------------------------------------------
  -- Cubic B-spline weights (n x c) of one axis: voxel x lies in knot
  -- interval i = floor(x / h) and takes control points i .. i + 3 (control
  -- point m sits at (m - 1) * h), with the uniform cubic B-spline weights.
  local function bspline_matrix(n, h, dtype)
    local c = floor((n - 1) / h) + 4
    local w = {}
    for x = 0, n - 1 do
      local row = {}
      for m = 1, c do row[m] = 0 end
      local t = x / h
      local i = floor(t)
      local f = t - i
      row[i + 1] = (1 - f) ^ 3 / 6
      row[i + 2] = (3 * f ^ 3 - 6 * f ^ 2 + 4) / 6
      row[i + 3] = (-3 * f ^ 3 + 3 * f ^ 2 + 3 * f + 1) / 6
      row[i + 4] = f ^ 3 / 6
      w[x + 1] = row
    end
    return lumen.tensor(w, dtype), c
  end

  -- Control-grid size for shape and spacing (what bspline expects).
  function deform.control_shape(shape, spacing_vox)
    local c = {}
    for d, n in ipairs(shape) do c[d] = floor((n - 1) / spacing_vox[d]) + 4 end
    return c
  end

  local function spacing_list(fn, sp, nd)
    if type(sp) == 'number' then
      local t = {}
      for d = 1, nd do t[d] = sp end
      sp = t
    end
    if type(sp) ~= 'table' or #sp ~= nd then
      fail(fn, 'spacing_vox must be a number or a list of %d numbers, got %s', nd, tostring(sp))
    end
    for d = 1, nd do
      if type(sp[d]) ~= 'number' or not (sp[d] > 0) or sp[d] == math.huge then
        fail(fn, 'spacing_vox entry %d is %s, expected a positive number', d, tostring(sp[d]))
      end
    end
    return sp
  end

  -- coeffs (C, c1, ..., c_nd) -> (C, s1, ..., s_nd): one matrix product per
  -- axis (the tensor-product spline is separable).
  function deform.bspline(coeffs, shape, spacing_vox)
    check_shape('bspline', shape)
    local nd = #shape
    local sp = spacing_list('bspline', spacing_vox, nd)
    local want = deform.control_shape(shape, sp)
    local s = coeffs:size()
    if #s ~= nd + 1 then fail('bspline', 'coeffs is %s, expected (C, %s)', table.concat(s, 'x'), table.concat(want, ', ')) end
    for d = 1, nd do
      if s[d + 1] ~= want[d] then
        fail('bspline', 'coeffs is %s, expected (C, %s) control points for shape %s and spacing %s',
          table.concat(s, 'x'), table.concat(want, ', '), table.concat(shape, 'x'), table.concat(sp, ', '))
      end
    end
    local t = coeffs
    local last = nd
    for d = 1, nd do
      local w = bspline_matrix(shape[d], sp[d], coeffs:dtype())
      -- bring axis d last, multiply by w^T, put it back
      t = lumen.matmul(t:transpose(d, last):contiguous(), w:t()):transpose(d, last)
    end
    return t:contiguous()
  end

  local velocity_known = { shape = true, spacing_vox = true, magnitude = true, seed = true, dtype = true }
  local field_known = { shape = true, spacing_vox = true, magnitude = true, seed = true, dtype = true, steps = true }

  local function velocity(fn, opts)
    local shape = check_shape(fn, opts.shape)
    local nd = #shape
    local sp = spacing_list(fn, opts.spacing_vox or 8, nd)
    local mag = opts.magnitude
    if type(mag) ~= 'number' or not (mag >= 0) or mag == math.huge then
      fail(fn, 'magnitude must be a number >= 0 (voxels), got %s', tostring(mag))
    end
    local seed = opts.seed or 0
    if type(seed) ~= 'number' or seed ~= floor(seed) or seed < 0 then
      fail(fn, 'seed must be an integer >= 0, got %s', tostring(seed))
    end
    local dtype = opts.dtype or 'f32'
    if dtype ~= 'f32' and dtype ~= 'f64' then fail(fn, "dtype must be 'f32' or 'f64', got %s", tostring(dtype)) end
    local cs = deform.control_shape(shape, sp)
    local coeffs = seeded(seed, function() return lumen.randn({ nd, unpack(cs) }, 'f64') end)
    local v = deform.bspline(coeffs, shape, sp)
    local top = lumen.amax(lumen.abs(v)):item()
    -- magnitude 0 gives exactly zero
    v = top > 0 and v * (mag / top) or v * 0
    return v:to(dtype)
  end

  function deform.random_velocity(opts)
    opts = check_opts('random_velocity', opts, velocity_known)
    return velocity('random_velocity', opts)
  end

  ---------------------------------------------------------------------------
  -- Sampling grid for grid_sample from displacement u: positions x + u(x)
  -- normalised to -1..1 (align_corners), components in (W, H, D) order.
  local function grid_of(u)
    local s = u:size()
    local nd = s[1]
    local parts = {}
    for c = 0, nd - 1 do
      local n = s[c + 2]
      local view = {}
      for d = 1, nd do view[d] = d == c + 1 and n or 1 end
      local idx = lumen.arange(n):to(u:dtype()):reshape(unpack(view))
      local p = u:select(0, c) + idx
      -- size 1: every coordinate reads voxel 0
      parts[nd - c] = n > 1 and p * (2 / (n - 1)) - 1 or p * 0
    end
    return lumen.stack(parts, nd):unsqueeze(0)
  end

  local sample_known = { order = true, padding = true }

  -- t: (C, s...) float, sampled at x + u(x).
  local function sample(fn, t, u, opts)
    local order = opts.order or 1
    if order ~= 0 and order ~= 1 then fail(fn, 'order must be 0 (nearest) or 1 (linear), got %s', tostring(order)) end
    local padding = opts.padding or 'border'
    if padding ~= 'border' and padding ~= 'zeros' then
      fail(fn, "padding must be 'border' or 'zeros', got %s", tostring(padding))
    end
    if lumen.amax(lumen.abs(u)):item() == 0 then return t:clone() end -- identity, exactly
    local g = grid_of(u:to(t:dtype()))
    local out = nn_F().grid_sample(t:unsqueeze(0):contiguous(), g,
      { mode = order == 0 and 'nearest' or 'bilinear', padding_mode = padding, align_corners = true })
    return out:squeeze(0)
  end

  function deform.sample(t, u, opts)
    opts = check_opts('sample', opts, sample_known)
    local shape = check_field('sample', u, 'field')
    if not lumen.is_tensor(t) then fail('sample', 'input must be a tensor, got %s', type(t)) end
    local s = t:size()
    local sp = {}
    for i = 2, #s do sp[i - 1] = s[i] end
    if #s ~= #shape + 1 or not same_shape(sp, shape) then
      fail('sample', 'input is %s, expected (C, %s) like the field', table.concat(s, 'x'), table.concat(shape, 'x'))
    end
    if t:dtype() ~= 'f32' and t:dtype() ~= 'f64' then fail('sample', 'input is %s, expected f32 or f64', t:dtype()) end
    return sample('sample', t, u, opts)
  end

  -- The field of phi_a o phi_b.
  function deform.compose(a, b)
    local sa, sb = check_field('compose', a, 'first field'), check_field('compose', b, 'second field')
    if not same_shape(sa, sb) then
      fail('compose', 'fields are %s and %s, expected the same shape', table.concat(a:size(), 'x'), table.concat(b:size(), 'x'))
    end
    return b + sample('compose', a:to(b:dtype()), b, {})
  end

  function deform.integrate(v, opts)
    opts = check_opts('integrate', opts, { steps = true })
    check_field('integrate', v, 'velocity')
    local steps = opts.steps or 7
    if type(steps) ~= 'number' or steps ~= floor(steps) or steps < 0 or steps > 30 then
      fail('integrate', 'steps must be an integer 0..30, got %s', tostring(steps))
    end
    local u = v * (1 / 2 ^ steps)
    for _ = 1, steps do u = u + sample('integrate', u, u, {}) end
    return u
  end

  -- random_field{...} -> displacement u, velocity v
  function deform.random_field(opts)
    opts = check_opts('random_field', opts, field_known)
    local v = velocity('random_field', opts)
    local vopts = { steps = opts.steps }
    return deform.integrate(v, vopts), v
  end

  -- random_field_for(img, {magnitude_mm =, control_mm = 20, seed =,
  -- steps =, dtype =}) -> u, v for img's grid (its first 3 dims), with the
  -- velocity drawn in millimetres (largest component magnitude_mm, control
  -- points control_mm apart) and each component turned into voxels by the
  -- spacing of its axis (the affine's column lengths).
  local for_known = { magnitude_mm = true, control_mm = true, seed = true, steps = true, dtype = true }
  function deform.random_field_for(img, opts)
    opts = check_opts('random_field_for', opts, for_known)
    if getmetatable(img) ~= image.Image then fail('random_field_for', 'expected an image, got %s', type(img)) end
    local s = img.data:size()
    if #s < 3 then fail('random_field_for', 'the image is %d-D, expected 3 spatial dims', #s) end
    local sp = img:spacing()
    local control = opts.control_mm or 20
    if type(control) ~= 'number' or not (control > 0) then
      fail('random_field_for', 'control_mm must be a positive number, got %s', tostring(control))
    end
    local v = velocity('random_field_for', { shape = { s[1], s[2], s[3] },
      spacing_vox = { control / sp[1], control / sp[2], control / sp[3] }, magnitude = opts.magnitude_mm,
      seed = opts.seed, dtype = opts.dtype })
    v = v * lumen.tensor({ 1 / sp[1], 1 / sp[2], 1 / sp[3] }, v:dtype()):reshape(3, 1, 1, 1)
    return deform.integrate(v, { steps = opts.steps }), v
  end

  ---------------------------------------------------------------------------
  -- rigid_field_for(img, {rotate_deg =, shift_mm =, seed =}): the field of a
  -- head motion about the volume's centre: a rotation of rotate_deg about
  -- a random axis and a shift of shift_mm in a random direction (both drawn
  -- from seed by augment's counter generator), for isotropic voxels.
  local rigid_known = { rotate_deg = true, shift_mm = true, seed = true }
  function deform.rigid_field_for(img, opts)
    opts = check_opts('rigid_field_for', opts, rigid_known)
    if getmetatable(img) ~= image.Image then fail('rigid_field_for', 'expected an image, got %s', type(img)) end
    local shape = img.data:size()
    local spacing = img:spacing()[1]
    local rng = require('lumen.augment').rng(opts.seed or 0, 7, 0)
    local function unit()
      local v, n
      repeat
        v = { rng:uniform(-1, 1), rng:uniform(-1, 1), rng:uniform(-1, 1) }
        n = math.sqrt(v[1] ^ 2 + v[2] ^ 2 + v[3] ^ 2)
      until n > 0.1 and n <= 1
      return { v[1] / n, v[2] / n, v[3] / n }
    end
    local a, d = unit(), unit()
    local th = math.rad(opts.rotate_deg or 0)
    local c, s = math.cos(th), math.sin(th)
    local K = { { 0, -a[3], a[2] }, { a[3], 0, -a[1] }, { -a[2], a[1], 0 } } -- cross product with a
    local coords = {}
    for ax = 1, 3 do
      local view = { 1, 1, 1 }
      view[ax] = shape[ax]
      coords[ax] = (lumen.arange(shape[ax]):to('f32') - (shape[ax] - 1) / 2):reshape(view)
    end
    local comps = {}
    for i = 1, 3 do
      local u = -coords[i] + (opts.shift_mm or 0) * d[i] / spacing
      for j = 1, 3 do -- Rodrigues: R = c I + s K + (1 - c) a a^T
        local r = (i == j and c or 0) + s * K[i][j] + (1 - c) * a[i] * a[j]
        u = u + coords[j] * r
      end
      comps[i] = u:expand({ shape[1], shape[2], shape[3] }):contiguous()
    end
    return lumen.stack(comps, 0)
  end

  ---------------------------------------------------------------------------
  -- apply(img or tensor, u, {order, padding}): data of spatial shape u's
  -- (s...), optionally with one trailing dim (time, channels) warped
  -- slice by slice. order 1 gives float data (f32 unless f64 came in);
  -- order 0 keeps the dtype (labels keep their values).
  local dtype_ok = { f32 = true, f64 = true, i32 = true, i64 = true, u8 = true, bool = true }
  function deform.apply(x, u, opts)
    opts = check_opts('apply', opts, sample_known)
    local shape = check_field('apply', u, 'field')
    local img = getmetatable(x) == image.Image and x or nil
    local data = img and img.data or x
    if not lumen.is_tensor(data) then fail('apply', 'input must be an image or a tensor, got %s', type(x)) end
    local s = data:size()
    local nd = #shape
    local sp = {}
    for i = 1, nd do sp[i] = s[i] end
    if (#s ~= nd and #s ~= nd + 1) or not same_shape(sp, shape) then
      fail('apply', 'data is %s, expected %s (or with one trailing dim) like the field', #s > 0 and table.concat(s, 'x') or 'scalar',
        table.concat(shape, 'x'))
    end
    local dtype = data:dtype()
    if not dtype_ok[dtype] then fail('apply', 'data is %s', dtype) end
    local order = opts.order or 1
    -- (C, s...) in a float type that holds the values exactly for nearest
    local work = dtype == 'f32' and 'f32' or (order == 0 or dtype == 'f64') and 'f64' or 'f32'
    local t = data:to(work)
    if #s == nd then
      t = t:unsqueeze(0)
    else
      local perm = { nd }
      for i = 0, nd - 1 do perm[#perm + 1] = i end
      t = t:permute(unpack(perm))
    end
    local out = sample('apply', t:contiguous(), u, opts)
    if #s == nd then
      out = out:squeeze(0)
    else
      local perm = {}
      for i = 1, nd do perm[i] = i end
      perm[nd + 1] = 0
      out = out:permute(unpack(perm)):contiguous()
    end
    if order == 0 then out = out:to(dtype) end
    if not img then return out end
    local meta = {}
    for k, v in pairs(img.meta or {}) do meta[k] = v end
    meta.deformed = true
    return image.new(out, { affine = img.affine, meta = meta })
  end

  ---------------------------------------------------------------------------
  -- det(I + grad u) at interior voxels, central differences.
  function deform.jacobian_det(u)
    local shape = check_field('jacobian_det', u, 'field')
    local nd = #shape
    for d = 1, nd do
      if shape[d] < 3 then fail('jacobian_det', 'field is %s, expected at least 3 voxels per dim', table.concat(u:size(), 'x')) end
    end
    -- J[c][d] = delta_cd + du_c/dx_d, each on the interior
    local J = {}
    for c = 1, nd do
      J[c] = {}
      local uc = u:select(0, c - 1)
      for d = 1, nd do
        local g = (uc:narrow(d - 1, 2, shape[d] - 2) - uc:narrow(d - 1, 0, shape[d] - 2)) * 0.5
        for e = 1, nd do
          if e ~= d then g = g:narrow(e - 1, 1, shape[e] - 2) end
        end
        J[c][d] = c == d and g + 1 or g
      end
    end
    if nd == 2 then return J[1][1] * J[2][2] - J[1][2] * J[2][1] end
    return J[1][1] * (J[2][2] * J[3][3] - J[2][3] * J[3][2])
      - J[1][2] * (J[2][1] * J[3][3] - J[2][3] * J[3][1])
      + J[1][3] * (J[2][1] * J[3][2] - J[2][2] * J[3][1])
  end

  return deform
end
