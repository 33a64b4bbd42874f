-- image.deform: random smooth velocity fields (cubic B-splines), their
-- integration by scaling and squaring, warping images and labels.
-- References here are independent of the code under test: B-splines
-- reproduce linear functions exactly, a constant shift moves the array by
-- hand-computed amounts, and a diffeomorphism has a positive Jacobian and
-- an inverse.
local lumen = require 'lumen'
local image = require 'lumen.image'
local D = image.deform

local function amax(t) return lumen.amax(lumen.abs(t)):item() end

-- the interior of a field (nd, s...): margin m voxels off every side
local function interior(u, m)
  local s = u:size()
  for d = 2, #s do u = u:narrow(d - 1, m, s[d] - 2 * m) end
  return u
end

describe('image.deform', function()
  it('evaluates cubic B-splines: linear coefficients give the linear function', function()
    -- B-splines reproduce polynomials up to degree 1: coefficients
    -- a * (knot position) + b give a * x + b at every voxel
    local shape, h = { 13, 9, 7 }, { 4, 3, 2.5 }
    local cs = D.control_shape(shape, h)
    assert.are.same({ math.floor(12 / 4) + 4, math.floor(8 / 3) + 4, math.floor(6 / 2.5) + 4 }, cs)
    local a = { 0.5, -2, 1.25 }
    local coeffs = lumen.zeros(1, cs[1], cs[2], cs[3]):to('f64')
    local ct = coeffs:totable()
    for i = 1, cs[1] do for j = 1, cs[2] do for k = 1, cs[3] do
      ct[1][i][j][k] = 3 + a[1] * (i - 2) * h[1] + a[2] * (j - 2) * h[2] + a[3] * (k - 2) * h[3]
    end end end
    local f = D.bspline(lumen.tensor(ct, 'f64'), shape, h)
    assert.are.same({ 1, 13, 9, 7 }, f:size())
    local ft, worst = f:totable(), 0
    for i = 1, 13 do for j = 1, 9 do for k = 1, 7 do
      local want = 3 + a[1] * (i - 1) + a[2] * (j - 1) + a[3] * (k - 1)
      worst = math.max(worst, math.abs(ft[1][i][j][k] - want))
    end end end
    assert.is_true(worst < 1e-12, 'worst ' .. worst)
  end)

  it('draws velocities of the requested magnitude, the same for the same seed', function()
    local v1 = D.random_velocity { shape = { 20, 18, 16 }, spacing_vox = 6, magnitude = 3.5, seed = 4, dtype = 'f64' }
    assert.are.same({ 3, 20, 18, 16 }, v1:size())
    assert.is_true(math.abs(amax(v1) - 3.5) < 1e-12)
    local saved = lumen.get_rng_state()
    local u1 = D.random_field { shape = { 20, 18, 16 }, spacing_vox = 6, magnitude = 3.5, seed = 4 }
    local u2 = D.random_field { shape = { 20, 18, 16 }, spacing_vox = 6, magnitude = 3.5, seed = 4 }
    local u3 = D.random_field { shape = { 20, 18, 16 }, spacing_vox = 6, magnitude = 3.5, seed = 5 }
    assert.are.same(saved, lumen.get_rng_state()) -- the caller's generator is left alone
    assert.are.equal('f32', u1:dtype())
    assert.are.equal(0, amax(u1 - u2))
    assert.is_true(amax(u1 - u3) > 0.5)
    -- zero magnitude: exactly zero, and warping by it is the identity, exactly
    local z = D.random_field { shape = { 12, 10, 8 }, magnitude = 0, seed = 1, dtype = 'f64' }
    assert.are.equal(0, amax(z))
    local x = lumen.randn(12, 10, 8)
    assert.are.equal(0, amax(D.apply(x, z) - x))
    local lab = lumen.randint(0, 5, { 12, 10, 8 }, 'i32')
    assert.are.same(lab:totable(), D.apply(lab, z, { order = 0 }):totable())
  end)

  it('integrates to a map with a positive Jacobian where the plain field folds', function()
    -- displacements up to 8 voxels on a control grid 8 voxels apart: the
    -- field used directly as a displacement (x + v) folds somewhere
    -- (det < 0); exp(v) does not
    for _, case in ipairs { { 3, { 40, 36, 32 } }, { 7, { 48, 40 } } } do
      local seed, shape = case[1], case[2]
      local u, v = D.random_field { shape = shape, spacing_vox = 8, magnitude = 8, seed = seed, dtype = 'f64' }
      assert.is_true(math.abs(amax(v) - 8) < 1e-9)
      assert.is_true(amax(u) > 4, 'the map moves voxels by several voxels')
      local plain = lumen.amin(D.jacobian_det(v)):item()
      local integrated = lumen.amin(D.jacobian_det(u)):item()
      assert.is_true(plain < 0, #shape .. '-D: the plain field should fold, min det ' .. plain)
      assert.is_true(integrated > 0, #shape .. '-D: exp(v) folds, min det ' .. integrated)
    end
  end)

  it('integrating -v gives the inverse', function()
    -- phi o phi^-1 and phi^-1 o phi should be the identity. What is left is
    -- linear interpolation error (2 x 7 resamplings of a smooth field, each
    -- off by at most about |u''| / 8 voxels), so it must be a small fraction
    -- of the displacement and shrink faster than the displacement does.
    -- Within `magnitude` voxels of the edge points leave the grid and border
    -- padding stands in for the field there, so only the interior counts.
    local errs = {}
    for _, mag in ipairs { 2, 8 } do
      local u, v = D.random_field { shape = { 40, 36, 32 }, spacing_vox = 8, magnitude = mag, seed = 3, dtype = 'f64' }
      local inv = D.integrate(-v)
      local m = mag + 1
      local e1 = interior(D.compose(u, inv), m)
      local e2 = interior(D.compose(inv, u), m)
      errs[mag] = math.max(amax(e1), amax(e2))
      assert.is_true(errs[mag] < 0.03 * mag, mag .. ': max error ' .. errs[mag])
      assert.is_true(lumen.mean(lumen.abs(e1)):item() < 0.005 * mag)
      -- and it is a real inverse: without it the error is the displacement
      assert.is_true(amax(interior(D.compose(u, u * 0), m)) > 0.5 * mag)
    end
    assert.is_true(errs[2] < errs[8] / 4, errs[2] .. ' vs ' .. errs[8])
  end)

  it('warps along the right axes: a constant shift moves the array', function()
    local x = lumen.randn(6, 7, 5):to('f64')
    local xt = x:totable()
    -- u = (2, 0.25, 0): out[i][j][k] = x[i + 2][j + 0.25][k], linear in j
    local u = lumen.zeros(3, 6, 7, 5):to('f64')
    u:select(0, 0):fill_(2)
    u:select(0, 1):fill_(0.25)
    local out = D.apply(x, u):totable()
    local worst = 0
    for i = 1, 4 do for j = 1, 6 do for k = 1, 5 do
      local want = 0.75 * xt[i + 2][j][k] + 0.25 * xt[i + 2][j + 1][k]
      worst = math.max(worst, math.abs(out[i][j][k] - want))
    end end end
    assert.is_true(worst < 1e-12, 'worst ' .. worst)
    -- border padding repeats the last slice
    assert.is_true(math.abs(out[6][1][1] - (0.75 * xt[6][1][1] + 0.25 * xt[6][2][1])) < 1e-12)
    -- 2-D, and a trailing channel dim warped channel by channel
    local y = lumen.randn(5, 4, 3):to('f64')
    local v2 = lumen.zeros(2, 5, 4):to('f64')
    v2:select(0, 1):fill_(-1)
    local yo, yt = D.apply(y, v2):totable(), y:totable()
    for i = 1, 5 do for j = 2, 4 do for c = 1, 3 do assert.are.equal(yt[i][j - 1][c], yo[i][j][c]) end end end
  end)

  it('warps images keeping geometry, and labels keeping their values', function()
    local lab = lumen.zeros(24, 20, 16):to('i32')
    lab:narrow(0, 4, 10):narrow(1, 3, 12):narrow(2, 2, 10):fill_(7)
    lab:narrow(0, 10, 10):narrow(1, 8, 8):narrow(2, 5, 8):fill_(300)
    local affine = { { 0, 0, 2, -10 }, { 1.5, 0, 0, 4 }, { 0, 1, 0, 7 }, { 0, 0, 0, 1 } }
    local img = image.new(lab, { affine = affine, meta = { description = 'boxes' } })
    local u = D.random_field { shape = { 24, 20, 16 }, spacing_vox = 6, magnitude = 3, seed = 9 }
    local w = D.apply(img, u, { order = 0 })
    assert.are.same(affine, w.affine)
    assert.are.equal('boxes', w.meta.description)
    assert.are.equal('i32', w.data:dtype())
    local seen, n = {}, 0
    for _, v in ipairs(lumen.unique(w.data):totable()) do seen[v] = true n = n + 1 end
    assert.are.same({ [0] = true, [7] = true, [300] = true }, seen)
    assert.is_true(amax((w.data - lab):to('f32')) > 0, 'the labels moved')
    -- linear warping of an integer image gives f32
    local wl = D.apply(img, u)
    assert.are.equal('f32', wl.data:dtype())
    assert.is_true(lumen.amax(wl.data):item() <= 300 and lumen.amin(wl.data):item() >= 0)
  end)

  it('refuses bad arguments clearly', function()
    local function fails(pattern, fn)
      local ok, err = pcall(fn)
      assert.is_false(ok)
      assert.matches(pattern, tostring(err))
    end
    fails('lumen.image.deform.random_field: shape must be a list of 2 or 3 sizes, got a list of 1',
      function() D.random_field { shape = { 5 }, magnitude = 1 } end)
    fails('lumen.image.deform.random_field: magnitude must be a number >= 0 %(voxels%), got %-1',
      function() D.random_field { shape = { 5, 5 }, magnitude = -1 } end)
    fails("lumen.image.deform.random_field: unknown option 'magnitud' %(expected dtype, magnitude, seed, shape, spacing_vox, steps%)",
      function() D.random_field { shape = { 5, 5 }, magnitud = 1 } end)
    fails('lumen.image.deform.random_field: spacing_vox entry 2 is 0, expected a positive number',
      function() D.random_field { shape = { 5, 5 }, magnitude = 1, spacing_vox = { 2, 0 } } end)
    local u = lumen.zeros(3, 4, 4, 4)
    fails('lumen.image.deform.apply: data is 4x4x5, expected 4x4x4 %(or with one trailing dim%) like the field',
      function() D.apply(lumen.zeros(4, 4, 5), u) end)
    fails('lumen.image.deform.apply: order must be 0 %(nearest%) or 1 %(linear%), got 3',
      function() D.apply(lumen.zeros(4, 4, 4), u + 1, { order = 3 }) end)
    fails('lumen.image.deform.apply: field is 2x4x4x4, expected %(2, s1, s2%) or %(3, s1, s2, s3%)',
      function() D.apply(lumen.zeros(4, 4, 4), lumen.zeros(2, 4, 4, 4)) end)
    fails('lumen.image.deform.integrate: velocity is i32, expected f32 or f64',
      function() D.integrate(lumen.zeros(2, 4, 4):to('i32')) end)
    fails('lumen.image.deform.jacobian_det: field is 2x2x4, expected at least 3 voxels per dim',
      function() D.jacobian_det(lumen.zeros(2, 2, 4)) end)
  end)
end)
