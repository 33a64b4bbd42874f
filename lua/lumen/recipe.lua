-- recipe.lua: the recipe format and what every run gets around it.
--
-- A recipe is a Lua file under recipes/<task>/ that returns
--
--   local recipe = require 'lumen.recipe'
--   return recipe.define {
--     name = 'brain_unet2d',                      -- runs/<name>/<timestamp>/
--     description = 'one line for --help',
--     options = {                                 -- {name, default, help}
--       { 'steps', 400, 'training steps' },
--       { 'lr', 1e-3, 'learning rate' },
--       { 'patch', { 96, 96 }, 'patch size (a list: --patch 64,64)' },
--     },
--     quick = { steps = 6 },                      -- what --quick changes
--     train = function(run) ... end,              -- run.opts holds every option
--     predict = function(run, img, path) ... return label_image end,
--   }
--
-- `lumen run RECIPE [options]` trains (recipe.execute): --help lists the
-- options; an unknown option is an error naming the closest known one. The
-- type of an option is that of its default (number, string, boolean, list
-- of numbers). Every recipe also has the common options below.
--
-- A run writes runs/<name>/<timestamp>/ (under --out):
--   config.json               options, seed, git revision, versions, command
--   log.jsonl                 one line per run:log(step, values)
--   metrics.json              run:metrics{...} (merged, rewritten atomically)
--   checkpoint.safetensors    run:checkpoint(step, state), atomic
--   figures/                  curves of every logged value (at the end) and
--                             what the recipe draws (run:figure(name))
--
-- In train, the run gives:
--   run.opts, run.dir, run.quick, run.device
--   run:resume(state) -> first step (0 on a fresh run), extra: with --resume,
--     loads state = {model =, optimizer =, scheduler =} and the random
--     generator from the checkpoint. The recipe's loop starts at that step
--     (loaders: first_batch = step), so a resumed run computes exactly what
--     an uninterrupted one would.
--   run:progress(step, total, values): a progress bar on a terminal (step,
--     rate, ETA, running values), plain lines otherwise.
--   run:log(step, values): a log.jsonl line; values are numbers.
--   run:checkpoint(step, state, extra) -> stop: saves every
--     --checkpoint_every steps and at the last step; returns true when the
--     run must stop here (--stop_at, for testing an interruption).
--   run:metrics(tbl), run:figure(name) -> a path under figures/.
--
-- `lumen run RECIPE --predict RUN_DIR --input PATH... --output DIR` applies
-- a trained run: the options come from RUN_DIR's config.json, the recipe's
-- predict(run, img, path) gets each input as a lumen.image (a DICOM folder
-- too) with run:restore{model = m} to load the weights, and returns a label
-- image on the input's grid, written as DIR/<input name>_seg.nii.gz with
-- the input's affine.
local ffi = require 'ffi'
local lumen = require 'lumen'
local json = require 'lumen.json'

local recipe = {}
local Run = {}
Run.__index = Run
local Recipe = {}

local COMMON = {
  { 'seed', 0, 'random seed (weights, sampling, augmentation)' },
  { 'device', 'cpu', "where to train: 'cpu' or 'cuda'" },
  { 'threads', 0, 'CPU threads (0: every core)' },
  { 'quick', false, 'a tiny setting that runs in seconds (tests)' },
  { 'out', 'runs', 'folder that holds <recipe>/<timestamp>/' },
  { 'resume', '', 'continue the run in this folder from its checkpoint' },
  { 'checkpoint_every', 100, 'steps between checkpoints' },
  { 'stop_at', 0, 'stop after this step, as if interrupted (0: never)' },
  { 'progress', 'auto', "'bar', 'lines', 'none', or 'auto' (a bar on a terminal)" },
  { 'predict', '', 'apply the trained run in this folder to --input' },
  { 'input', {}, 'images for --predict (files or DICOM folders; several allowed)' },
  { 'output', '', 'folder for the --predict results' },
}
-- Options of this invocation only: not taken from a resumed run's config.
local SESSION = { resume = true, stop_at = true, progress = true, predict = true, input = true, output = true,
  threads = true, device = true, out = true }

