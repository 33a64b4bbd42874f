-- lumen.data: fetching Debian packages into the cache (from a fixture .deb
-- built here, never the network), the synthetic generators, and the
-- `lumen data` commands.
local lumen = require 'lumen'
local image = require 'lumen.image'
local data = require 'lumen.data'

local build = lumen.core.libpath:match('^(.*)/[^/]*$') or 'build'
local exe = build .. '/lumen'

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local sh = data.sh

local function tmpdir()
  local rc, dir = sh('mktemp -d /tmp/lumen_data_spec.XXXXXX')
  assert(rc == 0, dir)
  return dir
end

local function listing(dir)
  local _, out = sh('ls -A ' .. q(dir))
  local names = {}
  for n in out:gmatch('[^\n]+') do names[#names + 1] = n end
  table.sort(names)
  return names
end

-- Runs the lumen program; returns its output (stdout and stderr) and exit code.
local function lumen_run(env, args)
  local rc, out = sh(env .. ' ' .. q(exe) .. ' ' .. args .. ' </dev/null')
  return out, rc
end

local function write(path, text)
  local f = assert(io.open(path, 'w'))
  f:write(text)
  f:close()
end

local work = tmpdir()
-- The fixture package: a tiny NIfTI written by lumen under usr/share/.
local debs = work .. '/debs'
local volume = lumen.arange(24):to('f32'):reshape(2, 3, 4)
do
  local tree = work .. '/tree'
  assert(sh('mkdir -p ' .. q(tree .. '/DEBIAN') .. ' ' .. q(tree .. '/usr/share/lumen-fixture') .. ' ' .. q(debs)) == 0)
  write(tree .. '/DEBIAN/control', table.concat({
    'Package: lumen-fixture', 'Version: 1.0', 'Architecture: all',
    'Maintainer: lumen <lumen@example.org>', 'Description: a tiny NIfTI for lumen specs', '' }, '\n'))
  image.new(volume, { affine = { { 2, 0, 0, -1 }, { 0, 2, 0, -2 }, { 0, 0, 2, -3 }, { 0, 0, 0, 1 } } })
    :write(tree .. '/usr/share/lumen-fixture/tiny.nii')
  local rc, msg = sh('dpkg-deb --root-owner-group --build ' .. q(tree) .. ' ' .. q(debs .. '/lumen-fixture_1.0_all.deb'))
  assert(rc == 0, msg)
  write(debs .. '/lumen-broken_1.0_all.deb', 'this is not a Debian package\n')
end

local fixture_def = {
  name = 'fixture', packages = { 'lumen-fixture' },
  cases = function(root, dirs)
    return { { id = 'tiny', image = dirs['lumen-fixture'] .. '/usr/share/lumen-fixture/tiny.nii' } }
  end,
}

describe('lumen.data fetching', function()
  local cache = work .. '/cache'

  it('unpacks a package into the cache once', function()
    local root, dirs, done = data.fetch(fixture_def, { cache = cache, deb_dir = debs })
    assert.are.equal(cache, root)
    assert.are.equal(cache .. '/lumen-fixture', dirs['lumen-fixture'])
    assert.are.same({ 'lumen-fixture' }, done)
    assert.are.same({ 'lumen-fixture' }, listing(cache)) -- no temporary folder left
    local img = image.read(dirs['lumen-fixture'] .. '/usr/share/lumen-fixture/tiny.nii')
    assert.are.same(volume:totable(), img.data:totable())
    assert.are.equal(2, img.affine[1][1])

    -- the second fetch finds the folder and does nothing (it would fail if
    -- it looked for the .deb again)
    local moved = work .. '/moved.deb'
    assert(os.rename(debs .. '/lumen-fixture_1.0_all.deb', moved))
    local ok, r2, dirs2, done2 = pcall(data.fetch, fixture_def, { cache = cache, deb_dir = debs })
    assert(os.rename(moved, debs .. '/lumen-fixture_1.0_all.deb'))
    assert(ok, r2)
    assert.are.same({}, done2)
    assert.are.equal(dirs['lumen-fixture'], dirs2['lumen-fixture'])

    local cases = data.cases(fixture_def, { cache = cache, deb_dir = debs })
    assert.are.equal(1, #cases)
    local im = data.load(cases[1])
    assert.are.same({ 2, 3, 4 }, im.data:size())
  end)

  it('leaves nothing behind and names the package when unpacking fails', function()
    local c = work .. '/cache_fail'
    local ok, err = pcall(data.fetch_package, 'lumen-broken', { cache = c, deb_dir = debs })
    assert.is_false(ok)
    assert.truthy(err:find("lumen.data.fetch: package 'lumen-broken': `dpkg -x", 1, true), err)
    assert.truthy(err:find('lumen-broken_1.0_all.deb', 1, true), err)
    assert.truthy(err:find('dpkg-deb', 1, true), err) -- dpkg's own message comes along
    assert.are.same({}, listing(c))

    ok, err = pcall(data.fetch_package, 'lumen-missing', { cache = c, deb_dir = debs })
    assert.is_false(ok)
    assert.truthy(err:find("package 'lumen-missing': no lumen-missing_*.deb in", 1, true), err)
    assert.are.same({}, listing(c))
  end)

  it('reports what apt-get says when it cannot download', function()
    -- an unknown name fails from the local package lists, without network
    local c = work .. '/cache_apt'
    local ok, err = pcall(data.fetch_package, 'lumen-no-such-package-zz9', { cache = c, deb_dir = '' })
    assert.is_false(ok)
    assert.truthy(err:find("package 'lumen-no-such-package-zz9': `apt-get download lumen-no-such-package-zz9` failed", 1, true), err)
    -- apt-get's own message follows (E: ... locate package ...)
    local msg = err:match('failed %(exit %d+%): (.+)$')
    assert.truthy(msg and msg:find('E:', 1, true), err)
    assert.are.same({}, listing(c))
  end)

  it('refuses bad names', function()
    assert.has_error(function() data.fetch_package('bad name; rm', { cache = work .. '/x' }) end,
      'lumen.data.fetch: bad package name bad name; rm')
    local ok, err = pcall(data.get, 'no_such_dataset')
    assert.is_false(ok)
    assert.truthy(err:find("lumen.data: no dataset 'no_such_dataset'", 1, true), err)
  end)
end)

-- Reference painting in plain Lua, pixel by pixel, from the parameters.
local function inside2(x, y, e)
  local t = math.rad(e[6])
  local dx, dy = x - e[4], y - e[5]
  local u = dx * math.cos(t) + dy * math.sin(t)
  local v = dy * math.cos(t) - dx * math.sin(t)
  local d = (u / e[2]) ^ 2 + (v / e[3]) ^ 2
  return d <= 1, math.abs(d - 1) < 1e-9
end

describe('synthetic datasets', function()
  local ph = data.get('phantoms')
  local blobs = data.get('blobs')

  it('Shepp-Logan labels and values follow the ellipse table', function()
    local n = 64
    local img, lab = ph.shepp_logan(n)
    assert.are.same({ n, n }, lab:size())
    local it, lt = img:totable(), lab:totable()
    local E, vals = ph.shepp_logan_ellipses, ph.modified_intensities
    local bad, counts = 0, {}
    for i = 0, n - 1 do
      for j = 0, n - 1 do
        local x, y = (2 * i + 1) / n - 1, 1 - (2 * j + 1) / n
        local want_l, want_v, edge = 0, 0, false
        for k, e in ipairs(E) do
          local inn, near = inside2(x, y, e)
          edge = edge or near
          if inn then want_l, want_v = k, want_v + vals[k] end
        end
        local l = lt[i + 1][j + 1]
        counts[l] = (counts[l] or 0) + 1
        if not edge and (l ~= want_l or math.abs(it[i + 1][j + 1] - want_v) > 1e-6) then bad = bad + 1 end
      end
    end
    assert.are.equal(0, bad)
    -- areas: the skull (in ellipse 1, not 2) and ellipse 6 (nothing drawn on it)
    local px = (n / 2) ^ 2
    local skull = math.pi * (E[1][2] * E[1][3] - E[2][2] * E[2][3]) * px
    assert.is_true(math.abs(counts[1] - skull) < 0.06 * skull, counts[1] .. ' vs ' .. skull)
    local e6 = math.pi * E[6][2] * E[6][3] * px
    assert.is_true(math.abs(counts[6] - e6) < 0.5 * e6 + 2, counts[6] .. ' vs ' .. e6)
    for k = 0, 10 do assert.is_true((counts[k] or 0) > 0, 'label ' .. k .. ' missing') end
  end)

  it('random phantoms are deterministic per seed and labelled by their parameters', function()
    local a1, l1, p1 = ph.make { dim = 3, size = 12, n = 4, seed = 7 }
    local a2, l2 = ph.make { dim = 3, size = 12, n = 4, seed = 7 }
    local a3 = ph.make { dim = 3, size = 12, n = 4, seed = 8 }
    assert.are.same(a1:totable(), a2:totable())
    assert.are.same(l1:totable(), l2:totable())
    assert.are_not.same(a1:totable(), a3:totable())
    local lt, at, bad = l1:totable(), a1:totable(), 0
    for i = 1, 12 do for j = 1, 12 do for k = 1, 12 do
      local x, y, z = (2 * i - 1) / 12 - 1, (2 * j - 1) / 12 - 1, (2 * k - 1) / 12 - 1
      local want, edge = 0, false
      for m, p in ipairs(p1) do
        local t = math.rad(p[8])
        local dx, dy, dz = x - p[5], y - p[6], z - p[7]
        local u = dx * math.cos(t) + dy * math.sin(t)
        local v = dy * math.cos(t) - dx * math.sin(t)
        local d = (u / p[2]) ^ 2 + (v / p[3]) ^ 2 + (dz / p[4]) ^ 2
        edge = edge or math.abs(d - 1) < 1e-9
        if d <= 1 then want = m end
      end
      local got = lt[i][j][k]
      local val = want == 0 and 0 or p1[want][1]
      if not edge and (got ~= want or math.abs(at[i][j][k] - val) > 1e-6) then bad = bad + 1 end
    end end end
    assert.are.equal(0, bad)
    local _, l2d = ph.make { dim = 2, size = 16, seed = 1 }
    assert.are.same({ 16, 16 }, l2d:size())
  end)

  it('blobs are deterministic, whole and where their parameters say', function()
    local i1, m1, p = blobs.make { size = 48, n = 5, seed = 3 }
    local i2, m2 = blobs.make { size = 48, n = 5, seed = 3 }
    assert.are.same(i1:totable(), i2:totable())
    assert.are.same(m1:totable(), m2:totable())
    assert.are.equal(5, #p)
    local mt, it = m1:totable(), i1:totable()
    local area, sx, sy, inside, outside, nin, nout = {}, {}, {}, 0, 0, 0, 0
    for i = 1, 48 do for j = 1, 48 do
      local k = mt[i][j]
      if k > 0 then
        area[k] = (area[k] or 0) + 1
        sx[k], sy[k] = (sx[k] or 0) + (i - 1), (sy[k] or 0) + (j - 1)
        inside, nin = inside + it[i][j], nin + 1
      else
        outside, nout = outside + it[i][j], nout + 1
      end
    end end
    for k = 1, 5 do
      local want = math.pi * p[k][3] * p[k][4]
      assert.is_true(area[k] and math.abs(area[k] - want) < 0.2 * want + 4, k .. ': ' .. tostring(area[k]) .. ' vs ' .. want)
      assert.is_true(math.abs(sx[k] / area[k] - p[k][1]) < 1 and math.abs(sy[k] / area[k] - p[k][2]) < 1)
    end
    assert.is_true(inside / nin > outside / nout + 0.4)
  end)

  it('every synthetic set gives cases that load', function()
    for _, name in ipairs { 'phantoms', 'blobs', 'shapes' } do
      local cases = data.cases(name, { size = 32, n = 2 })
      assert.is_true(#cases >= 2, name)
      local img, lab = data.load(cases[1])
      assert.truthy(img.data, name)
      if lab then assert.are.same(img.data:size(), lab.data:size()) end
    end
  end)
end)

describe('lumen data command', function()
  it('lists every definition', function()
    local out, rc = lumen_run('', 'data list')
    assert.are.equal(0, rc, out)
    local _, files = sh('ls datasets')
    local n = 0
    for f in files:gmatch('([%w_%-]+)%.lua') do
      n = n + 1
      assert.truthy(out:find('\n' .. f .. ' ', 1, true) or out:sub(1, #f + 1) == f .. ' ', f .. ' not in:\n' .. out)
    end
    assert.is_true(n >= 7)
  end)

  it('shows a synthetic set and writes a montage PNG', function()
    local cache = work .. '/cli_cache'
    local out, rc = lumen_run('LUMEN_DATA=' .. q(cache), 'data show blobs --size 32')
    assert.are.equal(0, rc, out)
    assert.truthy(out:find('blobs_1', 1, true), out)
    local path = out:match('montage %(%d+ tiles, middle slices%): (%S+)')
    assert.truthy(path, out)
    assert.are.equal(cache .. '/blobs_montage.png', path)
    -- 4 cases, image and instance mask each: 8 tiles of 32 x 32, 2 pixels apart
    local img = image.read(path)
    assert.are.same({ 8 * 32 + 7 * 2, 32 }, img.data:size())
    assert.are.equal('u8', img.data:dtype())
  end)

  it('fetches through LUMEN_DEB_DIR and says what it did', function()
    local defs = work .. '/defs'
    assert(sh('mkdir -p ' .. q(defs)) == 0)
    write(defs .. '/fixture.lua', [[
return { name = 'fixture', description = 'spec fixture', packages = { 'lumen-fixture' },
  cases = function(root, dirs)
    return { { id = 'tiny', image = dirs['lumen-fixture'] .. '/usr/share/lumen-fixture/tiny.nii' } }
  end }
]])
    local env = 'LUMEN_DATASETS=' .. q(defs) .. ' LUMEN_DEB_DIR=' .. q(debs) .. ' LUMEN_DATA=' .. q(work .. '/cli_fetch')
    local out, rc = lumen_run(env, 'data fetch fixture')
    assert.are.equal(0, rc, out)
    assert.truthy(out:find('unpacked now', 1, true), out)
    out, rc = lumen_run(env, 'data fetch fixture')
    assert.are.equal(0, rc, out)
    assert.truthy(out:find('already there', 1, true), out)
    out, rc = lumen_run(env, 'data fetch nothing_here')
    assert.are.equal(1, rc, out)
    assert.truthy(out:find("no dataset 'nothing_here'", 1, true), out)
    out, rc = lumen_run(env, 'data bogus')
    assert.are.equal(2, rc, out)
    assert.truthy(out:find('usage: lumen data', 1, true), out)
  end)
end)

teardown(function() sh('rm -rf ' .. q(work)) end)
