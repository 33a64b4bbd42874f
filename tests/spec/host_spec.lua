-- The lumen program: -e, run with options, info, errors and the REPL.
local lumen = require 'lumen'

-- The build directory is where the liblumen in use lives; lumen sits there.
local build = lumen.core.libpath:match('^(.*)/[^/]*$') or 'build'
local exe = build .. '/lumen'
local plugdir = build .. '/tests/plugins'

local function exists(p)
  local f = io.open(p, 'rb')
  if f then f:close() end
  return f ~= nil
end
if not (exists(exe) and exists(plugdir .. '/clip_relu.so') and exists(plugdir .. '/clip_relu_abi99.so')) then
  os.execute(string.format("make -s B='%s' '%s' '%s/clip_relu.so' '%s/clip_relu_abi99.so' >&2", build, exe, plugdir, plugdir))
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function slurp(path)
  local f = io.open(path, 'rb')
  if not f then return '' end
  local s = f:read('*a')
  f:close()
  os.remove(path)
  return s
end

-- run(args, {stdin=, env=}) -> stdout, stderr, exit status
local function run(args, opts)
  opts = opts or {}
  local base = os.tmpname()
  local cmd = (opts.env or '') .. ' ' .. q(exe) .. ' ' .. args
  if opts.stdin then
    local f = assert(io.open(base .. '.in', 'wb'))
    f:write(opts.stdin)
    f:close()
    cmd = cmd .. ' <' .. q(base .. '.in')
  else
    cmd = cmd .. ' </dev/null'
  end
  os.execute(string.format('%s >%s 2>%s; echo $? >%s', cmd, q(base .. '.out'), q(base .. '.err'), q(base .. '.rc')))
  local out, err, rc = slurp(base .. '.out'), slurp(base .. '.err'), tonumber(slurp(base .. '.rc'))
  os.remove(base .. '.in')
  os.remove(base)
  return out, err, rc
end

local function script(text)
  local path = os.tmpname() .. '.lua'
  local f = assert(io.open(path, 'w'))
  f:write(text)
  f:close()
  return path
end

