-- make bundle: the folder runs where it is copied, in a clean environment
-- (no LUMEN_*, no LD_LIBRARY_PATH), finds its Lua files and libraries
-- beside itself, and maps no shared library from outside it except the C
-- library and the C++ runtime (tools/bundle.sh says why those stay).
local lumen = require 'lumen'
local scratch = require 'helpers.scratch'

local build = lumen.core.libpath:match('^(.*)/[^/]*$') or 'build'
local root = lumen.core.root

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function sh(cmd)
  local p = io.popen(cmd .. ' 2>&1')
  local out = p:read('*a')
  local ok = p:close()
  return out, ok == true or ok == 0
end

-- Builds the bundle (the libraries are already built, so this copies files);
-- nil and why when it cannot.
local function make_bundle()
  if not sh('command -v make && command -v ldd') then return nil, 'make or ldd is missing' end
  local out, ok = sh(string.format('make -s -C %s B=%s bundle', q(root), q(build)))
  if not ok then return nil, 'make bundle failed:\n' .. out end
  return build .. '/bundle'
end

local bundle, why = make_bundle()

describe('make bundle', function()
  if not bundle then
    pending('skipped: ' .. why)
    return
  end
  local dir, P = scratch.dir()
  local copy = P('moved')
  teardown(function() os.execute('rm -rf ' .. q(dir)) end)

  local function run(args)
    return sh(string.format('cd %s && env -i PATH=/usr/bin:/bin HOME=%s %s/bin/lumen %s </dev/null', q(dir), q(dir),
      q(copy), args))
  end

  it('runs from a copy with a clean environment, on its own libraries', function()
    assert.is_true(os.execute(string.format('cp -r %s %s', q(bundle), q(copy))) == 0)
    for _, f in ipairs { 'bin/lumen', 'lib/liblumen.so', 'lib/libluajit-5.1.so.2', 'lib/libopenblas.so.0',
      'lua/lumen/core.lua', 'README', 'tests/gpu/run.sh', 'recipes/segment/brain_unet2d.lua', 'plugins/crf/crf.lua' } do
      assert.is_truthy(io.open(copy .. '/' .. f), f)
    end
    scratch.write(P('script.lua'), [[
      local lumen = require 'lumen'
      print('root=' .. lumen.core.root)
      print('lib=' .. lumen.core.libpath)
      local a = lumen.tensor { { 1, 2 }, { 3, 4 } }
      print('mm=' .. lumen.matmul(a, a):sum():item())
      print('crf=' .. type(require('lumen.crf').dense))
      for l in io.lines('/proc/self/maps') do
        local p = l:match('%s(/%S+%.so[%.%d]*)$')
        if p then print('so=' .. p) end
      end
    ]])
    local out, ok = run('run script.lua')
    assert.is_true(ok, out)
    assert.are.equal(copy, out:match('root=([^\n]*)'))
    assert.are.equal(copy .. '/lib/liblumen.so', out:match('lib=([^\n]*)'))
    assert.are.equal('54', out:match('mm=(%d+)')) -- [[7,10],[15,22]]
    assert.are.equal('function', out:match('crf=(%a+)'))
    local outside = {}
    for p in out:gmatch('so=([^\n]*)') do
      local name = p:match('[^/]*$')
      local base = name:match('^(lib[%w_+-]*)') or name
      local system = ({ ['ld-linux-x86-64'] = 1, libc = 1, libm = 1, libdl = 1, libpthread = 1, librt = 1,
        ['libstdc++'] = 1, libgcc_s = 1, libcuda = 1 })[base:gsub('%.so.*', '')]
      if p:sub(1, #copy + 1) ~= copy .. '/' and not system and not name:match('^ld%-linux') then
        outside[#outside + 1] = p
      end
    end
    assert.are.same({}, outside)
  end)

  it('says what it found in lumen info', function()
    local out, ok = run('info')
    assert.is_true(ok, out)
    assert.matches('library:   ' .. copy:gsub('%p', '%%%0') .. '/lib/liblumen.so', out)
    assert.matches('\n  cuda: [^\n]+', out)
    assert.matches('CUDA libraries', out, 1, true)
    assert.matches('cuDNN', out, 1, true)
  end)
end)
