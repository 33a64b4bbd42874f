-- The batch loader: samplers, worker threads, their errors and shutdown.
local lumen = require 'lumen'
local augment = require 'lumen.augment'
local loader = require 'lumen.loader'
local image = require 'lumen.image'
local scratch = require 'helpers.scratch'
local check = require 'helpers.check'

-- cases with one small foreground box each, at a different place
local function make_cases(n, shape)
  local cases = {}
  for i = 1, n do
    local lab = lumen.zeros(shape):to('i32')
    lab:narrow(0, 2 + i, 3):narrow(1, 5, 4):narrow(2, 1 + i, 2):fill_(i % 2 + 1)
    cases[i] = { image = lumen.randn(2, shape[1], shape[2], shape[3]), label = lab, id = 'case' .. i }
  end
  return cases
end

local function thread_count()
  local f = assert(io.open('/proc/self/status'))
  local n = tonumber(f:read('*a'):match('\nThreads:%s*(%d+)'))
  f:close()
  return n
end

describe('loader', function()
  local cases = make_cases(3, { 16, 18, 14 })
  local transforms = { augment.flip{}, augment.affine{ rotate = 10, scale = { 0.9, 1.1 }, p = 0.5 },
    augment.elastic{ magnitude = 1.5, spacing = 6, p = 0.5 }, augment.noise{ p = 0.5 }, augment.gamma{ p = 0.3 } }

  local function digest(dl, n)
    local out = {}
    for i, b in dl:iter(n) do
      out[i] = string.format('%.7g|%d|%s|%s', b.image:sum():item(), b.label:sum():item(), table.concat(b.id, ','),
        table.concat(b.start[1], ','))
    end
    dl:close()
    return out
  end

  it('gives the same batches with 0, 1 or 3 workers', function()
    local function run(w)
      return digest(loader.new{ cases = cases, patch = { 8, 8, 8 }, batch = 3, sampler = 'balanced',
        transforms = transforms, workers = w, seed = 11 }, 6)
    end
    local a, b, c = run(0), run(1), run(3)
    assert.same(a, b)
    assert.same(a, c)
    local d = digest(loader.new{ cases = cases, patch = { 8, 8, 8 }, batch = 3, sampler = 'balanced',
      transforms = transforms, workers = 0, seed = 12 }, 6)
    assert.are_not.same(a, d)
  end)

  it('uniform patches are exact crops at the reported start, with the image dtype and shapes', function()
    local dl = loader.new{ cases = cases, patch = { 8, 6, 5 }, batch = 2, workers = 2, seed = 3 }
    for _, b in dl:iter(5) do
      assert.same({ 2, 2, 8, 6, 5 }, b.image:size())
      assert.same({ 2, 8, 6, 5 }, b.label:size())
      assert.equal('f32', b.image:dtype())
      assert.equal('i64', b.label:dtype())
      for k = 1, 2 do
        local c, s = cases[b.case[k] + 1], b.start[k]
        assert.equal(c.id, b.id[k])
        local want = c.image:narrow(1, s[1], 8):narrow(2, s[2], 6):narrow(3, s[3], 5)
        check.close(b.image:select(0, k - 1), want, { atol = 0 })
        check.close(b.label:select(0, k - 1), c.label:narrow(0, s[1], 8):narrow(1, s[2], 6):narrow(2, s[3], 5):to('i64'), { atol = 0 })
      end
    end
    dl:close()
  end)

  it('balanced sampling centres the last third of each batch on foreground', function()
    local dl = loader.new{ cases = cases, patch = { 7, 7, 7 }, batch = 3, sampler = 'balanced', foreground = 0.33,
      workers = 1, seed = 5 }
    local fg_other = 0
    for _, b in dl:iter(20) do
      -- item 2 (0-based) is forced: the voxel at the patch centre is foreground
      assert.is_true(b.label[{ 2, 3, 3, 3 }] > 0)
      for k = 0, 1 do if b.label[{ k, 3, 3, 3 }] > 0 then fg_other = fg_other + 1 end end
    end
    dl:close()
    assert.is_true(fg_other < 20) -- the others are uniform (boxes are small)
    -- classes restricts the choice
    dl = loader.new{ cases = cases, patch = { 7, 7, 7 }, batch = 1, sampler = 'balanced', foreground = 1,
      classes = { 2 }, seed = 1 }
    for _, b in dl:iter(10) do
      local id = b.case[1] + 1
      if id % 2 == 1 then assert.equal(2, b.label[{ 0, 3, 3, 3 }]) end -- cases with class 2
    end
  end)

  it('grid windows cover every case and stitch back exactly', function()
    local small = { { image = lumen.randn(1, 11, 9, 7), id = 'a' }, { image = lumen.randn(1, 5, 9, 12), id = 'b' } }
    local dl = loader.new{ cases = small, patch = { 6, 6, 6 }, batch = 4, sampler = 'grid', overlap = 0.5, workers = 2 }
    -- per axis: starts 0, 3, ... and one flush with the end; shorter axes centred
    local function count(size, p)
      if size <= p then return 1 end
      return math.ceil((size - p) / 3) + 1
    end
    local total = count(11, 6) * count(9, 6) * count(7, 6) + count(5, 6) * count(9, 6) * count(12, 6)
    assert.equal(total, dl:windows())
    local rebuilt = { lumen.zeros(1, 11, 9, 7), lumen.zeros(1, 5, 9, 12) }
    local seen = 0
    for _, b in dl:iter() do
      for k = 1, #b.id do
        seen = seen + 1
        if seen <= total then
          local s, dst = b.start[k], rebuilt[b.case[k] + 1]
          local patch = b.image:select(0, k - 1)
          -- keep the part inside the volume
          local lo, len = {}, {}
          for a = 1, 3 do
            lo[a] = math.max(0, -s[a])
            len[a] = math.min(6 - lo[a], dst:size(a) - s[a] - lo[a])
          end
          dst:narrow(1, s[1] + lo[1], len[1]):narrow(2, s[2] + lo[2], len[2]):narrow(3, s[3] + lo[3], len[3])
            :copy_(patch:narrow(1, lo[1], len[1]):narrow(2, lo[2], len[2]):narrow(3, lo[3], len[3]))
          if s[1] < 0 then -- padded with cval (0) outside
            assert.equal(0, patch:narrow(1, 0, lo[1]):abs():max():item())
          end
        end
      end
    end
    dl:close()
    assert.is_true(seen >= total)
    check.close(rebuilt[1], small[1].image, { atol = 0 })
    check.close(rebuilt[2], small[2].image, { atol = 0 })
  end)

  it('cuts 2-D slices from volumes with in-plane augmentation only', function()
    -- the image is its slice index: any through-plane motion would show
    local vol = lumen.arange(5):to('f32'):reshape(1, 1, 5):expand(80, 80, 5):contiguous()
    local dl = loader.new{ cases = { { image = vol } }, patch = { 12, 12, 1 }, batch = 4, seed = 2,
      transforms = { augment.affine{ rotate = { 0, 0, 30 }, scale = { 0.8, 1.2 }, p = 1 }, augment.elastic{ magnitude = 2, spacing = 4, p = 1 } } }
    local checked = 0
    for _, b in dl:iter(5) do
      assert.same({ 4, 1, 12, 12, 1 }, b.image:size())
      for k = 1, 4 do
        local s = b.start[k]
        if s[1] >= 16 and s[1] <= 52 and s[2] >= 16 and s[2] <= 52 then -- sampled well inside
          local patch = b.image:select(0, k - 1)
          assert.equal(0, (patch - s[3]):abs():max():item())
          checked = checked + 1
        end
      end
    end
    assert.is_true(checked >= 3)
  end)

  it('stacks modalities, reads files and takes spacing from lumen.image', function()
    local dir, P = scratch.dir()
    local t1, t2 = lumen.randn(12, 10, 8), lumen.randn(12, 10, 8)
    local aff = { { 1, 0, 0, 0 }, { 0, 1, 0, 0 }, { 0, 0, 3, 0 }, { 0, 0, 0, 1 } }
    image.new(t1, { affine = aff }):write(P('t1.nii.gz'))
    image.new(t2, { affine = aff }):write(P('t2.nii'))
    image.new((t1:gt(1)):to('i32'), { affine = aff }):write(P('seg.nii.gz'))
    for _, lazy in ipairs { false, true } do
      local dl = loader.new{ cases = { { image = { P('t1.nii.gz'), P('t2.nii') }, label = P('seg.nii.gz'), id = 's' } },
        patch = { 12, 10, 8 }, batch = 1, workers = 1, lazy = lazy }
      local b = dl:next()
      check.close(b.image:select(0, 0):select(0, 0), t1, { atol = 0 })
      check.close(b.image:select(0, 0):select(0, 1), t2, { atol = 0 })
      check.close(b.label:select(0, 0), t1:gt(1):to('i64'), { atol = 0 })
      dl:close()
    end
    local dl = loader.new{ cases = { { image = image.read(P('t1.nii.gz')) } }, patch = { 4, 4, 4 } }
    assert.same({ 1, 1, 3 }, dl.cfg.cases[1].spacing)
    os.execute('rm -rf ' .. dir)
  end)

  it('reports a worker failure as a Lua error naming the batch, case and file, then goes on', function()
    local dir, P = scratch.dir()
    image.new(lumen.randn(10, 10, 10)):write(P('good.nii'))
    scratch.write(P('bad.nii'), string.rep('x', 400))
    local dl = loader.new{ cases = { { image = P('bad.nii'), id = 'broken' } }, patch = { 4, 4, 4 }, workers = 2, lazy = true }
    local ok, e = pcall(dl.next, dl)
    assert.is_false(ok)
    assert.matches('lumen.loader: batch 0, item 0, case broken', e, 1, true)
    assert.matches('bad.nii', e, 1, true)
    ok, e = pcall(dl.next, dl) -- the next batch fails on its own, no hang
    assert.matches('batch 1', e, 1, true)
    dl:close()
    -- a mix: batches from good cases still arrive
    dl = loader.new{ cases = { { image = P('good.nii'), id = 'good' }, { image = P('bad.nii'), id = 'broken' } },
      patch = { 4, 4, 4 }, workers = 2, lazy = true, seed = 1 }
    local good, bad = 0, 0
    for _ = 1, 12 do
      local fine = pcall(dl.next, dl)
      if fine then good = good + 1 else bad = bad + 1 end
    end
    dl:close()
    assert.is_true(good > 0 and bad > 0)
    os.execute('rm -rf ' .. dir)
  end)

  it('stops its threads on close and on collection, and keeps memory flat', function()
    -- the main thread's own OpenMP team starts with its first parallel loop
    loader.new{ cases = cases, patch = { 8, 8, 8 }, batch = 2, workers = 0 }:next()
    lumen.randn(1000, 1000):sum()
    local base = thread_count()
    for _ = 1, 5 do
      local dl = loader.new{ cases = cases, patch = { 8, 8, 8 }, batch = 2, workers = 3, prefetch = 2 }
      dl:next()
      if _ % 2 == 0 then dl:close() end -- the others are collected
    end
    collectgarbage('collect')
    collectgarbage('collect')
    assert.equal(base, thread_count())
    -- workers collect their own garbage when they see fit; once closed,
    -- every tensor they made is gone
    collectgarbage('collect')
    local live = lumen.memory().live
    local dl = loader.new{ cases = cases, patch = { 8, 8, 8 }, batch = 2, workers = 2, transforms = transforms }
    for _ = 1, 30 do dl:next() end
    dl:close()
    collectgarbage('collect')
    assert.equal(live, lumen.memory().live)
    assert.has_error(function() dl:next() end, 'lumen.loader: next() after close()')
  end)

  it('puts batches in pinned tensors with pin_memory, the same batches, sent to the device without staging', function()
    local ffi = require 'ffi'
    local dir = lumen.core.libpath:match('^(.*)/[^/]*$') or 'build'
    local path = dir .. '/tests/plugins/fake_device.so'
    local f = io.open(path, 'rb')
    if not f then return pending('tests/plugins/fake_device.so is not built (make test builds it)') end
    f:close()
    pcall(ffi.cdef, [[
      const lm_backend *lm_fake_backend(void);
      void lm_fake_pinned_counters(int64_t *out);
    ]])
    local fake = ffi.load(path)
    collectgarbage('collect')
    lumen.cuda.reset()
    lumen.cuda.use_backend(fake.lm_fake_backend(), 'fake device', fake)
    local ok, e = pcall(function()
      local opts = { cases = cases, patch = { 8, 8, 8 }, batch = 2, sampler = 'balanced', transforms = transforms,
        seed = 5 }
      local plain = digest(loader.new(opts), 4)
      for _, w in ipairs { 0, 2 } do
        opts.workers, opts.pin_memory = w, true
        local dl = loader.new(opts)
        local b = dl:next()
        assert.is_true(b.image:is_pinned())
        assert.is_true(b.label:is_pinned())
        assert.equal('i64', b.label:dtype())
        local c = ffi.new('int64_t[5]')
        fake.lm_fake_pinned_counters(c)
        local before = tonumber(c[3])
        local d = b.image:to('cuda')
        fake.lm_fake_pinned_counters(c)
        assert.equal(b.image:numel() * 4, tonumber(c[3]) - before) -- copy_h2d_async, straight from the batch
        assert.same(b.image:totable(), d:cpu():totable())
        dl:close()
        assert.same(plain, digest(loader.new(opts), 4))
      end
      collectgarbage('collect')
      collectgarbage('collect')
      assert.equal(0, lumen.memory('pinned').live)
    end)
    collectgarbage('collect')
    lumen.cuda.reset()
    assert(ok, e)
    -- without a backend: ordinary tensors
    local dl = loader.new{ cases = cases, patch = { 8, 8, 8 }, batch = 2, pin_memory = true }
    assert.is_false(dl:next().image:is_pinned())
  end)

  it('refuses bad settings by name', function()
    local function err(opts)
      local ok, e = pcall(loader.new, opts)
      assert.is_false(ok)
      return e
    end
    assert.matches("unknown option 'wokers'", err{ cases = cases, patch = { 4, 4, 4 }, wokers = 2 }, 1, true)
    assert.matches("sampler 'balance'", err{ cases = cases, patch = { 4, 4, 4 }, sampler = 'balance' }, 1, true)
    assert.matches('patch must be a list of 2 or 3 sizes', err{ cases = cases, patch = 4 }, 1, true)
    assert.matches('case case1: image is 4-D, expected 2 spatial dims', err{ cases = cases, patch = { 4, 4 } }, 1, true)
    local bad = { { image = lumen.randn(6, 6, 6), label = lumen.zeros(6, 6, 5):to('i32'), id = 'x' } }
    assert.matches('case x: label is 6x6x5 but the image is 6x6x6', err{ cases = bad, patch = { 4, 4, 4 } }, 1, true)
    assert.matches('case x: image /nonexistent.nii', err{ cases = { { image = '/nonexistent.nii', id = 'x' } }, patch = { 4, 4, 4 } }, 1, true)
    assert.matches('no label for the balanced sampler', err{ cases = { { image = lumen.randn(6, 6, 6) } }, patch = { 4, 4, 4 }, sampler = 'balanced' }, 1, true)
    assert.matches('overlap must be in', err{ cases = cases, patch = { 4, 4, 4 }, overlap = 1 }, 1, true)
    assert.matches('workers must be an integer', err{ cases = cases, patch = { 4, 4, 4 }, workers = -1 }, 1, true)
  end)
end)