local function fail(fmt, ...) error(string.format('lumen.recipe: ' .. fmt, ...), 0) end

-- ------------------------------------------------------------------
-- definition

function recipe.define(def)
  if type(def) ~= 'table' then fail('define expects a table') end
  if type(def.name) ~= 'string' or not def.name:match('^[%w_%-]+$') then
    fail('name must be a word (letters, digits, _ or -), got %s', tostring(def.name))
  end
  if type(def.train) ~= 'function' then fail("recipe '%s' has no train function", def.name) end
  def.options = def.options or {}
  local seen = {}
  for _, o in ipairs(COMMON) do seen[o[1]] = 'common' end
  for i, o in ipairs(def.options) do
    if type(o) ~= 'table' or type(o[1]) ~= 'string' or o[2] == nil or type(o[3]) ~= 'string' then
      fail("recipe '%s': options[%d] must be {name, default, help}", def.name, i)
    end
    if seen[o[1]] then fail("recipe '%s': option '%s' is declared twice", def.name, o[1]) end
    seen[o[1]] = true
  end
  for k in pairs(def.quick or {}) do
    if not seen[k] then fail("recipe '%s': quick sets '%s', which is not an option", def.name, k) end
  end
  return setmetatable(def, Recipe)
end

function recipe.is_recipe(v) return getmetatable(v) == Recipe end

-- ------------------------------------------------------------------
-- options

