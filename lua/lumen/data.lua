-- data.lua: datasets by name. A definition is datasets/<name>.lua, returning
--   real data:      {name =, description =, packages = {'mricron-data'},
--                    cases = function(root, dirs) -> {{id =, image = path,
--                    label = path or nil, ...}, ...}}
--                   root is the cache folder, dirs[pkg] the folder a
--                   package was unpacked into (<cache>/<pkg>)
--   generated data: {name =, description =, synthetic = true,
--                    make = function(opts) ... end,
--                    cases = function(opts) -> cases with image/label
--                    lumen.image objects in memory}
--
--   local data = require 'lumen.data'
--   data.list()                 definitions, sorted by name
--   data.get('colin27')         one definition
--   data.fetch('colin27')       unpacks its Debian packages into the cache
--   data.cases('colin27')       fetches, then lists its cases
--   data.load(case)             image, label (lumen.image objects)
--
-- The cache is $LUMEN_DATA or ~/.cache/lumen. Packages come from
-- `apt-get download` (no root needed), or, when $LUMEN_DEB_DIR (or
-- opts.deb_dir) is set, from the <pkg>_*.deb files in that folder.
local lumen = require 'lumen'
local core = require 'lumen.core'

local data = {}

data.dir = os.getenv('LUMEN_DATASETS') or (core.root .. '/datasets')

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Runs a shell command; returns its exit code and its output (stdout and
-- stderr together).
local function sh(cmd)
  local p = io.popen('(' .. cmd .. ') 2>&1; echo "__lumen_rc=$?"')
  local out = p:read('*a')
  p:close()
  local rc = tonumber(out:match('__lumen_rc=(%d+)%s*$')) or -1
  return rc, (out:gsub('__lumen_rc=%d+%s*$', ''):gsub('%s+$', ''))
end
data.sh = sh

local function is_dir(path) return sh('test -d ' .. q(path)) == 0 end

function data.cache_dir(opts)
  if opts and opts.cache then return opts.cache end
  local env = os.getenv('LUMEN_DATA')
  if env and env ~= '' then return env end
  return (os.getenv('HOME') or '.') .. '/.cache/lumen'
end

