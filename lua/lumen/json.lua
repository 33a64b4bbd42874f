-- json.lua: a small JSON encoder and decoder (configs, logs, safetensors
-- headers). Objects are Lua tables with string keys, arrays are lists;
-- json.null stands for null.
local json = { null = setmetatable({}, { __tostring = function() return 'null' end }) }

local escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function encode(v, out)
  local t = type(v)
  if v == nil or v == json.null then
    out[#out + 1] = 'null'
  elseif t == 'boolean' then
    out[#out + 1] = tostring(v)
  elseif t == 'number' then
    if v ~= v or v == math.huge or v == -math.huge then error('json.encode: cannot encode ' .. tostring(v), 0) end
    local s = (v == math.floor(v) and math.abs(v) < 2 ^ 53) and string.format('%d', v) or string.format('%.15g', v)
    if tonumber(s) ~= v then s = string.format('%.17g', v) end
    out[#out + 1] = s
  elseif t == 'string' then
    out[#out + 1] = '"' .. v:gsub('[%c"\\]', function(c) return escapes[c] or string.format('\\u%04x', c:byte()) end) .. '"'
  elseif t == 'table' then
    local n = #v
    if n > 0 or next(v) == nil and getmetatable(v) == json.array_mt then
      out[#out + 1] = '['
      for i = 1, n do
        if i > 1 then out[#out + 1] = ',' end
        encode(v[i], out)
      end
      out[#out + 1] = ']'
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= 'string' then error('json.encode: object key ' .. tostring(k) .. ' is not a string', 0) end
        keys[#keys + 1] = k
      end
      table.sort(keys)
      out[#out + 1] = '{'
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = ',' end
        encode(k, out)
        out[#out + 1] = ':'
        encode(v[k], out)
      end
      out[#out + 1] = '}'
    end
  else
    error('json.encode: cannot encode a ' .. t, 0)
  end
end

-- A table with this metatable encodes as [] even when empty.
json.array_mt = {}
function json.array(t) return setmetatable(t or {}, json.array_mt) end

function json.encode(v)
  local out = {}
  encode(v, out)
  return table.concat(out)
end

local function fail(s, i, what)
  error(string.format('json.decode: %s at byte %d', what, i), 0)
end

local decode_value
local function skip(s, i) return s:find('[^ \t\r\n]', i) or #s + 1 end

local function decode_string(s, i)
  local out, j = {}, i + 1
  while true do
    local c = s:sub(j, j)
    if c == '' then fail(s, j, 'unterminated string') end
    if c == '"' then return table.concat(out), j + 1 end
    if c == '\\' then
      local e = s:sub(j + 1, j + 1)
      local map = { b = '\b', f = '\f', n = '\n', r = '\r', t = '\t', ['"'] = '"', ['\\'] = '\\', ['/'] = '/' }
      if map[e] then
        out[#out + 1] = map[e]
        j = j + 2
      elseif e == 'u' then
        local hex = s:sub(j + 2, j + 5)
        local cp = tonumber(hex, 16)
        if not cp or #hex < 4 then fail(s, j, 'bad \\u escape') end
        if cp < 0x80 then out[#out + 1] = string.char(cp)
        elseif cp < 0x800 then out[#out + 1] = string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
        else out[#out + 1] = string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64) end
        j = j + 6
      else
        fail(s, j, 'bad escape')
      end
    else
      local k = s:find('["\\]', j)
      if not k then fail(s, j, 'unterminated string') end
      out[#out + 1] = s:sub(j, k - 1)
      j = k
    end
  end
end

function decode_value(s, i)
  i = skip(s, i)
  local c = s:sub(i, i)
  if c == '{' then
    local obj = {}
    i = skip(s, i + 1)
    if s:sub(i, i) == '}' then return obj, i + 1 end
    while true do
      if s:sub(i, i) ~= '"' then fail(s, i, 'expected a string key') end
      local k
      k, i = decode_string(s, i)
      i = skip(s, i)
      if s:sub(i, i) ~= ':' then fail(s, i, "expected ':'") end
      obj[k], i = decode_value(s, i + 1)
      i = skip(s, i)
      local d = s:sub(i, i)
      if d == '}' then return obj, i + 1 end
      if d ~= ',' then fail(s, i, "expected ',' or '}'") end
      i = skip(s, i + 1)
    end
  elseif c == '[' then
    local arr = json.array()
    i = skip(s, i + 1)
    if s:sub(i, i) == ']' then return arr, i + 1 end
    while true do
      arr[#arr + 1], i = decode_value(s, i)
      i = skip(s, i)
      local d = s:sub(i, i)
      if d == ']' then return arr, i + 1 end
      if d ~= ',' then fail(s, i, "expected ',' or ']'") end
      i = i + 1
    end
  elseif c == '"' then
    return decode_string(s, i)
  elseif s:sub(i, i + 3) == 'true' then return true, i + 4
  elseif s:sub(i, i + 4) == 'false' then return false, i + 5
  elseif s:sub(i, i + 3) == 'null' then return json.null, i + 4
  else
    local num = s:match('^-?%d+%.?%d*[eE]?[-+]?%d*', i)
    if not num or num == '' or not tonumber(num) then fail(s, i, 'unexpected character') end
    return tonumber(num), i + #num
  end
end

function json.decode(s)
  if type(s) ~= 'string' then error('json.decode: expected a string', 2) end
  local ok, v, i = pcall(decode_value, s, 1)
  if not ok then error(v, 2) end
  if skip(s, i) <= #s then error(string.format('json.decode: trailing data at byte %d', i), 2) end
  return v
end

return json