local function all_options(def)
  local list, by_name = {}, {}
  for _, o in ipairs(def.options) do list[#list + 1] = o end
  for _, o in ipairs(COMMON) do list[#list + 1] = o end
  for _, o in ipairs(list) do by_name[o[1]] = o end
  return list, by_name
end

local function show(v)
  if type(v) == 'table' then return table.concat(v, ',') end
  if v == '' then return "''" end
  return tostring(v)
end

function recipe.help(def)
  local lines = { string.format('%s: %s', def.name, def.description or ''), '',
    'usage: lumen run RECIPE [--option value ...]', '' }
  local function block(title, opts)
    lines[#lines + 1] = title
    for _, o in ipairs(opts) do
      local q = def.quick and def.quick[o[1]]
      lines[#lines + 1] = string.format('  --%-18s %s (default %s%s)', o[1], o[3], show(o[2]),
        q ~= nil and ('; --quick: ' .. show(q)) or '')
    end
  end
  block('recipe options:', def.options)
  lines[#lines + 1] = ''
  block('every recipe:', COMMON)
  return table.concat(lines, '\n')
end

-- Edit distance, for naming the closest known option.
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function closest(name, list)
  local best, bd = nil, math.huge
  for _, o in ipairs(list) do
    local d = distance(name, o[1])
    if d < bd then best, bd = o[1], d end
  end
  return best
end

local function convert(o, raw)
  local default, name = o[2], o[1]
  if type(default) == 'number' then
    local v = tonumber(raw)
    if not v then fail("--%s expects a number, got '%s'", name, tostring(raw)) end
    return v
  elseif type(default) == 'boolean' then
    if raw == true or raw == 'true' then return true elseif raw == 'false' then return false end
    fail("--%s is a flag: give it alone, or =true / =false, not '%s'", name, tostring(raw))
  elseif type(default) == 'table' then
    local items = type(raw) == 'table' and raw or { raw }
    local out = {}
    for _, item in ipairs(items) do
      for part in tostring(item):gmatch('[^,]+') do
        local v = part
        if type(default[1]) == 'number' or (default[1] == nil and name ~= 'input') then v = tonumber(part) end
        if v == nil then fail("--%s expects numbers separated by commas, got '%s'", name, tostring(item)) end
        out[#out + 1] = v
      end
    end
    return out
  end
  return tostring(raw)
end

local function copy(v)
  if type(v) ~= 'table' then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = copy(x) end
  return c
end

-- parse(def, args) -> opts (every option), given (names set on the command line)
function recipe.parse(def, args)
  local list, by_name = all_options(def)
  local given, raw = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, value = a:match('^%-%-([^=]+)=(.*)$')
    if not name then name = a:match('^%-%-(.+)$') end
    if not name then fail("unexpected argument '%s' (options are --name value)", a) end
    if name == 'help' then return nil end
    local o = by_name[name]
    if not o then
      fail("unknown option --%s (did you mean --%s?); --help lists them", name, closest(name, list))
    end
    if value == nil then
      if type(o[2]) == 'boolean' then
        value = true
        if args[i + 1] == 'true' or args[i + 1] == 'false' then
          value = args[i + 1]
          i = i + 1
        end
      elseif type(o[2]) == 'table' then
        value = {}
        while args[i + 1] and not args[i + 1]:match('^%-%-') do
          value[#value + 1] = args[i + 1]
          i = i + 1
        end
        if #value == 0 then fail('--%s needs a value', name) end
      else
        value = args[i + 1]
        if value == nil then fail('--%s needs a value', name) end
        i = i + 1
      end
    end
    raw[name] = convert(o, value)
    given[name] = true
    i = i + 1
  end
  local opts = {}
  for _, o in ipairs(list) do opts[o[1]] = copy(o[2]) end
  if raw.quick then
    for k, v in pairs(def.quick or {}) do opts[k] = copy(v) end
  end
  for k, v in pairs(raw) do opts[k] = v end
  return opts, given
end

-- ------------------------------------------------------------------
-- runs

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function exists(path)
  local f = io.open(path, 'r')
  if f then f:close() return true end
  return false
end

local function mkdir(path)
  if os.execute('mkdir -p ' .. sh_quote(path)) ~= 0 then fail("cannot create the folder '%s'", path) end
end

local function read_file(path)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local s = f:read('*a')
  f:close()
  return s
end

local function git_revision()
  local root = lumen.core.root
  local p = io.popen('git -C ' .. sh_quote(root) .. ' rev-parse HEAD 2>/dev/null; git -C ' .. sh_quote(root) ..
    ' status --porcelain --untracked-files=no 2>/dev/null | head -1')
  if not p then return 'unknown' end
  local rev, dirty = p:read('*l'), p:read('*l')
  p:close()
  if not rev or rev == '' then return 'unknown' end
  return rev .. (dirty and dirty ~= '' and ' (modified)' or '')
end

-- JSON has no NaN or infinities (an empty prediction has no HD95): they
-- are written as the strings 'nan', 'inf' and '-inf'.
local function finite(v)
  if type(v) == 'table' then
    local c = {}
    for k, x in pairs(v) do c[k] = finite(x) end
    return setmetatable(c, getmetatable(v))
  end
  if type(v) == 'number' and v ~= v then return 'nan' end
  if v == math.huge then return 'inf' end
  if v == -math.huge then return '-inf' end
  return v
end

local function write_json(path, v) lumen.write_file(path, json.encode(finite(v)) .. '\n') end

local function read_json(path, what)
  local s = read_file(path)
  if not s then fail("%s: cannot read '%s'", what, path) end
  local ok, v = pcall(json.decode, s)
  if not ok or type(v) ~= 'table' then fail("%s: '%s' is not valid JSON", what, path) end
  return v
end

pcall(ffi.cdef, 'int isatty(int fd);') -- (already declared when the module is loaded again)

local function now() return lumen.clock() end

local PROGRESS = { auto = true, bar = true, lines = true, none = true }

local function new_run(def, opts, dir)
  local r = setmetatable({ def = def, opts = opts, dir = dir, quick = opts.quick, device = opts.device, t0 = now(),
    history = {}, metrics_table = {}, last_line = -math.huge }, Run)
  r.mode = opts.progress
  if r.mode == 'auto' then r.mode = ffi.C.isatty(1) == 1 and 'bar' or 'lines' end
  return r
end

-- Checks the session options, sets threads and device, or says why not.
local function apply_session(opts)
  if not PROGRESS[opts.progress] then
    fail("--progress '%s', expected 'auto', 'bar', 'lines' or 'none'", tostring(opts.progress))
  end
  if opts.threads ~= 0 then
    if opts.threads < 1 or opts.threads ~= math.floor(opts.threads) then
      fail('--threads must be a positive integer (0: every core), got %s', tostring(opts.threads))
    end
    lumen.set_num_threads(opts.threads)
  end
  if opts.device ~= 'cpu' and opts.device ~= 'cuda' then
    fail("--device '%s', expected 'cpu' or 'cuda'", tostring(opts.device))
  end
  if opts.device == 'cuda' and not lumen.cuda.is_available() then
    fail('--device cuda: no GPU is used here: %s', lumen.cuda.status().reason or 'unknown reason')
  end
end

local function timestamp_dir(root, name)
  local base = string.format('%s/%s/%s', root, name, os.date('%Y%m%d-%H%M%S'))
  local dir, k = base, 1
  while exists(dir .. '/config.json') do
    k = k + 1
    dir = base .. '-' .. k
  end
  return dir
end

-- Keeps the log lines up to `step` (a resumed run rewrites the rest).
local function truncate_log(path, step)
  local s = read_file(path)
  if not s then return {} end
  local keep, history = {}, {}
  for line in s:gmatch('[^\n]+') do
    local ok, v = pcall(json.decode, line)
    if ok and type(v) == 'table' and type(v.step) == 'number' and v.step <= step then
      keep[#keep + 1] = line
      history[#history + 1] = v
    end
  end
  lumen.write_file(path, #keep > 0 and table.concat(keep, '\n') .. '\n' or '')
  return history
end

-- The folder of an earlier run of def (for --resume and --predict) and
-- its options, with this invocation's session options over them: the
-- others cannot change, as the run's weights were made with them.
local function existing_run(def, flag, dir, opts, given)
  dir = dir:gsub('/+$', '')
  local config = read_json(dir .. '/config.json', flag)
  if config.recipe ~= def.name then
    fail("%s: '%s' is a run of %s, not of %s", flag, dir, tostring(config.recipe), def.name)
  end
  if not exists(dir .. '/checkpoint.safetensors') then fail("%s: '%s' has no checkpoint.safetensors", flag, dir) end
  for k in pairs(given) do
    if not SESSION[k] then fail('%s keeps the options of the run; --%s cannot change', flag, k) end
  end
  local merged = config.options
  for k in pairs(SESSION) do merged[k] = opts[k] end
  return dir, merged
end

-- execute(def, args, script) runs a recipe from command-line arguments.
function recipe.execute(def, args, script)
  local opts, given = recipe.parse(def, args)
  if not opts then
    print(recipe.help(def))
    return
  end
  if opts.predict ~= '' then return recipe.predict(def, opts, given, script) end
  local dir, resumed
  if opts.resume ~= '' then
    dir, opts = existing_run(def, '--resume', opts.resume, opts, given)
    resumed = true
  else
    dir = timestamp_dir(opts.out, def.name)
  end
  apply_session(opts)
  mkdir(dir .. '/figures')
  local run = new_run(def, opts, dir)
  run.resumed = resumed
  if not resumed then
    write_json(dir .. '/config.json', {
      recipe = def.name, script = script, options = opts, seed = opts.seed, git = git_revision(),
      versions = { lumen = lumen.version, luajit = jit.version, blas = lumen.blas_info() },
      started = os.date('!%Y-%m-%dT%H:%M:%SZ'), command = 'lumen run ' .. tostring(script) .. ' ' .. table.concat(args, ' '),
    })
  end
  lumen.manual_seed(opts.seed)
  run.log_file = dir .. '/log.jsonl'
  if not resumed then lumen.write_file(run.log_file, '') end
  local ok, err = xpcall(def.train, debug.traceback, run)
  if run.bar_open then io.stdout:write('\n') end
  if not ok then error(err, 0) end
  run:finish()
  return run
end

-- ------------------------------------------------------------------
-- what train uses

function Run:checkpoint_path() return self.dir .. '/checkpoint.safetensors' end

function Run:resume(state)
  if not self.resumed then return 0, nil end
  local step, extra = require('lumen.checkpoint').load(self:checkpoint_path(), state)
  self.history = truncate_log(self.log_file, step)
  if type(extra) == 'table' and type(extra.metrics) == 'table' then self.metrics_table = extra.metrics end
  self.start_step = step
  return step, extra
end

function Run:checkpoint(step, state, extra, last)
  local o = self.opts
  local stop = o.stop_at > 0 and step >= o.stop_at
  if last or stop or step % o.checkpoint_every == 0 then
    local ck = { model = state.model, optimizer = state.optimizer, scheduler = state.scheduler, step = step,
      extra = { user = extra, metrics = self.metrics_table } }
    require('lumen.checkpoint').save(self:checkpoint_path(), ck)
  end
  if stop and not last then
    self.stopped = true
    self:say(string.format('stopped at step %d as --stop_at asked; continue with --resume %s', step, self.dir), true)
  end
  return stop and not last
end

-- restore{model =}: the weights of the run's checkpoint (for predict).
function Run:restore(state)
  return require('lumen.checkpoint').load(self:checkpoint_path(), state)
end

local function fmt_value(v)
  if type(v) ~= 'number' then return tostring(v) end
  if v ~= v then return 'nan' end
  if math.abs(v) >= 1000 or (math.abs(v) < 1e-3 and v ~= 0) then return string.format('%.3g', v) end
  return string.format('%.4f', v)
end

local function clock_str(s)
  s = math.max(0, math.floor(s + 0.5))
  if s >= 3600 then return string.format('%d:%02d:%02d', s / 3600, s % 3600 / 60, s % 60) end
  return string.format('%d:%02d', s / 60, s % 60)
end

-- say(line, always): a line of news; progress 'none' silences all but
-- those that must be seen.
function Run:say(line, always)
  if self.mode == 'none' and not always then return end
  if self.bar_open then io.stdout:write('\n') self.bar_open = false end
  io.stdout:write(line, '\n')
  io.stdout:flush()
end

-- progress(step, total, values): values shown as running means: since the
-- last line in plain lines, over the last 20 steps or so on the bar.
function Run:progress(step, total, values)
  if self.mode == 'none' then return end
  local t = now()
  -- the rate counts from the first call (the time before it is unknown)
  if not self.p_start then self.p_start, self.p_step0 = t, step end
  local run = self.p_run or {}
  self.p_run = run
  for k, v in pairs(values or {}) do
    local r = run[k] or { sum = 0, n = 0 }
    run[k] = r
    if v == v then r.sum, r.n = r.sum + v, r.n + 1 end
  end
  local done, elapsed = step - self.p_step0, t - self.p_start
  local rate = done > 0 and done / math.max(elapsed, 1e-9) or nil
  local parts = {}
  local keys = {}
  for k in pairs(run) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local r = run[k]
    if r.n > 0 then parts[#parts + 1] = k .. ' ' .. fmt_value(r.sum / r.n) end
  end
  local rate_s, eta = '-- it/s', '--:--'
  if rate then
    rate_s = rate >= 1 and string.format('%.2f it/s', rate) or string.format('%.2f s/it', 1 / rate)
    eta = clock_str((total - step) / rate)
  end
  if self.mode == 'bar' then
    -- the bar shows means over the last 20 steps or so: the sums decay
    for _, r in pairs(run) do r.sum, r.n = r.sum * 0.95, r.n * 0.95 end
    local width = 24
    local fill = math.floor(width * step / math.max(total, 1))
    io.stdout:write(string.format('\r[%s%s] %d/%d %s ETA %s %s\27[K', string.rep('#', fill), string.rep('.', width - fill),
      step, total, rate_s, eta, table.concat(parts, ' ')))
    io.stdout:flush()
    self.bar_open = true
    if step >= total then self:say('') end
  elseif t - self.last_line >= 10 or step >= total then
    self.last_line = t
    self:say(string.format('step %d/%d  %s  ETA %s  %s', step, total, rate_s, eta, table.concat(parts, '  ')))
    for k in pairs(run) do run[k] = nil end
  end
end

function Run:log(step, values)
  local line = { step = step, time = now() - self.t0 }
  for k, v in pairs(values) do
    if type(v) ~= 'number' then fail("log: value '%s' is a %s, expected a number", tostring(k), type(v)) end
    line[k] = v
  end
  self.history[#self.history + 1] = line
  local f = io.open(self.log_file, 'a')
  if not f then fail("cannot append to '%s'", self.log_file) end
  f:write(json.encode(line), '\n')
  f:close()
end

-- metrics{...}: merged into metrics.json (nested tables replace by key).
function Run:metrics(tbl)
  for k, v in pairs(tbl) do self.metrics_table[k] = v end
  write_json(self.dir .. '/metrics.json', self.metrics_table)
end

function Run:figure(name) return self.dir .. '/figures/' .. name end

-- Curves of every logged value: one figure for the keys named *loss*, one
-- for the others.
function Run:curves()
  local series = {}
  for _, line in ipairs(self.history) do
    for k, v in pairs(line) do
      if k ~= 'step' and k ~= 'time' then
        local s = series[k] or { name = k, x = {}, y = {} }
        series[k] = s
        s.x[#s.x + 1], s.y[#s.y + 1] = line.step, v
      end
    end
  end
  local loss, other = {}, {}
  for k, s in pairs(series) do
    if k:find('loss') then loss[#loss + 1] = s else other[#other + 1] = s end
  end
  local by_name = function(a, b) return a.name < b.name end
  table.sort(loss, by_name)
  table.sort(other, by_name)
  local plot = require 'lumen.plot'
  plot.curves(self:figure('loss.png'), { title = self.def.name .. ': loss', xlabel = 'step', series = loss })
  if #other > 0 then
    plot.curves(self:figure('metrics.png'), { title = self.def.name .. ': metrics', xlabel = 'step', series = other })
  end
end

function Run:finish()
  if self.stopped then return end
  self:curves()
  self:say(string.format('run folder: %s (config.json, log.jsonl, metrics.json, checkpoint.safetensors, figures/)',
    self.dir), true)
end

-- ------------------------------------------------------------------
-- predict

local function out_name(path)
  local base = path:gsub('/+$', ''):match('([^/]+)$') or 'input'
  base = base:gsub('%.nii%.gz$', ''):gsub('%.[%w]+$', '')
  return base .. '_seg.nii.gz'
end

function recipe.predict(def, opts, given, script)
  if type(def.predict) ~= 'function' then fail("recipe '%s' cannot --predict (it has no predict function)", def.name) end
  local dir
  dir, opts = existing_run(def, '--predict', opts.predict, opts, given)
  if #opts.input == 0 then fail('--predict needs --input PATH (one or more images)') end
  if opts.output == '' then fail('--predict needs --output DIR') end
  apply_session(opts)
  mkdir(opts.output)
  local run = new_run(def, opts, dir)
  local image = require 'lumen.image'
  local written = {}
  for _, path in ipairs(opts.input) do
    local img = image.read(path)
    local t0 = now()
    local lab = def.predict(run, img, path)
    if type(lab) ~= 'table' or not lab.data then fail("recipe '%s': predict must return a lumen.image", def.name) end
    local want, got = img.data:size(), lab.data:size()
    if table.concat(got, 'x') ~= table.concat({ unpack(want, 1, #got) }, 'x') then
      fail("recipe '%s': predict returned %s for an input of %s", def.name, table.concat(got, 'x'), table.concat(want, 'x'))
    end
    local out = opts.output .. '/' .. out_name(path)
    image.new(lab.data, { affine = img.affine }):write(out)
    written[#written + 1] = out
    run:say(string.format('%s -> %s (%.1f s)', path, out, now() - t0))
  end
  return written
end

return recipe
