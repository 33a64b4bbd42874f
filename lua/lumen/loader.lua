-- loader.lua: patches cut from a list of cases, augmented and batched by
-- worker threads ahead of the training loop.
--
--   local loader = require 'lumen.loader'
--   local augment = require 'lumen.augment'
--   local dl = loader.new{
--     cases = {{image = t1, label = seg, id = 'sub-01'}, ...},
--     patch = {64, 64, 64}, batch = 2,
--     sampler = 'balanced', foreground = 0.33,      -- or 'uniform', 'grid'
--     transforms = {augment.flip{}, augment.affine{rotate = 15}},
--     workers = 2, seed = 1,
--   }
--   for i, b in dl:iter(250) do   -- b.image N x C x patch (f32),
--     ...                         -- b.label N x patch (i64), b.case, b.start
--   end
--   dl:close()
--
-- A case is {image =, label =, id =, spacing =}. image: a tensor
-- (channels x spatial, or spatial for one channel), a lumen.image, a file
-- path, or a list of these (modalities, stacked as channels); label: the
-- same kinds, one channel, integer values (float files are rounded;
-- label_from = 'nonzero' takes label > 0, as lumen.data's cases say), so
-- loader.new{cases = data.cases('colin27'), ...} works as it is.
-- Images are read when the loader is made, or by the workers each time a
-- case is sampled with `lazy = true` (then a file that cannot be read
-- fails that batch, naming the case). spacing (mm per voxel) comes from
-- lumen.image geometry unless given; augmentation rotates in millimetres.
--
-- Samplers. uniform: a case at random, a patch position at random inside
-- it (centred, and padded with cval, along axes shorter than the patch).
-- balanced: as nnU-Net, the last round(batch * foreground) items of each
-- batch are centred on a voxel of a foreground class (one of `classes`,
-- default every label above 0 present in the case, chosen uniformly),
-- the others uniform; with batch 1 each item is foreground with
-- probability `foreground`. grid: every case covered by windows whose
-- starts step by patch * (1 - overlap), the last flush with the end, in
-- order (b.start says where each patch lies, for stitching).
--
-- workers = N >= 1 runs N threads, each with its own LuaJIT state and
-- lumen context, up to `prefetch` batches (default 2N) ahead; workers = 0
-- makes each batch in the calling thread when it is asked for. Batch k
-- depends only on (seed, k): any number of workers gives the same batches,
-- and first_batch = k starts at batch k (a resumed run goes on as if it had
-- never stopped).
-- A worker's error reaches next() as a Lua error naming the batch, the
-- case and the reason; close() (or garbage collection) stops the threads.
-- pin_memory = true: batches land in pinned (page-locked) host tensors,
-- so that b.image:to('cuda') goes straight to the DMA and overlaps with
-- device work (ordinary tensors when no CUDA backend can pin).
local ffi = require 'ffi'
local lumen = require 'lumen'
local core = require 'lumen.core'
local augment = require 'lumen.augment'
local C, ctx = core.C, core.ctx

local loader = {}
local Loader = {}
Loader.__index = Loader

local MAX_LOCATIONS = 10000 -- per class and case, as nnU-Net keeps

-- ------------------------------------------------------------------
-- cases

local function is_image(v) return type(v) == 'table' and getmetatable(v) ~= nil and v.data ~= nil and v.affine ~= nil end

local function read(path, what, id)
  local ok, img = pcall(function() return require('lumen.image').read(path) end)
  if not ok then error(string.format('case %s: %s %s: %s', id, what, path, tostring(img):gsub('^lumen%.', '')), 0) end
  return img
end

-- One part (tensor, image or path) -> tensor with the spatial dims only
-- or channels first, and the spacing if known.
local function part_tensor(v, what, id)
  if type(v) == 'string' then v = read(v, what, id) end
  if is_image(v) then return v.data, v:spacing() end
  if lumen.is_tensor(v) then return v, nil end
  error(string.format('case %s: %s must be a tensor, a lumen.image or a file path, got %s', id, what, type(v)), 0)
end

-- The case's image as channels x spatial f32 and its label as spatial
-- (integer), checked against the patch's number of spatial dims n.
local function load_case(case, n)
  local id = case.id
  local parts = type(case.image) == 'table' and not is_image(case.image) and not lumen.is_tensor(case.image)
      and case.image or { case.image }
  local chans, spacing = {}, case.spacing
  for i, p in ipairs(parts) do
    local t, sp = part_tensor(p, 'image', id)
    spacing = spacing or sp
    if t:dim() == n then t = t:unsqueeze(0) end
    if t:dim() ~= n + 1 then
      error(string.format('case %s: image is %d-D, expected %d spatial dims (with or without channels first)', id, t:dim(), n), 0)
    end
    chans[i] = t:to('f32')
  end
  if #chans == 0 then error(string.format('case %s: no image', id), 0) end
  local img = #chans == 1 and chans[1] or lumen.cat(chans, 0)
  local lab
  if case.label ~= nil then
    local t, sp = part_tensor(case.label, 'label', id)
    spacing = spacing or sp
    if t:dim() == n + 1 and t:size(0) == 1 then t = t:squeeze(0) end
    local same = t:dim() == n
    for a = 1, n do same = same and t:size(a - 1) == img:size(a) end
    if not same then
      local s, l = img:size(), t:size()
      table.remove(s, 1)
      error(string.format('case %s: label is %s but the image is %s', id, table.concat(l, 'x'), table.concat(s, 'x')), 0)
    end
    if case.label_from == 'nonzero' then t = t:gt(0) end -- a masked image as the mask (lumen.data)
    if core.is_float(core.dtype_code(t:dtype())) then t = t:round() end
    lab = t:to(t:dtype() == 'u8' and 'u8' or 'i32'):contiguous()
  end
  if spacing then spacing = { unpack(spacing, 1, n) } end
  return img:contiguous(), lab, spacing
end

-- ------------------------------------------------------------------
-- the work of one batch (run by the workers, or in place)

local function grid_starts(size, patch, overlap)
  local starts = {}
  if size <= patch then return { math.floor((size - patch) / 2) } end
  local step = math.max(1, math.floor(patch * (1 - overlap)))
  local s = 0
  while s + patch < size do
    starts[#starts + 1] = s
    s = s + step
  end
  starts[#starts + 1] = size - patch
  return starts
end

-- cfg: the loader's settings with cases {image, label, spacing, id} where
-- image/label are tensors (or the raw case with lazy = true).
function loader.producer(cfg)
  local n, patch = #cfg.patch, cfg.patch
  local loaded, order = {}, {} -- lazily read cases (most recent last)
  local locations = {}

  local function case_data(i)
    local c = cfg.cases[i]
    if not cfg.lazy then return c.image, c.label, c.spacing end
    local hit = loaded[i]
    if not hit then
      local img, lab, sp = load_case(c.raw, n)
      hit = { img, lab, sp }
      loaded[i] = hit
      order[#order + 1] = i
      if #order > cfg.cache then loaded[table.remove(order, 1)] = nil end
    end
    return hit[1], hit[2], hit[3]
  end

  local function fg_location(i, lab, rng)
    local locs = locations[i]
    if not locs then
      locs = augment.class_locations(lab, MAX_LOCATIONS, cfg.seed + i)
      locations[i] = locs
    end
    local choices = {}
    for _, c in ipairs(cfg.classes or {}) do
      if locs[c + 1] and locs[c + 1]:size(0) > 0 then choices[#choices + 1] = c end
    end
    if not cfg.classes then
      for c = 1, #locs - 1 do if locs[c + 1]:size(0) > 0 then choices[#choices + 1] = c end end
    end
    if #choices == 0 then return nil end
    local l = locs[choices[rng:int(1, #choices)] + 1]
    local flat = l[rng:int(0, l:size(0) - 1)]
    local at, size = {}, lab:size()
    for a = n, 1, -1 do
      at[a] = flat % size[a]
      flat = (flat - at[a]) / size[a]
    end
    return at
  end

  -- windows of the grid sampler: {case, start} over all cases, in order
  local windows
  local function grid_window(k)
    if not windows then
      windows = {}
      for i, c in ipairs(cfg.cases) do
        local img = case_data(i)
        local per = {}
        for a = 1, n do per[a] = grid_starts(img:size(a), patch[a], cfg.overlap) end
        local idx = {}
        for a = 1, n do idx[a] = 1 end
        repeat
          local s = {}
          for a = 1, n do s[a] = per[a][idx[a]] end
          windows[#windows + 1] = { i, s }
          local a = n
          while a >= 1 do
            idx[a] = idx[a] + 1
            if idx[a] <= #per[a] then break end
            idx[a] = 1
            a = a - 1
          end
        until a < 1
      end
    end
    return windows[k % #windows + 1]
  end

  local function item(job, b)
    local rng = augment.rng(cfg.seed, job, b)
    local i, start
    if cfg.sampler == 'grid' then
      local w = grid_window(job * cfg.batch + b)
      i, start = w[1], w[2]
    else
      i = rng:int(1, #cfg.cases)
    end
    local id = cfg.cases[i].id
    local ok, img, lab, where = pcall(function()
      local img, lab, spacing = case_data(i)
      if not start then
        local forced = false
        if cfg.sampler == 'balanced' then
          if cfg.batch == 1 then forced = rng:chance(cfg.foreground)
          else forced = b >= math.floor(cfg.batch * (1 - cfg.foreground) + 0.5) end
        end
        local at = forced and lab and fg_location(i, lab, rng)
        start = {}
        for a = 1, n do
          local size = img:size(a)
          if at then start[a] = at[a] - math.floor(patch[a] / 2)
          elseif size >= patch[a] then start[a] = rng:int(0, size - patch[a])
          else start[a] = math.floor((size - patch[a]) / 2) end
        end
      end
      local centre = {}
      for a = 1, n do centre[a] = start[a] + (patch[a] - 1) / 2 end
      local pi, pl = augment.sample(cfg.transforms, img, lab, { patch = patch, centre = centre, spacing = spacing,
        rng = rng, cval = cfg.cval, label_cval = cfg.label_cval })
      return pi, pl, start
    end)
    if not ok then
      error(string.format('lumen.loader: batch %d, item %d, case %s: %s', job, b, tostring(id),
        tostring(img):gsub('^lumen%.loader: ', '')), 0)
    end
    return img, lab, i, where
  end

  -- the items as one batch tensor (of dtype, when given); pinned with
  -- pin_memory, each item copied straight into its slice
  local function stack(items, dtype)
    if not cfg.pin_memory then
      local t = lumen.stack(items, 0)
      if dtype then t = t:to(dtype) end
      return t
    end
    local shape = items[1]:size()
    table.insert(shape, 1, #items)
    local t = lumen.empty(shape, { dtype = dtype or items[1]:dtype(), pin_memory = true })
    for b, x in ipairs(items) do t:select(0, b - 1):copy_(x) end
    return t
  end

  return function(job)
    local imgs, labs, meta = {}, {}, {}
    for b = 0, cfg.batch - 1 do
      local img, lab, i, start = item(job, b)
      imgs[b + 1], labs[b + 1] = img, lab
      local row = { i - 1 }
      for a = 1, n do row[a + 1] = start[a] end
      meta[b + 1] = row
    end
    local out = { stack(imgs), lumen.tensor(meta):to('i64') }
    if #labs == cfg.batch then out[3] = stack(labs, 'i64') end
    return out
  end
end

-- ------------------------------------------------------------------
-- worker threads

-- Lua source for a value: numbers, strings, booleans, tables, and tensors
-- (by address; the loader keeps them alive while workers run).
local function serialize(v, out)
  local t = type(v)
  if t == 'number' then out[#out + 1] = string.format('%.17g', v)
  elseif t == 'string' then out[#out + 1] = string.format('%q', v)
  elseif t == 'boolean' or t == 'nil' then out[#out + 1] = tostring(v)
  elseif lumen.is_tensor(v) then
    out[#out + 1] = string.format('T(0x%xULL)', tonumber(ffi.cast('uintptr_t', core.handle(v, 'loader', 'tensor'))))
  elseif t == 'table' and not is_image(v) then
    out[#out + 1] = '{'
    for k, x in pairs(v) do
      out[#out + 1] = '['
      serialize(k, out)
      out[#out + 1] = ']='
      serialize(x, out)
      out[#out + 1] = ','
    end
    out[#out + 1] = '}'
  else
    error('lumen.loader: cannot hand a ' .. t .. ' to the workers', 0)
  end
  return out
end

local WORKER = [[
local ld, index = ...
package.path, package.cpath = %q, %q
local ffi = require 'ffi'
local lumen = require 'lumen'
local core = require 'lumen.core'
core.in_worker = true -- the process has its backends already: do not load them here
core.C.lm_ctx_set_loop_threads(core.ctx, %d)
local function T(address)
  local h = ffi.cast('lm_tensor*', address)
  core.C.lm_tensor_retain(h)
  return core.wrap(h)
end
return require('lumen.loader').worker(ffi.cast('lm_loader*', ld), %s)
]]

-- The produce function a worker's state hands to the C loop.
function loader.worker(ld, cfg)
  local produce = loader.producer(cfg)
  local arr = ffi.new('lm_tensor*[16]')
  return function(job)
    local ts = produce(job + cfg.first)
    for i, t in ipairs(ts) do arr[i - 1] = t.h end
    C.lm_loader_put(ld, job, #ts, arr)
  end
end

-- ------------------------------------------------------------------
-- the loader

local SAMPLERS = { uniform = true, balanced = true, grid = true }

function loader.new(opts)
  local op = 'loader'
  if type(opts) ~= 'table' then error('lumen.loader.new: expected an options table', 2) end
  core.options(opts, op, { 'cases', 'patch', 'batch', 'sampler', 'foreground', 'classes', 'overlap', 'transforms',
    'workers', 'prefetch', 'seed', 'cval', 'label_cval', 'lazy', 'cache', 'threads', 'first_batch', 'pin_memory' }, 2)
  local function bad(fmt, ...) error(string.format('lumen.loader: ' .. fmt, ...), 3) end
  if type(opts.cases) ~= 'table' or #opts.cases == 0 then bad('cases must be a non-empty list of cases') end
  local patch = opts.patch
  if type(patch) ~= 'table' or (#patch ~= 2 and #patch ~= 3) then bad('patch must be a list of 2 or 3 sizes') end
  for a, p in ipairs(patch) do
    if not core.is_int(p) or p < 1 then bad('patch size %s along axis %d, expected a positive integer', tostring(p), a - 1) end
  end
  local function int_opt(name, default, lo)
    local v = opts[name] == nil and default or opts[name]
    if not core.is_int(v) or v < lo then bad('%s must be an integer >= %d, got %s', name, lo, tostring(v)) end
    return v
  end
  local sampler = opts.sampler or 'uniform'
  if not SAMPLERS[sampler] then bad("sampler '%s', expected 'uniform', 'balanced' or 'grid'", tostring(sampler)) end
  local foreground = core.number(opts.foreground, op, 'foreground', 0.33, 3)
  if foreground < 0 or foreground > 1 then bad('foreground must be in [0, 1]') end
  local overlap = core.number(opts.overlap, op, 'overlap', 0.5, 3)
  if overlap < 0 or overlap >= 1 then bad('overlap must be in [0, 1)') end
  if opts.classes ~= nil then
    if type(opts.classes) ~= 'table' then bad('classes must be a list of label values') end
    for _, c in ipairs(opts.classes) do if not core.is_int(c) or c < 0 then bad('classes must be label values >= 0') end end
  end
  local transforms = opts.transforms or {}
  for k, t in ipairs(transforms) do
    if type(t) ~= 'table' or not t.kind then bad('transforms[%d] is not an augment transform', k) end
  end
  local workers = int_opt('workers', 0, 0)
  local first = int_opt('first_batch', 0, 0)
  local self = setmetatable({ workers = workers, job = first, n = #patch }, Loader)
  local cfg = { patch = patch, batch = int_opt('batch', 1, 1), sampler = sampler, foreground = foreground,
    classes = opts.classes, overlap = overlap, transforms = transforms, seed = int_opt('seed', 0, 0),
    cval = core.number(opts.cval, op, 'cval', 0, 3), label_cval = core.number(opts.label_cval, op, 'label_cval', 0, 3),
    lazy = opts.lazy and true or false, cache = int_opt('cache', 1, 0), first = first, cases = {},
    pin_memory = opts.pin_memory and true or false }
  if cfg.pin_memory and core.pinning then core.pinning() end -- load the backend here, before the workers
  for i, case in ipairs(opts.cases) do
    if type(case) ~= 'table' or case.image == nil then bad('cases[%d] must be a table with an image', i) end
    local id = case.id or tostring(i)
    if cfg.lazy then
      cfg.cases[i] = { id = id, raw = { image = case.image, label = case.label, spacing = case.spacing, id = id,
        label_from = case.label_from } }
      if sampler == 'balanced' and case.label == nil then bad('case %s has no label for the balanced sampler', id) end
    else
      local ok, img, lab, spacing = pcall(load_case, { image = case.image, label = case.label, spacing = case.spacing,
        id = id, label_from = case.label_from }, #patch)
      if not ok then error('lumen.loader: ' .. tostring(img), 2) end
      if sampler == 'balanced' and not lab then bad('case %s has no label for the balanced sampler', id) end
      cfg.cases[i] = { id = id, image = img, label = lab, spacing = spacing }
    end
  end
  self.cfg = cfg
  if workers == 0 then
    self.produce = loader.producer(cfg)
  else
    local script = string.format(WORKER, package.path, package.cpath, int_opt('threads', 1, 1),
      table.concat(serialize(cfg, {})))
    local out = ffi.new('lm_loader*[1]')
    core.check(C.lm_loader_new(ctx, script, workers, int_opt('prefetch', 2 * workers, 1), out), 2)
    self.handle = ffi.gc(out[0], C.lm_loader_free)
    self.slots = ffi.new('lm_tensor*[16]')
    self.count = ffi.new('int32_t[1]')
  end
  return self
end

-- The number of grid windows (grid sampler): one pass is
-- ceil(windows / batch) batches.
function Loader:windows()
  local n, total = self.n, 0
  for _, c in ipairs(self.cfg.cases) do
    if not c.image then error('lumen.loader: windows() needs the cases loaded (lazy = false)', 2) end
    local w = 1
    for a = 1, n do w = w * #grid_starts(c.image:size(a), self.cfg.patch[a], self.cfg.overlap) end
    total = total + w
  end
  return total
end

-- next() -> {image =, label =, case = {0-based case indices}, id = {...},
-- start = {{patch start voxel per axis}, ...}}
function Loader:next()
  if self.closed then error('lumen.loader: next() after close()', 2) end
  local ts
  if self.workers == 0 then
    local ok, r = pcall(self.produce, self.job)
    if not ok then error(r, 2) end
    ts = r
  else
    local st = C.lm_loader_take(ctx, self.handle, 16, self.slots, self.count)
    if st ~= 0 then
      local msg = ffi.string(C.lm_ctx_errmsg(ctx))
      C.lm_ctx_clear_error(ctx)
      if st ~= C.LM_E_WORKER then msg = 'lumen.' .. msg end
      error(msg, 2)
    end
    ts = {}
    for i = 1, self.count[0] do ts[i] = core.wrap(self.slots[i - 1]) end
  end
  self.job = self.job + 1
  local batch = { image = ts[1], label = ts[3], case = {}, id = {}, start = {} }
  for b, row in ipairs(ts[2]:totable()) do
    batch.case[b] = row[1]
    batch.id[b] = self.cfg.cases[row[1] + 1].id
    batch.start[b] = { unpack(row, 2) }
  end
  return batch
end

-- iter(n): for i, batch in dl:iter(n) (i from 1); n defaults to one pass
-- over the grid for the grid sampler.
function Loader:iter(n)
  if n == nil and self.cfg.sampler == 'grid' then n = math.ceil(self:windows() / self.cfg.batch) end
  if not core.is_int(n) or n < 0 then error('lumen.loader: iter(n) needs a number of batches', 2) end
  local i = 0
  return function()
    if i >= n then return nil end
    i = i + 1
    return i, self:next()
  end
end

function Loader:close()
  if self.handle then
    C.lm_loader_free(ffi.gc(self.handle, nil))
    self.handle = nil
  end
  self.closed = true
end

return loader
