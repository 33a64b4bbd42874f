-- cli.lua: the lumen program's commands. src/host/main.c loads this file
-- with package.path set and calls it with a host table {root=, exe_dir=,
-- version=} followed by the command-line arguments; it returns the exit
-- status.
--
--   lumen run script.lua [args]   run a script (see parse_options)
--   lumen -e 'chunk' [args]       run a chunk
--   lumen info                    version, BLAS, threads, devices, plugins
--   lumen data list|fetch|show    datasets (lua/lumen/data.lua)
--   lumen [repl]                  interactive prompt
--   lumen --version | --help
local host = ...
local argv = { select(2, ...) }

-- Whether the user chose OpenBLAS's kernels: lumen chooses them when it
-- loads, so look before it does.
local user_coretype = os.getenv('OPENBLAS_CORETYPE')

local USAGE = [[
usage: lumen [command] [args]

  lumen run SCRIPT [ARGS]   run a Lua script with lumen loaded
  lumen run RECIPE --help   a recipe's options (recipes/<task>/*.lua)
  lumen -e CHUNK [ARGS]     run a Lua chunk with lumen loaded
  lumen info                show version, BLAS, threads, devices and plugins
  lumen data list           list the datasets (datasets/*.lua)
  lumen data fetch NAME     unpack a dataset's Debian packages into the cache
  lumen data show NAME      print its cases and write a PNG montage
  lumen [repl]              interactive prompt (EOF or Ctrl-D quits)
  lumen --version           print the version
  lumen --help              print this help

In a script, the global `arg` holds the raw arguments (arg[0] is the script)
and `...` is a table of parsed options:
  --name=value, --name value  opts.name = value (numbers and true/false converted)
  --flag                      opts.flag = true (when the next argument is an
                              option too, or there is none)
  --                          everything after is positional
  other arguments             opts[1], opts[2], ... (strings)
The global `lumen` is the library.
Environment: LUMEN_ROOT, LUMEN_LIB, LUMEN_PLUGIN_PATH, OPENBLAS_CORETYPE,
LUMEN_CUDA_LIB (liblumen_cuda.so), LUMEN_NO_CUDA, LUMEN_CUDNN (libcudnn.so.9
or its folder), LUMEN_CUDA_LIBS (folders holding cuBLAS and cuDNN).
]]

local function eprint(...)
  local parts = { ... }
  for i = 1, select('#', ...) do parts[i] = tostring(parts[i]) end
  io.stderr:write(table.concat(parts, ' '), '\n')
end

local function load_lumen()
  local ok, lumen = pcall(require, 'lumen')
  if not ok then
    eprint(tostring(lumen))
    os.exit(1)
  end
  _G.lumen = lumen
  return lumen
end

local function convert(v)
  if v == 'true' then return true elseif v == 'false' then return false end
  return tonumber(v) or v
end

-- Options from raw arguments: see USAGE.
local function parse_options(args)
  local opts, i, rest = {}, 1, false
  while i <= #args do
    local a = args[i]
    if rest or not a:match('^%-%-.') then
      if a == '--' and not rest then rest = true else opts[#opts + 1] = a end
    else
      local name, value = a:match('^%-%-([^=]+)=(.*)$')
      if name then
        opts[name] = convert(value)
      else
        name = a:sub(3)
        local nxt = args[i + 1]
        if nxt ~= nil and not nxt:match('^%-%-') then
          opts[name] = convert(nxt)
          i = i + 1
        else
          opts[name] = true
        end
      end
    end
    i = i + 1
  end
  return opts
end

local function traceback(e)
  if type(e) ~= 'string' then e = tostring(e) end
  return debug.traceback(e, 2)
end

-- The traceback of a script's error, without this file's frames under it.
local function script_traceback(e)
  -- a recipe's option errors are the user's, not the script's
  if type(e) == 'string' and (e:match('^lumen%.recipe: ') or e:find('\nstack traceback:')) then return e end
  local tb = traceback(e)
  local here = debug.getinfo(1, 'S').short_src
  local cut = tb:find('\n%s*' .. here:gsub('%p', '%%%0') .. ':%d+: in function <')
    or tb:find("\n%s*%[C%]: in function 'xpcall'")
  return cut and tb:sub(1, cut - 1) or tb
end

-- Runs chunk(...) with arg set; returns the exit status.
local function run_chunk(chunk, name, args, extra_arg0)
  local a = { [0] = name }
  for i, v in ipairs(args) do a[i] = v end
  if extra_arg0 then a[-1] = extra_arg0 end
  _G.arg = a
  -- A script that returns a recipe (lua/lumen/recipe.lua) is run as one:
  -- its options are parsed and checked by the recipe.
  local ok, err = xpcall(function()
    local ret = chunk(parse_options(args))
    local recipe = require 'lumen.recipe'
    if recipe.is_recipe(ret) then recipe.execute(ret, args, name) end
  end, script_traceback)
  io.stdout:flush()
  if not ok then
    eprint('lumen: ' .. err)
    return 1
  end
  return 0
end

local commands = {}

function commands.run(args)
  local script = table.remove(args, 1)
  if not script then
    eprint('lumen run: missing script name\n\n' .. USAGE)
    return 2
  end
  local f = io.open(script, 'r')
  if not f then
    eprint(string.format("lumen run: cannot open script '%s' (no such file or not readable)", script))
    return 2
  end
  f:close()
  local chunk, err = loadfile(script)
  if not chunk then
    eprint('lumen: ' .. err)
    return 1
  end
  load_lumen()
  return run_chunk(chunk, script, args, 'lumen')
end

commands['-e'] = function(args)
  local code = table.remove(args, 1)
  if not code then
    eprint('lumen -e: missing chunk\n\n' .. USAGE)
    return 2
  end
  local chunk, err = loadstring(code, '=(command line)')
  if not chunk then
    eprint('lumen: ' .. err)
    return 1
  end
  load_lumen()
  return run_chunk(chunk, '-e', args, 'lumen')
end

function commands.info()
  local ffi = require 'ffi'
  local lumen = load_lumen()
  local core = lumen.core
  local C = core.C
  local abi = C.lm_abi_version()
  print(string.format('lumen %s (ABI %d.%d)', lumen.version, math.floor(abi / 65536), abi % 65536))
  print('root:      ' .. core.root)
  print('library:   ' .. core.libpath)
  print('LuaJIT:    ' .. jit.version)
  print('BLAS:      ' .. lumen.blas_info())
  local ct = os.getenv('OPENBLAS_CORETYPE')
  if user_coretype then
    print('           OPENBLAS_CORETYPE=' .. user_coretype .. ' (set by the user)')
  elseif ct then
    print('           OPENBLAS_CORETYPE=' .. ct .. ' (set by lumen from the CPU flags)')
  else
    print('           OPENBLAS_CORETYPE not set (OpenBLAS chose its kernels itself)')
  end
  print('threads:   ' .. lumen.get_num_threads())

  print('devices:')
  print('  cpu')
  local cs = lumen.cuda.status()
  if cs.available then
    print(string.format('  cuda: used, %d device%s', #cs.devices, #cs.devices == 1 and '' or 's'))
    for i, n in ipairs(cs.devices) do print(string.format('    %d: %s', i - 1, n)) end
  else
    print('  cuda: not used: ' .. cs.reason)
  end
  local function cuda_version(v) return v and v > 0 and string.format('%d.%d', math.floor(v / 1000), math.floor(v % 1000 / 10)) end
  if cs.runtime then
    print(string.format('    backend: %s (built with CUDA %s, runtime %s)', cs.library,
      cuda_version(cs.built_with) or '?', cuda_version(cs.runtime) or '?'))
  end
  print('  CUDA libraries (found at run time; LUMEN_CUDNN, LUMEN_CUDA_LIBS choose):')
  for _, line in ipairs(lumen.cuda.library_report()) do print('    ' .. line) end

  print('plugins:')
  local found = lumen.plugins_found()
  if #found == 0 then print('  none') end
  for _, e in ipairs(found) do
    if e.plugin then
      local names = {}
      for i, op in ipairs(e.plugin.ops) do
        names[i] = string.format('%s (%d in, %d out)', op.name, op.n_in, op.n_out)
      end
      print(string.format('  %s %s: %s', e.plugin.name, e.plugin.version,
        #names > 0 and table.concat(names, ', ') or 'no ops'))
      print('    ' .. e.path)
    else
      print(string.format('  %s: refused: %s', e.name, e.error))
      if e.path then print('    ' .. e.path) end
    end
  end
  return 0
end

function commands.data(args)
  load_lumen()
  local ok, status = pcall(function() return require('lumen.data').cli(args) end)
  if not ok then
    eprint(tostring(status))
    return 1
  end
  return status
end

-- The REPL: each line is tried as `return <line>`, then as a statement.
-- A top-level `local` is turned into a global assignment, so that names
-- stay defined on later lines (each line is its own chunk).
local function globalize(src)
  local s = src:gsub('^%s*local%s+function%s', 'function ', 1)
  if s ~= src then return s end
  local names = src:match('^%s*local%s+(.*)$')
  if not names then return src end
  if names:find('=', 1, true) then return names end
  return names .. ' = nil'
end

local function compile(src)
  local chunk, err = loadstring('return ' .. src, '=stdin')
  if chunk then return chunk end
  local chunk2, err2 = loadstring(globalize(src), '=stdin')
  if chunk2 then return chunk2 end
  -- incomplete when either form ran out of input: read another line
  if err2:match("near '?<eof>'?$") or err:match("near '?<eof>'?$") then
    return nil, err2, true
  end
  return nil, err2
end

local function print_results(n, ...)
  if n == 0 then return end
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  print(table.concat(parts, '\t'))
end

function commands.repl()
  local ffi = require 'ffi'
  pcall(ffi.cdef, 'int isatty(int fd);')
  local tty = ffi.C.isatty(0) ~= 0
  local lumen = load_lumen()
  if tty then
    print(string.format('lumen %s on %s; Ctrl-D quits', lumen.version, jit.version))
  end
  local buf
  while true do
    if tty then
      io.stdout:write(buf and '>> ' or '> ')
      io.stdout:flush()
    end
    local line = io.read('*l')
    if not line then
      if tty then io.stdout:write('\n') end
      if buf then eprint('lumen: incomplete input at end of file') end
      break
    end
    buf = buf and (buf .. '\n' .. line) or line
    if buf:match('^%s*$') then
      buf = nil
    else
      local chunk, err, more = compile(buf)
      if chunk then
        buf = nil
        local function report(ok, ...)
          if ok then print_results(select('#', ...), ...) else eprint(...) end
        end
        report(xpcall(chunk, tostring))
      elseif not more then
        buf = nil
        eprint(err)
      end
    end
    io.stdout:flush()
  end
  return 0
end

local function main()
  local cmd = argv[1]
  local rest = { unpack(argv, 2) }
  if cmd == nil or cmd == 'repl' then return commands.repl() end
  if cmd == '--version' or cmd == '-v' then
    print('lumen ' .. host.version)
    return 0
  end
  if cmd == '--help' or cmd == '-h' or cmd == 'help' then
    io.stdout:write(USAGE)
    return 0
  end
  local fn = commands[cmd]
  if not fn then
    eprint(string.format("lumen: unknown command '%s'\n\n%s", cmd, USAGE))
    return 2
  end
  return fn(rest)
end

local ok, status = xpcall(main, traceback)
if not ok then
  eprint('lumen: ' .. status)
  return 1
end
return status