-- Files under dir (recursively) whose names end in one of suffixes
-- (lower case), sorted.
function data.files(dir, suffixes)
  local rc, out = sh('find ' .. q(dir) .. ' -type f')
  local found = {}
  if rc ~= 0 then return found end
  for path in out:gmatch('[^\n]+') do
    local lower = path:lower()
    for _, s in ipairs(suffixes) do
      if lower:sub(-#s) == s then found[#found + 1] = path break end
    end
  end
  table.sort(found)
  return found
end

local function check_def(def, name, path)
  local who = string.format("lumen.data: '%s'", path)
  if type(def) ~= 'table' then error(who .. ': a definition must return a table, got ' .. type(def), 0) end
  def.name = def.name or name
  if def.synthetic then
    if type(def.make) ~= 'function' then error(who .. ': a synthetic definition needs make(opts)', 0) end
  else
    if type(def.cases) ~= 'function' then error(who .. ': a definition needs cases(root, dirs)', 0) end
    def.packages = def.packages or {}
  end
  return def
end

local loaded = {}

function data.get(name)
  if type(name) == 'table' then return name end
  if type(name) ~= 'string' or not name:match('^[%w_%-]+$') then
    error('lumen.data: dataset name must be a word, got ' .. tostring(name), 2)
  end
  if loaded[name] then return loaded[name] end
  local path = data.dir .. '/' .. name .. '.lua'
  local f = io.open(path, 'r')
  if not f then
    local names = {}
    for _, d in ipairs(data.names()) do names[#names + 1] = d end
    error(string.format("lumen.data: no dataset '%s' (no %s; known: %s)", name, path,
      table.concat(names, ', ')), 2)
  end
  f:close()
  local def = check_def(dofile(path), name, path)
  loaded[name] = def
  return def
end

function data.names()
  local names = {}
  local rc, out = sh('ls ' .. q(data.dir))
  if rc == 0 then
    for file in out:gmatch('[^\n]+') do
      local n = file:match('^([%w_%-]+)%.lua$')
      if n then names[#names + 1] = n end
    end
  end
  table.sort(names)
  return names
end

function data.list()
  local defs = {}
  for _, n in ipairs(data.names()) do defs[#defs + 1] = data.get(n) end
  return defs
end

-- Unpacks one Debian package into <cache>/<pkg>; returns that folder and
-- whether it did any work. Atomic: it unpacks into a temporary folder and
-- renames it at the end, so a failure leaves nothing behind.
function data.fetch_package(pkg, opts)
  opts = opts or {}
  if type(pkg) ~= 'string' or not pkg:match('^[%w][%w%.%+%-]*$') then
    error('lumen.data.fetch: bad package name ' .. tostring(pkg), 2)
  end
  local cache = data.cache_dir(opts)
  local dest = cache .. '/' .. pkg
  if is_dir(dest) then return dest, false end
  local rc, msg = sh('mkdir -p ' .. q(cache))
  if rc ~= 0 then error(string.format("lumen.data.fetch: cannot create the cache '%s': %s", cache, msg), 0) end
  rc, msg = sh('mktemp -d ' .. q(cache .. '/.' .. pkg .. '.tmp.XXXXXX'))
  if rc ~= 0 then error(string.format("lumen.data.fetch: cannot make a temporary folder in '%s': %s", cache, msg), 0) end
  local tmp = msg
  local function fail(text)
    sh('rm -rf ' .. q(tmp))
    error('lumen.data.fetch: ' .. text, 0)
  end
  local deb
  local deb_dir = opts.deb_dir or os.getenv('LUMEN_DEB_DIR')
  if deb_dir and deb_dir ~= '' then
    local _, out = sh('ls ' .. q(deb_dir))
    local debs = {}
    for f in out:gmatch('[^\n]+') do
      if f:sub(1, #pkg + 1) == pkg .. '_' and f:sub(-4) == '.deb' then debs[#debs + 1] = f end
    end
    table.sort(debs)
    if #debs == 0 then fail(string.format("package '%s': no %s_*.deb in '%s' (LUMEN_DEB_DIR)", pkg, pkg, deb_dir)) end
    deb = deb_dir .. '/' .. debs[#debs]
  else
    rc, msg = sh('cd ' .. q(tmp) .. ' && apt-get download ' .. q(pkg))
    if rc ~= 0 then
      fail(string.format("package '%s': `apt-get download %s` failed (exit %d): %s", pkg, pkg, rc, msg))
    end
    local _, out = sh('ls ' .. q(tmp))
    local f = out:match('[^\n]*%.deb')
    if not f then fail(string.format("package '%s': `apt-get download %s` left no .deb file", pkg, pkg)) end
    deb = tmp .. '/' .. f
  end
  rc, msg = sh('dpkg -x ' .. q(deb) .. ' ' .. q(tmp .. '/root'))
  if rc ~= 0 then
    fail(string.format("package '%s': `dpkg -x %s` failed (exit %d): %s", pkg, deb, rc, msg))
  end
  local ok, err = os.rename(tmp .. '/root', dest)
  if not ok and not is_dir(dest) then fail(string.format("package '%s': cannot rename into '%s': %s", pkg, dest, tostring(err))) end
  sh('rm -rf ' .. q(tmp))
  return dest, true
end

-- Fetches a dataset's packages; returns the cache folder, {pkg = folder}
-- and the list of packages that were actually unpacked now.
function data.fetch(name, opts)
  local def = data.get(name)
  local dirs, done = {}, {}
  for _, pkg in ipairs(def.packages or {}) do
    local dir, did = data.fetch_package(pkg, opts)
    dirs[pkg] = dir
    if did then done[#done + 1] = pkg end
  end
  return data.cache_dir(opts), dirs, done
end

-- The cases of a dataset (fetching first when needed).
function data.cases(name, opts)
  local def = data.get(name)
  if def.synthetic then
    if def.cases then return def.cases(opts or {}) end
    return def.make(opts or {})
  end
  local root, dirs = data.fetch(def, opts)
  return def.cases(root, dirs)
end

-- A case's image and label as lumen.image objects (the label is nil when
-- the case has none). case.label_from = 'nonzero' makes the label
-- `label file > 0` (a masked image used as a mask).
function data.load(case)
  local image = require 'lumen.image'
  local img = type(case.image) == 'string' and image.read(case.image) or case.image
  local lab = case.label
  if type(lab) == 'string' then lab = image.read(lab) end
  if lab and case.label_from == 'nonzero' then
    lab = image.new(lab.data:gt(0):to('u8'), { affine = lab.affine, meta = lab.meta })
  end
  return img, lab
end

-- A 2-D slice (x, y) of an image's data, scaled to u8 0..255.
local function middle_slice(img)
  local d = img.data
  if img.meta and img.meta.format == 'png' and d:dim() == 3 then d = d:select(2, 0) end
  while d:dim() > 3 do d = d:select(d:dim() - 1, 0) end -- first volume of a series
  if d:dim() == 3 then d = d:select(2, math.floor(d:size()[3] / 2)) end
  if d:dim() == 1 then d = d:reshape(d:size()[1], 1) end
  -- NIfTI's j axis points to the front (RAS): show it upwards, as viewers do
  local fmt = img.meta and img.meta.format
  if type(fmt) == 'string' and fmt:match('^nifti') and d:size()[2] > 1 then d = lumen.flip(d, { 1 }) end
  d = d:to('f64')
  local lo, hi = lumen.amin(d):item(), lumen.amax(d):item()
  local scaled = hi > lo and (d - lo) * (255 / (hi - lo)) or d * 0
  return lumen.clamp(scaled + 0.5, 0, 255):to('u8')
end
data.middle_slice = middle_slice

-- A montage of tiles (2-D u8 tensors, x then y) side by side, 2 pixels apart.
function data.montage(tiles)
  local h = 1
  for _, t in ipairs(tiles) do h = math.max(h, t:size()[2]) end
  local parts = {}
  for i, t in ipairs(tiles) do
    if i > 1 then parts[#parts + 1] = lumen.zeros(2, h):to('u8') end
    local th = t:size()[2]
    parts[#parts + 1] = th < h and lumen.pad(t, { 0, h - th }) or t
  end
  return lumen.cat(parts, 0)
end

-- Writes a montage of the middle slices of the first max readable cases
-- (image, then label when there is one) to path; returns the number of tiles and
-- the notes about cases that could not be read.
function data.write_montage(cases, path, max)
  local image = require 'lumen.image'
  local tiles, notes = {}, {}
  local shown = 0
  for i = 1, #cases do
    if shown >= (max or 8) then break end
    local ok, img, lab = pcall(data.load, cases[i])
    if ok then
      shown = shown + 1
      tiles[#tiles + 1] = middle_slice(img)
      if lab then tiles[#tiles + 1] = middle_slice(lab) end
    else
      notes[#notes + 1] = string.format('%s: not shown: %s', tostring(cases[i].id), tostring(img))
    end
  end
  if #tiles == 0 then error('lumen.data.show: no case could be read:\n  ' .. table.concat(notes, '\n  '), 0) end
  image.new(data.montage(tiles)):write(path)
  return #tiles, notes
end

-- `lumen data list | fetch NAME | show NAME [--out PATH] [--max N]`
function data.cli(args)
  local usage = 'usage: lumen data list | fetch NAME | show NAME [--out PATH] [--max N]'
  local sub, name = args[1], args[2]
  local opts = {}
  for i = 3, #args do
    local k, v = args[i]:match('^%-%-(%w+)=(.*)$')
    if not k and args[i]:match('^%-%-%w+$') then k, v = args[i]:sub(3), args[i + 1] end
    if k then opts[k] = tonumber(v) or v end
  end
  if sub == 'list' then
    for _, def in ipairs(data.list()) do
      local src = def.synthetic and 'synthetic'
        or (#def.packages > 0 and ('packages: ' .. table.concat(def.packages, ', ')) or 'installed files')
      print(string.format('%-16s %s (%s)', def.name, def.description or '', src))
    end
    return 0
  elseif (sub == 'fetch' or sub == 'show') and name then
    local def = data.get(name)
    if sub == 'fetch' then
      if def.synthetic then print(name .. ': synthetic, nothing to fetch') return 0 end
      local root, dirs, done = data.fetch(def)
      for _, pkg in ipairs(def.packages) do
        local now = false
        for _, p in ipairs(done) do now = now or p == pkg end
        print(string.format('%s: %s (%s)', pkg, dirs[pkg], now and 'unpacked now' or 'already there'))
      end
      print(string.format('%s: %d cases', name, #def.cases(root, dirs)))
      return 0
    end
    local cases = data.cases(def, opts)
    print(string.format('%s: %d cases', name, #cases))
    for _, c in ipairs(cases) do
      local function show(v)
        if type(v) == 'string' then return v end
        if type(v) == 'table' and v.data then
          return 'image ' .. table.concat(v.data:size(), 'x') .. ' ' .. v.data:dtype()
        end
        return tostring(v)
      end
      print(string.format('  %s  image=%s%s', tostring(c.id), show(c.image),
        c.label and ('  label=' .. show(c.label)) or ''))
    end
    local out = opts.out
    if not out then
      local cache = data.cache_dir()
      sh('mkdir -p ' .. q(cache))
      out = cache .. '/' .. name .. '_montage.png'
    end
    local n, notes = data.write_montage(cases, out, opts.max)
    for _, note in ipairs(notes) do print('  ' .. note) end
    print(string.format('montage (%d tiles, middle slices): %s', n, out))
    return 0
  end
  io.stderr:write(usage, '\n')
  return 2
end

return data