describe('lumen program', function()
  it('evaluates a chunk with -e', function()
    local out, err, rc = run('-e ' .. q('print(lumen.zeros(2, 3):numel(), lumen.version, ...)'))
    assert.are.equal(0, rc, err)
    assert.are.equal('6\t' .. lumen.version .. '\ttable: ', out:sub(1, #lumen.version + 10))
  end)

  it('runs a script with parsed options, arg and lumen', function()
    local path = script [[
      local o = ...
      local keys = {}
      for k in pairs(o) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      for _, k in ipairs(keys) do
        local v = o[tonumber(k) or k]
        print(k, type(v), tostring(v))
      end
      print('arg', arg[0] == SCRIPT, #arg, arg[1], arg[#arg])
      print('lumen', type(lumen.zeros))
    ]]
    local f = assert(io.open(path, 'r'))
    local text = f:read('*a'):gsub('SCRIPT', string.format('%q', path))
    f:close()
    f = assert(io.open(path, 'w'))
    f:write(text)
    f:close()
    local out, err, rc = run('run ' .. q(path) .. ' --opt=value --flag --n 3 pos --x=-1.5 --on=false -- --raw')
    os.remove(path)
    assert.are.equal(0, rc, err)
    assert.are.equal(table.concat({
      '1\tstring\tpos',
      '2\tstring\t--raw',
      'flag\tboolean\ttrue',
      'n\tnumber\t3',
      'on\tboolean\tfalse',
      'opt\tstring\tvalue',
      'x\tnumber\t-1.5',
      'arg\ttrue\t9\t--opt=value\t--raw',
      'lumen\tfunction',
    }, '\n') .. '\n', out)
  end)

  it('prints version and help', function()
    local out, _, rc = run('--version')
    assert.are.equal(0, rc)
    assert.are.equal('lumen ' .. lumen.version .. '\n', out)
    out, _, rc = run('--help')
    assert.are.equal(0, rc)
    assert.truthy(out:find('usage: lumen', 1, true))
    assert.truthy(out:find('lumen run SCRIPT', 1, true))
  end)

  it('rejects an unknown command with usage and status 2', function()
    local out, err, rc = run('frobnicate')
    assert.are.equal(2, rc)
    assert.are.equal('', out)
    assert.truthy(err:find("lumen: unknown command 'frobnicate'", 1, true))
    assert.truthy(err:find('usage: lumen', 1, true))
  end)

  it('shows BLAS, threads, devices and plugins in info', function()
    local out, err, rc = run('info', { env = 'LUMEN_PLUGIN_PATH=' .. q(plugdir) })
    assert.are.equal(0, rc, err)
    assert.truthy(out:find('lumen ' .. lumen.version, 1, true), out)
    local core = lumen.blas_info():match('core=(%S+)')
    assert.truthy(out:find('BLAS: .*core=' .. core), out)
    assert.truthy(out:find('OPENBLAS_CORETYPE', 1, true), out)
    assert.truthy(out:find('threads:%s+' .. lumen.get_num_threads() .. '\n'), out)
    assert.truthy(out:find('devices:\n  cpu\n  cuda: ', 1, true), out)
    assert.truthy(out:find('  clip_relu 1.0.0: clip_relu (1 in, 1 out)', 1, true), out)
    assert.truthy(out:find('  clip_relu_abi99: refused: lumen.plugin_load: plugin ' .. plugdir
      .. '/clip_relu_abi99.so (clip_relu) was built for lumen ABI 99.1', 1, true), out)
  end)

  it('says why CUDA is not used, and where it looked for cuDNN', function()
    local out, err, rc = run('info', { env = 'LUMEN_NO_CUDA=1 LUMEN_CUDNN=/nowhere/libcudnn.so.9' })
    assert.are.equal(0, rc, err)
    assert.truthy(out:find('  cuda: not used: LUMEN_NO_CUDA is set\n', 1, true), out)
    assert.truthy(out:find('CUDA libraries (found at run time', 1, true), out)
    local cudnn = out:match('\n    (cuDNN[^\n]*)')
    assert.truthy(cudnn, out)
    -- found somewhere else, or not found with the folder it was told listed first
    assert.truthy(cudnn:match('^cuDNN 9%.%d+%.%d+: /') or cudnn:find('looked in /nowhere ($LUMEN_CUDNN)', 1, true), cudnn)
    out, err, rc = run('info', { env = 'LUMEN_CUDA_LIB=/nowhere/liblumen_cuda.so' })
    assert.are.equal(0, rc, err)
    assert.truthy(out:find('  cuda: not used: no /nowhere/liblumen_cuda.so (it is built where nvcc is found)', 1, true), out)
  end)

  it('says whether the user set OPENBLAS_CORETYPE', function()
    local out, err, rc = run('info', { env = 'OPENBLAS_CORETYPE=Haswell' })
    assert.are.equal(0, rc, err)
    assert.truthy(out:find('OPENBLAS_CORETYPE=Haswell (set by the user)', 1, true), out)
  end)

  it('reports a failing script with its message, a traceback and status 1', function()
    local path = script('local function f() error("bad thing") end\nf()\n')
    local out, err, rc = run('run ' .. q(path))
    os.remove(path)
    assert.are.equal(1, rc)
    assert.are.equal('', out)
    assert.truthy(err:find('lumen: ' .. path .. ':1: bad thing', 1, true), err)
    assert.truthy(err:find('stack traceback:', 1, true), err)
    assert.is_nil(err:find('cli.lua', 1, true), err)
    -- a lumen error from a script
    out, err, rc = run('-e ' .. q('lumen.zeros(2, 3):view(5)'))
    assert.are.equal(1, rc)
    assert.truthy(err:find('lumen.view: ', 1, true), err)
  end)

  it('reports syntax errors and missing scripts', function()
    local path = script('x = = 1\n')
    local _, err, rc = run('run ' .. q(path))
    os.remove(path)
    assert.are.equal(1, rc)
    assert.truthy(err:find(path .. ":1: unexpected symbol near '='", 1, true), err)
    _, err, rc = run('run /nonexistent/script.lua')
    assert.are.equal(2, rc)
    assert.truthy(err:find("lumen run: cannot open script '/nonexistent/script.lua'", 1, true), err)
    _, err, rc = run('run')
    assert.are.equal(2, rc)
  end)

  it('runs a REPL on a pipe', function()
    local input = table.concat({
      '1+1',
      'local x = 3',
      'x',
      'local function sq(v) return v * v end',
      'sq(x), nil',
      'for i = 1, 2 do',
      '  print("i", i)',
      'end',
      'error("boom")',
      'foo bar',
      'lumen.zeros(2, 3):numel()',
      '1 +',
      '2',
      'print()',
    }, '\n') .. '\n'
    local out, err, rc = run('', { stdin = input })
    assert.are.equal(0, rc, err)
    assert.are.equal('2\n3\n9\tnil\ni\t1\ni\t2\n6\n3\n\n', out)
    assert.truthy(err:find('boom', 1, true), err)
    assert.truthy(err:find("stdin:1: '=' expected near 'bar'", 1, true), err)
    -- `repl` is the same; an unfinished chunk at EOF is reported
    out, err, rc = run('repl', { stdin = 'for i = 1, 2 do\n' })
    assert.are.equal(0, rc)
    assert.are.equal('', out)
    assert.truthy(err:find('incomplete input', 1, true), err)
  end)
end)
