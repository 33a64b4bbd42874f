-- image/ops.lua: geometry and intensity operations on images.
--
--   img:resample({spacing = {sx, sy, sz}, order = 1, cval = 0, mode = 'constant'})
--   img:resample_to(other, {order = 1, cval = 0, mode = 'constant'})
--   img:reorient('RAS')                  permute/flip axes, no interpolation
--   img:crop_foreground({margin = 2, threshold = 0}) -> cropped, box
--   image.pad_back(cropped, box, original_shape)
--   img:zscore({mask =}), img:clip_percentiles(lo, hi), img:window(center, width)
--
-- Interpolation follows scipy.ndimage.map_coordinates: order 0 (nearest,
-- labels keep their dtype), 1 (linear), 3 (cubic B-spline after the exact
-- prefilter); mode 'constant' gives cval outside [0, n-1] on any axis,
-- 'nearest' extends the edges. The loops are in src/ops/imgproc.c (f64);
-- images with trailing dims (i, j, k, t) resample volume by volume.
local ffi = require 'ffi'
local core = require 'lumen.core'

return function(image, lumen)
  local Image = image.Image
  local floor, abs, max, min = math.floor, math.abs, math.max, math.min

  local function fail(fn, fmt, ...) error(string.format('lumen.image.' .. fn .. ': ' .. fmt, ...), 3) end

  -- level 3: the error points at the caller of the public function
  local function check_opts(fn, opts, known) return core.options(opts, 'image.' .. fn, known, 3) end

  local function check_image(fn, img, what)
    if getmetatable(img) ~= Image then fail(fn, '%s must be an image, got %s', what, type(img)) end
  end

  local function check_3d(fn, img)
    if img.data:dim() ~= 3 then fail(fn, 'the image is %d-D, expected a 3-D volume', img.data:dim()) end
  end
  local function check_spatial(fn, img)
    if img.data:dim() < 3 then fail(fn, 'the image is %d-D, expected 3 spatial dims (i, j, k[, t...])', img.data:dim()) end
  end

  ---------------------------------------------------------------------------
  -- 4x4 matrices as Lua lists of rows
  local function matmul(a, b)
    local n, m, p = #a, #b, #b[1]
    local c = {}
    for r = 1, n do
      c[r] = {}
      for k = 1, p do
        local s = 0
        for j = 1, m do s = s + a[r][j] * b[j][k] end
        c[r][k] = s
      end
    end
    return c
  end

  -- Gauss-Jordan with partial pivoting; nil when singular.
  local function inverse(a)
    local n = #a
    local m = {}
    for r = 1, n do
      m[r] = {}
      for c = 1, n do m[r][c] = a[r][c] end
      for c = 1, n do m[r][n + c] = r == c and 1 or 0 end
    end
    for c = 1, n do
      local p = c
      for r = c + 1, n do if abs(m[r][c]) > abs(m[p][c]) then p = r end end
      if m[p][c] == 0 then return nil end
      m[c], m[p] = m[p], m[c]
      local d = m[c][c]
      for k = 1, 2 * n do m[c][k] = m[c][k] / d end
      for r = 1, n do
        if r ~= c and m[r][c] ~= 0 then
          local f = m[r][c]
          for k = 1, 2 * n do m[r][k] = m[r][k] - f * m[c][k] end
        end
      end
    end
    local inv = {}
    for r = 1, n do
      inv[r] = {}
      for c = 1, n do inv[r][c] = m[r][n + c] end
    end
    return inv
  end

  local function copy_affine(a)
    local c = {}
    for r = 1, 4 do c[r] = { a[r][1], a[r][2], a[r][3], a[r][4] } end
    return c
  end

  local function copy_meta(m)
    local c = {}
    for k, v in pairs(m or {}) do c[k] = v end
    return c
  end

  ---------------------------------------------------------------------------
  -- f64 working buffers (C order, a fresh copy: the prefilter writes to it)
  local function f64_copy(t)
    local c = lumen.empty(t:size(), 'f64')
    c:copy_(t)
    return c, ffi.cast('double*', c:data_ptr())
  end

  local function is_float(dt) return dt == 'f32' or dt == 'f64' end

  -- Sample the volume (tensor data) at coordinates M * (a, b, c, 1) for
  -- every voxel of out_shape; M is 4x4 (output voxel -> input voxel). The
  -- loops are src/ops/imgproc.c's.
  local C, ctx = core.C, core.ctx
  local function sample(fn, data, M, out_shape, order, mode, cval)
    local src = f64_copy(data)
    local off = 0
    if order == 3 and mode == 'nearest' then
      -- as scipy: extend the edges by 12 voxels before the prefilter
      src = lumen.pad(src, { 12, 12, 12, 12, 12, 12 }, 'replicate'):contiguous()
      off = 12
    end
    if order == 3 and C.lm_spline_prefilter3d(ctx, core.handle(src, fn, 'data')) ~= 0 then core.fail_as('image.' .. fn, 2) end
    local m = ffi.new('double[12]')
    for r = 1, 3 do
      for c = 1, 4 do m[(r - 1) * 4 + c - 1] = M[r][c] end
      m[(r - 1) * 4 + 3] = m[(r - 1) * 4 + 3] + off
    end
    local size = ffi.new('int64_t[3]', out_shape[1], out_shape[2], out_shape[3])
    local st = C.lm_map_affine3d(ctx, core.handle(src, fn, 'data'), m, order,
      mode == 'nearest' and C.LM_IMG_NEAREST or C.LM_IMG_CONSTANT, cval, size, core.out1)
    if st ~= 0 then core.fail_as('image.' .. fn, 2) end
    return core.wrap(core.out1[0])
  end

  -- Images with trailing dims (i, j, k, t...) resample volume by volume.
  local function sample_all(fn, data, M, out_shape, order, mode, cval)
    local sz = data:size()
    if #sz == 3 then return sample(fn, data, M, out_shape, order, mode, cval) end
    local flat = data:reshape(sz[1], sz[2], sz[3], -1)
    local nt = flat:size(3)
    local out = lumen.empty({ out_shape[1], out_shape[2], out_shape[3], nt }, 'f64')
    for t = 0, nt - 1 do
      lumen.select(out, 3, t):copy_(sample(fn, lumen.select(flat, 3, t), M, out_shape, order, mode, cval))
    end
    local full = { out_shape[1], out_shape[2], out_shape[3] }
    for d = 4, #sz do full[d] = sz[d] end
    return out:reshape(full)
  end

  local resample_opts = { order = true, cval = true, mode = true, spacing = true }

  local function interp_args(fn, opts)
    local order = opts.order == nil and 1 or opts.order
    if order ~= 0 and order ~= 1 and order ~= 3 then
      fail(fn, 'order %s is not supported, expected 0 (nearest), 1 (linear) or 3 (cubic B-spline)', tostring(order))
    end
    local cval = opts.cval == nil and 0 or opts.cval
    if type(cval) ~= 'number' then fail(fn, 'cval must be a number, got %s', type(cval)) end
    local mode = opts.mode or 'constant'
    if mode ~= 'constant' and mode ~= 'nearest' then
      fail(fn, "mode '%s' is not supported, expected 'constant' or 'nearest'", tostring(mode))
    end
    return order, cval, mode
  end

  -- The result keeps integer dtypes for nearest (labels) and floats as
  -- they are; interpolated integers become f32.
  local function finish(img, out, order, affine)
    local dt = img.data:dtype()
    local target = (order == 0 or is_float(dt)) and dt or 'f32'
    if target ~= 'f64' then out = out:to(target) end
    return image.new(out, { affine = affine, meta = copy_meta(img.meta) })
  end

  -- resample_to(other): onto other's grid (shape and affine).
  function Image:resample_to(other, opts)
    local fn = 'resample_to'
    check_image(fn, self, 'self')
    check_image(fn, other, 'the target')
    opts = check_opts(fn, opts, { order = true, cval = true, mode = true })
    check_spatial(fn, self)
    if other.data:dim() < 3 then fail(fn, 'the target is %d-D, expected a 3-D grid', other.data:dim()) end
    local order, cval, mode = interp_args(fn, opts)
    local inv = inverse(self.affine)
    if not inv then fail(fn, 'the image affine is singular') end
    local M = matmul(inv, other.affine)
    local sz = other.data:size()
    local out = sample_all(fn, self.data, M, { sz[1], sz[2], sz[3] }, order, mode, cval)
    return finish(self, out, order, copy_affine(other.affine))
  end

  -- resample{spacing=}: same origin and directions, voxel size changed;
  -- size round(n * old / new) per axis.
  function Image:resample(opts)
    local fn = 'resample'
    check_image(fn, self, 'self')
    opts = check_opts(fn, opts, resample_opts)
    check_spatial(fn, self)
    local sp = opts.spacing
    if type(sp) ~= 'table' or #sp ~= 3 then fail(fn, 'spacing must be a list of 3 positive numbers') end
    for i = 1, 3 do
      if type(sp[i]) ~= 'number' or not (sp[i] > 0) or sp[i] == math.huge then
        fail(fn, 'spacing[%d] is %s, expected a positive number', i, tostring(sp[i]))
      end
    end
    local order, cval, mode = interp_args(fn, opts)
    local old, sz = self:spacing(), self.data:size()
    local M = { { 0, 0, 0, 0 }, { 0, 0, 0, 0 }, { 0, 0, 0, 0 }, { 0, 0, 0, 1 } }
    local affine = copy_affine(self.affine)
    local out_shape = {}
    for c = 1, 3 do
      if old[c] == 0 then fail(fn, 'axis %d of the affine has zero length', c) end
      local ratio = sp[c] / old[c]
      M[c][c] = ratio
      out_shape[c] = max(1, floor(sz[c] * old[c] / sp[c] + 0.5))
      for r = 1, 3 do affine[r][c] = self.affine[r][c] * ratio end
    end
    local out = sample_all(fn, self.data, M, out_shape, order, mode, cval)
    return finish(self, out, order, affine)
  end

  ---------------------------------------------------------------------------
  -- Orientation, as nibabel.orientations: ornt[i] = {world axis, +1/-1}.

  -- The closest orthogonal matrix to a (polar decomposition by Newton).
  local function polar(a)
    local q = a
    for _ = 1, 100 do
      local inv = inverse(q)
      if not inv then return nil end
      local nq, diff = {}, 0
      for r = 1, 3 do
        nq[r] = {}
        for c = 1, 3 do
          nq[r][c] = 0.5 * (q[r][c] + inv[c][r])
          diff = max(diff, abs(nq[r][c] - q[r][c]))
        end
      end
      q = nq
      if diff < 1e-15 then break end
    end
    return q
  end

  local function io_orientation(fn, affine)
    local rs = {}
    for r = 1, 3 do rs[r] = {} end
    for c = 1, 3 do
      local z = math.sqrt(affine[1][c] ^ 2 + affine[2][c] ^ 2 + affine[3][c] ^ 2)
      if z == 0 then z = 1 end
      for r = 1, 3 do rs[r][c] = affine[r][c] / z end
    end
    local R = polar(rs)
    if not R then fail(fn, 'the affine is singular: its axes have no orientation') end
    local ornt = {}
    for c = 1, 3 do
      local best, bv = 1, -1
      for r = 1, 3 do if abs(R[r][c]) > bv then best, bv = r, abs(R[r][c]) end end
      ornt[c] = { best - 1, R[best][c] < 0 and -1 or 1 }
      for k = 1, 3 do R[best][k] = 0 end
    end
    return ornt
  end

  local LABELS = { L = { 0, -1 }, R = { 0, 1 }, P = { 1, -1 }, A = { 1, 1 }, I = { 2, -1 }, S = { 2, 1 } }

  local function axcodes2ornt(fn, code)
    if type(code) ~= 'string' or #code ~= 3 then
      fail(fn, "orientation must be a 3-letter code like 'RAS', got %s", tostring(code))
    end
    local ornt, seen = {}, {}
    for i = 1, 3 do
      local l = LABELS[code:sub(i, i):upper()]
      if not l then fail(fn, "'%s': letter '%s' is not one of L, R, P, A, I, S", code, code:sub(i, i)) end
      if seen[l[1]] then fail(fn, "'%s' names a world axis twice", code) end
      seen[l[1]] = true
      ornt[i] = { l[1], l[2] }
    end
    return ornt
  end

  local function ornt_transform(start, target)
    local result = {}
    for j = 1, 3 do
      for i = 1, 3 do
        if target[j][1] == start[i][1] then
          result[i] = { j - 1, start[i][2] == target[j][2] and 1 or -1 }
          break
        end
      end
    end
    return result
  end

  local function inv_ornt_aff(ornt, shape)
    local m = { { 0, 0, 0, 0 }, { 0, 0, 0, 0 }, { 0, 0, 0, 0 }, { 0, 0, 0, 1 } }
    for i = 1, 3 do
      local flip, c = ornt[i][2], -(shape[i] - 1) / 2
      m[i][ornt[i][1] + 1] = flip
      m[i][4] = flip * c - c
    end
    return m
  end

  function Image:reorient(code)
    local fn = 'reorient'
    check_image(fn, self, 'self')
    if self.data:dim() < 3 then fail(fn, 'the image is %d-D, expected at least 3 spatial dims', self.data:dim()) end
    local target = axcodes2ornt(fn, code or 'RAS')
    local tr = ornt_transform(io_orientation(fn, self.affine), target)
    local data = self.data
    local flips = {}
    for i = 1, 3 do if tr[i][2] == -1 then flips[#flips + 1] = i - 1 end end
    if #flips > 0 then data = lumen.flip(data, flips) end
    local perm = {}
    for i = 1, 3 do perm[tr[i][1] + 1] = i - 1 end
    for d = 4, data:dim() do perm[d] = d - 1 end
    data = data:permute(perm):contiguous()
    local affine = matmul(self.affine, inv_ornt_aff(tr, self.data:size()))
    return image.new(data, { affine = affine, meta = copy_meta(self.meta) })
  end

  ---------------------------------------------------------------------------
  -- Cropping

  -- crop_foreground -> cropped image, box {{start, stop}, ...} (0-based,
  -- stop exclusive) around voxels > threshold, grown by margin.
  function Image:crop_foreground(opts)
    local fn = 'crop_foreground'
    check_image(fn, self, 'self')
    opts = check_opts(fn, opts, { margin = true, threshold = true })
    check_3d(fn, self)
    local margin = opts.margin == nil and 0 or opts.margin
    if type(margin) ~= 'number' or margin < 0 or margin ~= floor(margin) then
      fail(fn, 'margin must be a non-negative integer, got %s', tostring(margin))
    end
    local thr = opts.threshold == nil and 0 or opts.threshold
    if type(thr) ~= 'number' then fail(fn, 'threshold must be a number, got %s', type(thr)) end
    local sz = self.data:size()
    local _, p = f64_copy(self.data)
    local lo, hi = { math.huge, math.huge, math.huge }, { -1, -1, -1 }
    local o = 0
    for a = 0, sz[1] - 1 do
      for b = 0, sz[2] - 1 do
        for c = 0, sz[3] - 1 do
          if p[o] > thr then
            if a < lo[1] then lo[1] = a end
            if a > hi[1] then hi[1] = a end
            if b < lo[2] then lo[2] = b end
            if b > hi[2] then hi[2] = b end
            if c < lo[3] then lo[3] = c end
            if c > hi[3] then hi[3] = c end
          end
          o = o + 1
        end
      end
    end
    if hi[1] < 0 then fail(fn, 'no voxel is above the threshold %s', tostring(thr)) end
    local box, data = {}, self.data
    for d = 1, 3 do
      box[d] = { max(0, lo[d] - margin), min(sz[d], hi[d] + 1 + margin) }
      data = lumen.narrow(data, d - 1, box[d][1], box[d][2] - box[d][1])
    end
    local affine = copy_affine(self.affine)
    for r = 1, 3 do
      affine[r][4] = self.affine[r][1] * box[1][1] + self.affine[r][2] * box[2][1] + self.affine[r][3] * box[3][1]
        + self.affine[r][4]
    end
    return image.new(data:contiguous(), { affine = affine, meta = copy_meta(self.meta) }), box
  end

  -- pad_back(cropped, box, shape): the cropped image (or tensor) placed back
  -- into zeros of the original shape.
  function image.pad_back(cropped, box, shape)
    local fn = 'pad_back'
    local is_img = getmetatable(cropped) == Image
    local data = is_img and cropped.data or cropped
    if not lumen.is_tensor(data) then fail(fn, 'cropped must be an image or a tensor, got %s', type(cropped)) end
    if type(box) ~= 'table' or #box ~= 3 then fail(fn, 'box must be a list of 3 {start, stop} pairs') end
    if type(shape) ~= 'table' or #shape < 3 then fail(fn, 'shape must be a list of at least 3 sizes') end
    local sz = data:size()
    if #sz ~= #shape then fail(fn, 'cropped is %d-D but shape has %d sizes', #sz, #shape) end
    local pads = {}
    for d = #sz, 1, -1 do
      local b = box[d] or { 0, shape[d] }
      if type(b) ~= 'table' or type(b[1]) ~= 'number' or type(b[2]) ~= 'number' then
        fail(fn, 'box[%d] must be a {start, stop} pair', d)
      end
      if b[2] - b[1] ~= sz[d] or b[1] < 0 or b[2] > shape[d] then
        fail(fn, 'box[%d] = {%s, %s} does not fit: cropped size %d, original size %s', d, tostring(b[1]), tostring(b[2]),
          sz[d], tostring(shape[d]))
      end
      pads[#pads + 1] = b[1]
      pads[#pads + 1] = shape[d] - b[2]
    end
    local out = lumen.pad(data, pads, 'constant', 0):contiguous()
    if not is_img then return out end
    local affine = copy_affine(cropped.affine)
    local a = cropped.affine
    for r = 1, 3 do
      affine[r][4] = a[r][4] - (a[r][1] * box[1][1] + a[r][2] * box[2][1] + a[r][3] * box[3][1])
    end
    return image.new(out, { affine = affine, meta = copy_meta(cropped.meta) })
  end

  ---------------------------------------------------------------------------
  -- Intensity

  local function float_result(img, t)
    local dt = img.data:dtype()
    if dt ~= 'f64' then t = t:to('f32') end
    return image.new(t, { affine = copy_affine(img.affine), meta = copy_meta(img.meta) })
  end

  -- zscore{mask=}: (x - mean) / std over the mask's voxels (all when no
  -- mask; std with ddof 0, 1 when it is 0), applied to the whole image.
  function Image:zscore(opts)
    local fn = 'zscore'
    check_image(fn, self, 'self')
    opts = check_opts(fn, opts, { mask = true })
    local t, p = f64_copy(self.data)
    local n = t:numel()
    local mp
    if opts.mask ~= nil then
      local m = getmetatable(opts.mask) == Image and opts.mask.data or opts.mask
      if not lumen.is_tensor(m) then fail(fn, 'mask must be an image or a tensor, got %s', type(opts.mask)) end
      local ms, ds = m:size(), self.data:size()
      if table.concat(ms, 'x') ~= table.concat(ds, 'x') then
        fail(fn, 'mask is %s, expected the image shape %s', table.concat(ms, 'x'), table.concat(ds, 'x'))
      end
      local _
      _, mp = f64_copy(m)
      mp = { t = _, p = mp }
    end
    local sum, cnt = 0, 0
    for i = 0, n - 1 do
      if not mp or mp.p[i] ~= 0 then sum, cnt = sum + p[i], cnt + 1 end
    end
    if cnt == 0 then fail(fn, 'the mask selects no voxel') end
    local mean, ss = sum / cnt, 0
    for i = 0, n - 1 do
      if not mp or mp.p[i] ~= 0 then ss = ss + (p[i] - mean) ^ 2 end
    end
    local std = math.sqrt(ss / cnt)
    if std == 0 then std = 1 end
    for i = 0, n - 1 do p[i] = (p[i] - mean) / std end
    return float_result(self, t)
  end

  -- percentile as numpy.percentile (linear): sorted values, position
  -- q/100 * (n - 1).
  local function percentile(sorted, n, q)
    local pos = q / 100 * (n - 1)
    local lo = floor(pos)
    local hi = min(lo + 1, n - 1)
    local f = pos - lo
    return sorted[lo] + (sorted[hi] - sorted[lo]) * f
  end

  function Image:clip_percentiles(lo, hi)
    local fn = 'clip_percentiles'
    check_image(fn, self, 'self')
    lo, hi = lo or 0.5, hi or 99.5
    if type(lo) ~= 'number' or type(hi) ~= 'number' or lo < 0 or hi > 100 or lo > hi then
      fail(fn, 'percentiles must be numbers with 0 <= lo <= hi <= 100, got %s and %s', tostring(lo), tostring(hi))
    end
    local t, p = f64_copy(self.data)
    local n = t:numel()
    if n == 0 then fail(fn, 'the image is empty') end
    local sorted_t = lumen.sort(t:reshape(-1)):contiguous() -- kept alive while read
    local sorted = ffi.cast('double*', sorted_t:data_ptr())
    local a, b = percentile(sorted, n, lo), percentile(sorted, n, hi)
    for i = 0, n - 1 do p[i] = min(max(p[i], a), b) end
    return float_result(self, t), a, b
  end

  -- window(center, width): CT windowing to [0, 1].
  function Image:window(center, width)
    local fn = 'window'
    check_image(fn, self, 'self')
    if type(center) ~= 'number' then fail(fn, 'center must be a number, got %s', type(center)) end
    if type(width) ~= 'number' or not (width > 0) then fail(fn, 'width must be a positive number, got %s', tostring(width)) end
    local t, p = f64_copy(self.data)
    local lo = center - width / 2
    for i = 0, t:numel() - 1 do p[i] = min(max((p[i] - lo) / width, 0), 1) end
    return float_result(self, t)
  end
end
