-- print.lua: tostring(t) / print(t) in PyTorch's layout (nested brackets,
-- aligned columns, the same choice between fixed and scientific notation,
-- summaries of large tensors), then a Torch7-style footer line:
--
--   [[0.0000, 1.5000],
--    [2.0000, 3.0000]]
--   [lumen.Tensor f32 2x2 cpu]
--
-- Values are read through the layout (core.info) and ffi pointer casts, so
-- printing depends on no other op family and reads only what it shows.
local ffi = require 'ffi'
local core = require 'lumen.core'
local C = core.C

return function(lumen)
  local defaults = { precision = 4, threshold = 1000, edgeitems = 3, linewidth = 80 }
  local opts = {}
  for k, v in pairs(defaults) do opts[k] = v end

  -- set_printoptions{precision=, threshold=, edgeitems=, linewidth=,
  -- sci_mode=, profile='default'|'short'|'full'}
  function lumen.set_printoptions(o)
    if type(o) ~= 'table' then error('lumen.set_printoptions: expected a table of options', 2) end
    for k, v in pairs(o) do
      if k ~= 'profile' and k ~= 'sci_mode' and defaults[k] == nil then
        error(string.format("lumen.set_printoptions: unknown option '%s' (expected precision, threshold, "
          .. 'edgeitems, linewidth, sci_mode or profile)', tostring(k)), 2)
      end
    end
    if o.profile ~= nil then
      local p = ({
        default = defaults,
        short = { precision = 2, threshold = 1000, edgeitems = 2, linewidth = 80 },
        full = { precision = 4, threshold = math.huge, edgeitems = 3, linewidth = 80 },
      })[o.profile]
      if not p then error("lumen.set_printoptions: profile must be 'default', 'short' or 'full'", 2) end
      for k, v in pairs(p) do opts[k] = v end
    end
    for k in pairs(defaults) do
      local v = o[k]
      if v ~= nil then
        if type(v) ~= 'number' or v < 0 or (v ~= math.floor(v) and v ~= math.huge) then
          error(string.format('lumen.set_printoptions: %s must be a non-negative integer, got %s', k, tostring(v)), 2)
        end
        opts[k] = v
      end
    end
    if o.sci_mode ~= nil and type(o.sci_mode) ~= 'boolean' then
      error('lumen.set_printoptions: sci_mode must be true, false or nil', 2)
    end
    opts.sci_mode = o.sci_mode
  end
  function lumen.get_printoptions()
    return { precision = opts.precision, threshold = opts.threshold, edgeitems = opts.edgeitems,
      linewidth = opts.linewidth, sci_mode = opts.sci_mode }
  end

  local SKIP = {} -- marks the '...' of a summarised dimension

  -- Values to show, as nested Lua tables (SKIP where a dimension is cut).
  -- Leaves are numbers (floats), strings (integers) or booleans.
  local function gather(info, summarize)
    local nd, code = info.ndim, info.dtype
    local shape, stride = {}, {}
    for k = 0, nd - 1 do shape[k + 1], stride[k + 1] = tonumber(info.shape[k]), tonumber(info.stride[k]) end
    local p = ffi.cast(core.ctypes[code], info.data)
    local e = opts.edgeitems
    local function leaf(off)
      local v = p[off]
      if code == C.LM_BOOL then return v ~= 0 end
      if code == C.LM_I64 then return (tostring(v):gsub('LL$', '')) end
      if code == C.LM_F32 or code == C.LM_F64 then return tonumber(v) end
      return string.format('%d', v)
    end
    local function walk(d, off)
      if d > nd then return leaf(off) end
      local n, r = shape[d], {}
      if summarize and n > 2 * e then
        for k = 0, e - 1 do r[#r + 1] = walk(d + 1, off + k * stride[d]) end
        r[#r + 1] = SKIP
        for k = n - e, n - 1 do r[#r + 1] = walk(d + 1, off + k * stride[d]) end
      else
        for k = 0, n - 1 do r[k + 1] = walk(d + 1, off + k * stride[d]) end
      end
      return r
    end
    return walk(1, 0)
  end

  local function each_leaf(x, fn)
    if type(x) ~= 'table' then return fn(x) end
    for _, v in ipairs(x) do
      if v ~= SKIP then each_leaf(v, fn) end
    end
  end

  local function finite(v) return v == v and v ~= math.huge and v ~= -math.huge end

  -- PyTorch's _Formatter: one width for every entry; floats print in int
  -- mode (all integral: "3."), fixed ("3.1416") or scientific notation,
  -- decided from the nonzero finite values shown.
  local function formatter(data, is_float)
    local f = { width = 1, int_mode = true, sci = false }
    local prec = opts.precision
    if not is_float then
      each_leaf(data, function(v) f.width = math.max(f.width, #tostring(v)) end)
    else
      local vals = {}
      each_leaf(data, function(v) if finite(v) and v ~= 0 then vals[#vals + 1] = v end end)
      if #vals > 0 then
        local lo, hi = math.huge, 0
        for _, v in ipairs(vals) do
          local a = math.abs(v)
          lo, hi = math.min(lo, a), math.max(hi, a)
          if v ~= math.ceil(v) then f.int_mode = false end
        end
        local fmt, extra
        if f.int_mode then
          f.sci = hi / lo > 1000 or hi > 1e8
          fmt, extra = f.sci and ('%.' .. prec .. 'e') or '%.0f', f.sci and 0 or 1
        else
          f.sci = hi / lo > 1000 or hi > 1e8 or lo < 1e-4
          fmt, extra = '%.' .. prec .. (f.sci and 'e' or 'f'), 0
        end
        for _, v in ipairs(vals) do f.width = math.max(f.width, #string.format(fmt, v) + extra) end
      end
      if opts.sci_mode ~= nil then f.sci = opts.sci_mode end
    end
    function f.format(v)
      local s
      if type(v) == 'boolean' or type(v) == 'string' then
        s = tostring(v)
      elseif v ~= v then
        s = 'nan'
      elseif v == math.huge or v == -math.huge then
        s = v > 0 and 'inf' or '-inf'
      elseif f.sci then
        s = string.format('%.' .. prec .. 'e', v)
      elseif f.int_mode then
        s = string.format('%.0f', v) .. '.'
      else
        s = string.format('%.' .. prec .. 'f', v)
      end
      return string.rep(' ', f.width - #s) .. s
    end
    return f
  end

  -- PyTorch's _tensor_str_with_formatter, with the layout starting at
  -- column indent.
  local function render(x, depth, indent, f)
    if type(x) ~= 'table' then return f.format(x) end
    if depth == 1 then
      local items = {}
      for k, v in ipairs(x) do items[k] = v == SKIP and ' ...' or f.format(v) end
      local per_line = math.max(1, math.floor((opts.linewidth - indent) / (f.width + 2)))
      local lines = {}
      for k = 1, #items, per_line do
        lines[#lines + 1] = table.concat(items, ', ', k, math.min(#items, k + per_line - 1))
      end
      return '[' .. table.concat(lines, ',\n' .. string.rep(' ', indent + 1)) .. ']'
    end
    local parts = {}
    for k, v in ipairs(x) do parts[k] = v == SKIP and '...' or render(v, depth - 1, indent + 1, f) end
    return '[' .. table.concat(parts, ',' .. string.rep('\n', depth - 1) .. string.rep(' ', indent + 1)) .. ']'
  end

  -- The values part alone (no footer), laid out from column indent.
  local function body(t, indent)
    core.handle(t, 'format_values', 'tensor')
    indent = core.int_arg(indent, 'format_values', 'indent', 0)
    t = core.host(t)
    local info = core.info(t)
    if tonumber(info.numel) == 0 then return '[]' end
    local summarize = tonumber(info.numel) > opts.threshold
    local data = gather(info, summarize)
    local f = formatter(data, core.is_float(info.dtype))
    return render(data, info.ndim, indent, f)
  end
  lumen.format_values = body

  local function footer(t)
    local info = core.info(t)
    local dims = {}
    for k = 0, info.ndim - 1 do dims[k + 1] = tostring(tonumber(info.shape[k])) end
    return string.format('[lumen.Tensor %s %s %s]', core.dtype_names[info.dtype],
      info.ndim == 0 and 'scalar' or table.concat(dims, 'x'), core.device_names[info.device] or 'unknown')
  end

  core.tensor_mt.__tostring = function(t)
    if t.h == nil then return '[lumen.Tensor (freed)]' end
    -- values on a device are copied to the CPU first (core.host)
    return body(t, 0) .. '\n' .. footer(t)
  end
end
