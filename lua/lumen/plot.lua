-- plot.lua: figures as PNG, for training runs (curves) and segmentations
-- (overlay montages). Pure LuaJIT: pixels live in an FFI byte buffer, text
-- comes from a small built-in bitmap font, and the file is written by
-- lumen.image's PNG writer (the folder must exist).
--
--   local plot = require 'lumen.plot'
--
--   plot.curves('figures/loss.png', {
--     series = {{name = 'train loss', x = {...}, y = {...}, color = {r, g, b}}, ...},
--     title =, xlabel =, ylabel =, width = 640, height = 400, logy = false,
--     xlim = {lo, hi}, ylim = {lo, hi}})
--   A line chart. x and y are lists of numbers or 1-D tensors (x defaults
--   to 1..#y); NaN and infinite points (and y <= 0 with logy) leave gaps; a
--   point with no valid neighbour is a dot; colours default to a fixed
--   palette; names go in the legend; no series, or empty ones, give an
--   empty chart. Axes span the data plus 4% (or xlim/ylim), with ticks at
--   1, 2 or 5 x 10^k (powers of ten on a log axis).
--
--   plot.overlay('figures/case1.png', image, {
--     outlines = {{mask = pred, color = {255, 64, 64}, name = 'prediction'}, ...},
--     axis = 2, slices = 6, columns =, zoom = 1, title =, window = {lo, hi}, flip = true})
--   A montage of grey-scale slices of a 2-D or 3-D tensor (or a lumen.image)
--   with each mask's boundary drawn one pixel wide in its colour (masks:
--   integer or bool, the image's shape; every label boundary of a label map).
--   slices: a count, spread over the slices that hold any mask voxel (the
--   whole volume when none do), or a list of 0-based indices. The window
--   defaults to the 1st and 99th percentiles of the image. In a tile the
--   first remaining axis runs left to right and the second bottom to top
--   (flip = true) or top to bottom. For a 2-D image, axis and slices are
--   ignored. Each tile has its slice index above it, and the outline names
--   make a legend at the bottom.
--
--   plot.text_width(s[, scale]) -> pixels the font takes for s
local ffi = require 'ffi'
local bit = require 'bit'
local lumen = require 'lumen'

local band, lshift = bit.band, bit.lshift
local floor, ceil, max, min, abs, log10 = math.floor, math.ceil, math.max, math.min, math.abs, math.log10
local huge = math.huge

local plot = {}

-------------------------------------------------------------------------------
-- Errors: "lumen.plot.<fn>: ..." at the first caller outside this file, so
-- that a check deep in a helper still points at the user's line.
local function fail(fn, fmt, ...)
  local msg = 'lumen.plot.' .. fn .. ': ' .. string.format(fmt, ...)
  local level = 2
  while true do
    local info = debug.getinfo(level, 'S')
    if not info or not info.source:find('lumen/plot.lua', 1, true) then break end
    level = level + 1
  end
  error(msg, level)
end

local function is_int(v) return type(v) == 'number' and v == floor(v) and abs(v) < 2 ^ 31 end
local function is_finite(v) return v == v and v ~= huge and v ~= -huge end

local function check_options(fn, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= 'table' then fail(fn, 'options must be a table, got %s', lumen.is_tensor(opts) and 'a tensor' or type(opts)) end
  local set = {}
  for _, k in ipairs(known) do set[k] = true end
  for k in pairs(opts) do
    if not set[k] then fail(fn, "unknown option '%s' (expected %s)", tostring(k), table.concat(known, ', ')) end
  end
  return opts
end

local function check_path(fn, path)
  if type(path) ~= 'string' then fail(fn, 'path must be a string, got %s', type(path)) end
  if not path:lower():match('%.png$') then fail(fn, "path '%s' must end in .png", path) end
end

local function int_option(fn, v, what, default, lo, hi)
  if v == nil then return default end
  if not is_int(v) or v < lo or v > hi then
    fail(fn, '%s must be an integer in [%d, %d], got %s', what, lo, hi, tostring(v))
  end
  return v
end

local function color_option(fn, v, what)
  if type(v) ~= 'table' or #v ~= 3 then fail(fn, '%s must be {r, g, b} with integers 0-255, got %s', what, tostring(v)) end
  for i = 1, 3 do
    if not is_int(v[i]) or v[i] < 0 or v[i] > 255 then
      fail(fn, '%s must be {r, g, b} with integers 0-255, component %d is %s', what, i, tostring(v[i]))
    end
  end
  return { v[1], v[2], v[3] }
end

local function string_option(fn, v, what)
  if v ~= nil and type(v) ~= 'string' then fail(fn, '%s must be a string, got %s', what, type(v)) end
  return v
end

-------------------------------------------------------------------------------
-- The font: 5 x 9 cells (rows 0-6 above the baseline, 7-8 descenders), one
-- string per glyph with its rows separated by spaces; missing rows are
-- blank. Characters without a glyph draw as a hollow box.
local GLYPH_W, GLYPH_H = 5, 9
local ADVANCE = GLYPH_W + 1 -- one blank column between letters
local LINE_H = GLYPH_H + 2

local glyph_rows = {
  [' '] = '',
  ['0'] = '.###. #...# #..## #.#.# ##..# #...# .###.',
  ['1'] = '..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.',
  ['2'] = '.###. #...# ....# ...#. ..#.. .#... #####',
  ['3'] = '####. ....# ....# .###. ....# ....# ####.',
  ['4'] = '...#. ..##. .#.#. #..#. ##### ...#. ...#.',
  ['5'] = '##### #.... ####. ....# ....# #...# .###.',
  ['6'] = '..##. .#... #.... ####. #...# #...# .###.',
  ['7'] = '##### ....# ...#. ..#.. .#... .#... .#...',
  ['8'] = '.###. #...# #...# .###. #...# #...# .###.',
  ['9'] = '.###. #...# #...# .#### ....# ...#. .##..',
  A = '.###. #...# #...# ##### #...# #...# #...#',
  B = '####. #...# #...# ####. #...# #...# ####.',
  C = '.###. #...# #.... #.... #.... #...# .###.',
  D = '###.. #..#. #...# #...# #...# #..#. ###..',
  E = '##### #.... #.... ####. #.... #.... #####',
  F = '##### #.... #.... ####. #.... #.... #....',
  G = '.###. #...# #.... #.### #...# #...# .####',
  H = '#...# #...# #...# ##### #...# #...# #...#',
  I = '.###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.',
  J = '..### ...#. ...#. ...#. ...#. #..#. .##..',
  K = '#...# #..#. #.#.. ##... #.#.. #..#. #...#',
  L = '#.... #.... #.... #.... #.... #.... #####',
  M = '#...# ##.## #.#.# #.#.# #...# #...# #...#',
  N = '#...# #...# ##..# #.#.# #..## #...# #...#',
  O = '.###. #...# #...# #...# #...# #...# .###.',
  P = '####. #...# #...# ####. #.... #.... #....',
  Q = '.###. #...# #...# #...# #.#.# #..#. .##.#',
  R = '####. #...# #...# ####. #.#.. #..#. #...#',
  S = '.#### #.... #.... .###. ....# ....# ####.',
  T = '##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..',
  U = '#...# #...# #...# #...# #...# #...# .###.',
  V = '#...# #...# #...# #...# #...# .#.#. ..#..',
  W = '#...# #...# #...# #.#.# #.#.# #.#.# .#.#.',
  X = '#...# #...# .#.#. ..#.. .#.#. #...# #...#',
  Y = '#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..',
  Z = '##### ....# ...#. ..#.. .#... #.... #####',
  a = '..... ..... .###. ....# .#### #...# .####',
  b = '#.... #.... #.##. ##..# #...# #...# ####.',
  c = '..... ..... .###. #.... #.... #...# .###.',
  d = '....# ....# .##.# #..## #...# #...# .####',
  e = '..... ..... .###. #...# ##### #.... .###.',
  f = '..##. .#..# .#... ###.. .#... .#... .#...',
  g = '..... ..... .#### #...# #...# #...# .#### ....# .###.',
  h = '#.... #.... #.##. ##..# #...# #...# #...#',
  i = '..#.. ..... .##.. ..#.. ..#.. ..#.. .###.',
  j = '...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##..',
  k = '#.... #.... #..#. #.#.. ##... #.#.. #..#.',
  l = '.##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.',
  m = '..... ..... ##.#. #.#.# #.#.# #...# #...#',
  n = '..... ..... #.##. ##..# #...# #...# #...#',
  o = '..... ..... .###. #...# #...# #...# .###.',
  p = '..... ..... ####. #...# #...# #...# ####. #.... #....',
  q = '..... ..... .#### #...# #...# #...# .#### ....# ....#',
  r = '..... ..... #.##. ##..# #.... #.... #....',
  s = '..... ..... .###. #.... .###. ....# ####.',
  t = '.#... .#... ###.. .#... .#... .#..# ..##.',
  u = '..... ..... #...# #...# #...# #..## .##.#',
  v = '..... ..... #...# #...# #...# .#.#. ..#..',
  w = '..... ..... #...# #...# #.#.# #.#.# .#.#.',
  x = '..... ..... #...# .#.#. ..#.. .#.#. #...#',
  y = '..... ..... #...# #...# #...# #...# .#### ....# .###.',
  z = '..... ..... ##### ...#. ..#.. .#... #####',
  ['.'] = '..... ..... ..... ..... ..... .##.. .##..',
  [','] = '..... ..... ..... ..... ..... .##.. .##.. ..#.. .#...',
  ['-'] = '..... ..... ..... .###. ..... ..... .....',
  ['+'] = '..... ..#.. ..#.. ##### ..#.. ..#.. .....',
  [':'] = '..... .##.. .##.. ..... .##.. .##.. .....',
  [';'] = '..... .##.. .##.. ..... .##.. .##.. ..#.. .#...',
  ['('] = '...#. ..#.. .#... .#... .#... ..#.. ...#.',
  [')'] = '.#... ..#.. ...#. ...#. ...#. ..#.. .#...',
  ['['] = '.###. .#... .#... .#... .#... .#... .###.',
  [']'] = '.###. ...#. ...#. ...#. ...#. ...#. .###.',
  ['/'] = '....# ....# ...#. ..#.. .#... #.... #....',
  ['\\'] = '#.... #.... .#... ..#.. ...#. ....# ....#',
  ['%'] = '##..# ##..# ...#. ..#.. .#... #..## #..##',
  ['='] = '..... ..... ##### ..... ##### ..... .....',
  ['_'] = '..... ..... ..... ..... ..... ..... ..... #####',
  ['!'] = '..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..',
  ['?'] = '.###. #...# ....# ...#. ..#.. ..... ..#..',
  ["'"] = '..#.. ..#.. .#... ..... ..... ..... .....',
  ['"'] = '.#.#. .#.#. ..... ..... ..... ..... .....',
  ['<'] = '...#. ..#.. .#... #.... .#... ..#.. ...#.',
  ['>'] = '.#... ..#.. ...#. ....# ...#. ..#.. .#...',
  ['*'] = '..... ..#.. #.#.# .###. #.#.# ..#.. .....',
  ['#'] = '.#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.',
  ['|'] = '..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..',
  ['~'] = '..... ..... .#... #.#.# ...#. ..... .....',
  ['^'] = '..#.. .#.#. #...# ..... ..... ..... .....',
  ['&'] = '.##.. #..#. #.#.. .#... #.#.# #..#. .##.#',
  ['@'] = '.###. #...# #.### #.#.# #.##. #.... .####',
}
local BOX = '##### #...# #...# #...# #...# #...# #####'

-- glyph_bits[code * GLYPH_H + row]: bit 4 is the leftmost column.
local glyph_bits = ffi.new('uint8_t[?]', 256 * GLYPH_H)
local function put_glyph(code, spec)
  local row = 0
  for pattern in spec:gmatch('%S+') do
    assert(#pattern == GLYPH_W and row < GLYPH_H, 'plot: malformed glyph')
    local bits = 0
    for col = 1, GLYPH_W do
      if pattern:sub(col, col) == '#' then bits = bits + lshift(1, GLYPH_W - col) end
    end
    glyph_bits[code * GLYPH_H + row] = bits
    row = row + 1
  end
end
for code = 0, 255 do put_glyph(code, BOX) end
for ch, spec in pairs(glyph_rows) do
  for r = 0, GLYPH_H - 1 do glyph_bits[ch:byte() * GLYPH_H + r] = 0 end
  put_glyph(ch:byte(), spec)
end

-- Width in pixels of s drawn at an integer scale (no trailing gap).
function plot.text_width(s, scale)
  if type(s) ~= 'string' then fail('text_width', 'text must be a string, got %s', type(s)) end
  scale = int_option('text_width', scale, 'scale', 1, 1, 16)
  if #s == 0 then return 0 end
  return (#s * ADVANCE - 1) * scale
end
local text_width = plot.text_width

-------------------------------------------------------------------------------
-- Canvas: W x H RGB bytes, row-major from the top-left.
local Canvas = {}
Canvas.__index = Canvas

local function new_canvas(w, h, bg)
  local buf = ffi.new('uint8_t[?]', w * h * 3)
  local c = setmetatable({ w = w, h = h, buf = buf }, Canvas)
  c:fill_rect(0, 0, w, h, bg)
  return c
end

function Canvas:set(x, y, c)
  if x < 0 or y < 0 or x >= self.w or y >= self.h then return end
  local i = (y * self.w + x) * 3
  local b = self.buf
  b[i], b[i + 1], b[i + 2] = c[1], c[2], c[3]
end

function Canvas:fill_rect(x0, y0, w, h, c)
  local x1, y1 = min(x0 + w, self.w) - 1, min(y0 + h, self.h) - 1
  x0, y0 = max(x0, 0), max(y0, 0)
  local b, r, g, bl = self.buf, c[1], c[2], c[3]
  for y = y0, y1 do
    local i = (y * self.w + x0) * 3
    for _ = x0, x1 do
      b[i], b[i + 1], b[i + 2] = r, g, bl
      i = i + 3
    end
  end
end

-- Text with its top-left corner at (x, y); vertical text reads bottom to
-- top with (x, y) the top-left of its bounding box.
function Canvas:text(s, x, y, c, scale, vertical)
  scale = scale or 1
  local len = vertical and text_width(s, scale) or 0
  for k = 1, #s do
    local base = s:byte(k) * GLYPH_H
    local gx0 = (k - 1) * ADVANCE * scale
    for row = 0, GLYPH_H - 1 do
      local bits = glyph_bits[base + row]
      if bits ~= 0 then
        for col = 0, GLYPH_W - 1 do
          if band(bits, lshift(1, GLYPH_W - 1 - col)) ~= 0 then
            local gx, gy = gx0 + col * scale, row * scale
            if vertical then
              -- rotate a quarter turn anticlockwise: along the string is up
              self:fill_rect(x + gy, y + len - gx - scale, scale, scale, c)
            else
              self:fill_rect(x + gx, y + gy, scale, scale, c)
            end
          end
        end
      end
    end
  end
end

-- Liang-Barsky: the part of the segment a-b inside [xmin, xmax] x
-- [ymin, ymax], or nothing. (Points far outside, as with xlim, would
-- otherwise make Bresenham walk millions of pixels.)
local function clip_edge(p, q, t0, t1)
  if p == 0 then return q >= 0, t0, t1 end
  local t = q / p
  if p < 0 then
    if t > t1 then return false end
    return true, max(t0, t), t1
  end
  if t < t0 then return false end
  return true, t0, min(t1, t)
end

local function clip_segment(ax, ay, bx, by, xmin, ymin, xmax, ymax)
  local dx, dy, ok = bx - ax, by - ay, true
  local t0, t1 = 0, 1
  ok, t0, t1 = clip_edge(-dx, ax - xmin, t0, t1)
  if ok then ok, t0, t1 = clip_edge(dx, xmax - ax, t0, t1) end
  if ok then ok, t0, t1 = clip_edge(-dy, ay - ymin, t0, t1) end
  if ok then ok, t0, t1 = clip_edge(dy, ymax - ay, t0, t1) end
  if not ok then return nil end
  return ax + t0 * dx, ay + t0 * dy, ax + t1 * dx, ay + t1 * dy
end

-- A line from (ax, ay) to (bx, by) (pixel coordinates, not necessarily
-- integers), drawn two pixels thick, clipped to clip = {xmin, ymin, xmax, ymax}.
function Canvas:line(ax, ay, bx, by, c, clip)
  if not (is_finite(ax) and is_finite(ay) and is_finite(bx) and is_finite(by)) then return end
  local cx0, cy0, cx1, cy1 = clip[1], clip[2], clip[3], clip[4]
  ax, ay, bx, by = clip_segment(ax, ay, bx, by, cx0, cy0, cx1, cy1)
  if not ax then return end
  local x0, y0, x1, y1 = floor(ax + 0.5), floor(ay + 0.5), floor(bx + 0.5), floor(by + 0.5)
  local function put(x, y)
    if x >= cx0 and x <= cx1 and y >= cy0 and y <= cy1 then self:set(x, y, c) end
  end
  local dx, dy = abs(x1 - x0), -abs(y1 - y0)
  local sx, sy = x0 < x1 and 1 or -1, y0 < y1 and 1 or -1
  local shallow = dx >= -dy
  local err = dx + dy
  local x, y = x0, y0
  while true do
    put(x, y)
    if shallow then put(x, y + 1) else put(x + 1, y) end
    if x == x1 and y == y1 then break end
    local e2 = 2 * err
    if e2 >= dy then err = err + dy; x = x + sx end
    if e2 <= dx then err = err + dx; y = y + sy end
  end
end

-- A filled dot of radius 2 (a 5 x 5 square without its corners).
function Canvas:dot(x, y, c, clip)
  for dy = -2, 2 do
    for dx = -2, 2 do
      local px, py = x + dx, y + dy
      if abs(dx) + abs(dy) < 4 and px >= clip[1] and px <= clip[3] and py >= clip[2] and py <= clip[4] then
        self:set(px, py, c)
      end
    end
  end
end

function Canvas:write(path, fn)
  local image = require 'lumen.image'
  -- the buffer is rows (y, x, rgb); lumen's images index (x, y, channel)
  local rows = lumen.from_ptr(self.buf, { self.h, self.w, 3 }, 'u8')
  local ok, err = pcall(function() image.new(rows:permute(1, 0, 2)):write(path) end)
  if not ok then
    local msg = tostring(err):gsub('^.-lumen%.image%.write: ', '')
    fail(fn, '%s', msg)
  end
end

-------------------------------------------------------------------------------
-- Axis ticks.

-- A step of 1, 2 or 5 x 10^k near range / target.
local function nice_step(range, target)
  local raw = range / max(target, 1)
  local k = floor(log10(raw))
  local f = raw / 10 ^ k
  local m = f <= 1 and 1 or f <= 2 and 2 or f <= 5 and 5 or 10
  return m * 10 ^ k
end

-- Labels for ticks spaced by step: as many decimals as the step needs, or
-- scientific notation (1.5e-4) for very large or small values.
local function tidy_exponent(s)
  s = s:gsub('e%+?(%-?)0*(%d)', 'e%1%2')
  return s
end

local function tick_labels(ticks, step)
  local maxabs = 0
  for _, v in ipairs(ticks) do maxabs = max(maxabs, abs(v)) end
  local step_exp = floor(log10(step) + 1e-9)
  local labels = {}
  for i, v in ipairs(ticks) do
    local s
    if maxabs >= 1e6 or (maxabs > 0 and maxabs < 1e-3) then
      local digits = floor(log10(maxabs) + 1e-9) - step_exp
      digits = digits > 6 and 6 or digits > 0 and digits or 0 -- never "-0"
      s = tidy_exponent(string.format('%.' .. digits .. 'e', v))
    else
      s = string.format('%.' .. (step_exp < 0 and -step_exp or 0) .. 'f', v)
    end
    if s:match('^%-[0.]*$') or s:match('^%-[0.]*e') then s = s:sub(2) end -- no "-0"
    labels[i] = s
  end
  return labels
end

local function linear_ticks(lo, hi, target)
  local step = nice_step(hi - lo, target)
  local ticks = {}
  local k0 = ceil(lo / step - 1e-9)
  for k = k0, min(floor(hi / step + 1e-9), k0 + 100) do -- the cap guards rounding trouble
    local v = k * step
    if abs(v) < step * 1e-9 then v = 0 end
    ticks[#ticks + 1] = v
  end
  return ticks, tick_labels(ticks, step)
end

local function value_label(v)
  if v >= 1e-3 and v < 1e5 then
    local s = string.format('%.6f', v):gsub('0+$', ''):gsub('%.$', '')
    return s
  end
  return tidy_exponent(string.format('%g', v))
end

-- Ticks on a log axis, given lo and hi as log10 values: the powers of ten,
-- or 1/2/5 multiples when the range holds only a few powers, or plain
-- linear ticks for a very narrow range. Returns positions as log10 values.
local function log_ticks(lo, hi, target)
  local ticks, labels = {}, {}
  local p0, p1 = ceil(lo - 1e-9), floor(hi + 1e-9)
  if p1 - p0 + 1 >= max(2, target / 2) then
    local every = max(1, ceil((p1 - p0 + 1) / target))
    for p = p0, p1 do
      if (p - p0) % every == 0 then
        ticks[#ticks + 1] = p
        labels[#labels + 1] = value_label(10 ^ p)
      end
    end
    return ticks, labels
  end
  for p = floor(lo) - 1, ceil(hi) do
    for _, m in ipairs { 1, 2, 5 } do
      local v = log10(m) + p
      if v >= lo - 1e-9 and v <= hi + 1e-9 then
        ticks[#ticks + 1] = v
        labels[#labels + 1] = value_label(m * 10 ^ p)
      end
    end
  end
  if #ticks >= 2 then return ticks, labels end
  local lin, lin_labels = linear_ticks(10 ^ lo, 10 ^ hi, target)
  ticks, labels = {}, {}
  for i, v in ipairs(lin) do
    if v > 0 then
      ticks[#ticks + 1] = log10(v)
      labels[#labels + 1] = lin_labels[i]
    end
  end
  return ticks, labels
end

-------------------------------------------------------------------------------
-- plot.curves

local WHITE, FRAME, TEXT, GRID = { 255, 255, 255 }, { 64, 64, 64 }, { 0, 0, 0 }, { 226, 226, 226 }
-- The Okabe-Ito colour-blind-safe colours (without its yellow and black),
-- then two greys.
local PALETTE = {
  { 0, 114, 178 }, { 213, 94, 0 }, { 0, 158, 115 }, { 204, 121, 167 },
  { 230, 159, 0 }, { 86, 180, 233 }, { 96, 96, 96 }, { 160, 160, 160 },
}

local CURVE_OPTS = { 'series', 'title', 'xlabel', 'ylabel', 'width', 'height', 'logy', 'xlim', 'ylim' }
local SERIES_KEYS = { name = true, x = true, y = true, color = true }

-- A list of numbers from a Lua list or a 1-D tensor.
local function number_list(fn, v, what)
  if lumen.is_tensor(v) then
    if v:dim() > 1 then fail(fn, '%s must be a list of numbers or a 1-D tensor, got a %d-D tensor', what, v:dim()) end
    local t = v:dim() == 0 and { v:item() } or v:to('f64'):totable()
    return t
  end
  if type(v) ~= 'table' then fail(fn, '%s must be a list of numbers, got %s', what, type(v)) end
  for i = 1, #v do
    if type(v[i]) ~= 'number' then fail(fn, '%s[%d] is %s, expected a number', what, i, type(v[i])) end
  end
  return v
end

local function limits_option(fn, v, what, log)
  if v == nil then return nil end
  if type(v) ~= 'table' or type(v[1]) ~= 'number' or type(v[2]) ~= 'number'
      or not is_finite(v[1]) or not is_finite(v[2]) or not (v[1] < v[2]) then
    fail(fn, '%s must be {lo, hi} with finite numbers lo < hi', what)
  end
  if log then
    if not (v[1] > 0) then fail(fn, '%s must be positive with logy, got {%s, %s}', what, tostring(v[1]), tostring(v[2])) end
    return { log10(v[1]), log10(v[2]) }
  end
  return { v[1], v[2] }
end

local function check_series(fn, list, logy)
  if list == nil then return {} end
  if type(list) ~= 'table' then fail(fn, 'series must be a list of {name =, x =, y =}, got %s', type(list)) end
  local out = {}
  for i, s in ipairs(list) do
    local where = 'series ' .. i
    if type(s) ~= 'table' then fail(fn, '%s must be a table {name =, x =, y =}, got %s', where, type(s)) end
    for k in pairs(s) do
      if not SERIES_KEYS[k] then fail(fn, "%s: unknown field '%s' (expected name, x, y, color)", where, tostring(k)) end
    end
    if s.y == nil then fail(fn, '%s: y is missing', where) end
    local y = number_list(fn, s.y, where .. ': y')
    local x
    if s.x == nil then
      x = {}
      for k = 1, #y do x[k] = k end
    else
      x = number_list(fn, s.x, where .. ': x')
    end
    if #x ~= #y then fail(fn, '%s: x and y have %d and %d values', where, #x, #y) end
    if s.name ~= nil and type(s.name) ~= 'string' then fail(fn, '%s: name must be a string, got %s', where, type(s.name)) end
    local color = s.color and color_option(fn, s.color, where .. ': color') or PALETTE[(i - 1) % #PALETTE + 1]
    -- transformed points; NaN marks a gap (non-finite, or not positive on a log axis)
    local px, py = {}, {}
    for k = 1, #y do
      local xv, yv = x[k], y[k]
      if logy then yv = yv > 0 and log10(yv) or 0 / 0 end
      if not is_finite(xv) or not is_finite(yv) then xv, yv = 0 / 0, 0 / 0 end
      px[k], py[k] = xv, yv
    end
    out[i] = { name = s.name, color = color, x = px, y = py, n = #y }
  end
  return out
end

-- Data range along one coordinate of all points, padded by 4% a side (an
-- empty or constant range is widened first).
local function data_range(series, key, empty_lo, empty_hi)
  local lo, hi = huge, -huge
  for _, s in ipairs(series) do
    local v = s[key]
    for k = 1, s.n do
      if v[k] == v[k] then lo, hi = min(lo, v[k]), max(hi, v[k]) end
    end
  end
  if lo > hi then return empty_lo, empty_hi end
  if lo == hi then
    local d = lo ~= 0 and abs(lo) * 0.1 or 1
    lo, hi = lo - d, hi + d
  end
  local pad = (hi - lo) * 0.04
  return lo - pad, hi + pad
end

function plot.curves(path, opts)
  local fn = 'curves'
  check_path(fn, path)
  opts = check_options(fn, opts, CURVE_OPTS)
  local title = string_option(fn, opts.title, 'title')
  local xlabel = string_option(fn, opts.xlabel, 'xlabel')
  local ylabel = string_option(fn, opts.ylabel, 'ylabel')
  local W = int_option(fn, opts.width, 'width', 640, 160, 8192)
  local H = int_option(fn, opts.height, 'height', 400, 120, 8192)
  if opts.logy ~= nil and type(opts.logy) ~= 'boolean' then fail(fn, 'logy must be a boolean, got %s', type(opts.logy)) end
  local logy = opts.logy == true
  local series = check_series(fn, opts.series, logy)
  local xlim = limits_option(fn, opts.xlim, 'xlim', false)
  local ylim = limits_option(fn, opts.ylim, 'ylim', logy)

  local xlo, xhi = data_range(series, 'x', 0, 1)
  local ylo, yhi = data_range(series, 'y', 0, 1)
  if xlim then xlo, xhi = xlim[1], xlim[2] end
  if ylim then ylo, yhi = ylim[1], ylim[2] end
  if not is_finite(xhi - xlo) or not is_finite(yhi - ylo) or not (xhi > xlo and yhi > ylo) then
    fail(fn, 'the values span [%g, %g] x [%g, %g], beyond what a double can scale; pass xlim/ylim', xlo, xhi, ylo, yhi)
  end

  local cv = new_canvas(W, H, WHITE)

  -- top: title, then the legend in rows across the whole width
  local y = 8
  if title then
    local scale = text_width(title, 2) <= W - 16 and 2 or 1
    cv:text(title, floor((W - text_width(title, scale)) / 2), y, TEXT, scale)
    y = y + GLYPH_H * scale + 6
  end
  local lx = 8
  local legend_row = false
  for _, s in ipairs(series) do
    if s.name then
      local w = 20 + 4 + text_width(s.name)
      if lx > 8 and lx + w > W - 8 then lx, y = 8, y + LINE_H + 2 end
      cv:fill_rect(lx, y + 3, 20, 2, s.color)
      cv:text(s.name, lx + 24, y, TEXT)
      lx = lx + w + 14
      legend_row = true
    end
  end
  if legend_row then y = y + LINE_H + 2 end
  local py0 = y + 4
  local py1 = H - 1 - (6 + (xlabel and LINE_H + 2 or 0) + GLYPH_H + 3 + 4)
  if py1 - py0 < 24 then fail(fn, 'height %d is too small for the title, legend and labels', H) end

  -- y ticks decide the left margin
  local yticks, ylabels
  if logy then yticks, ylabels = log_ticks(ylo, yhi, max(2, floor((py1 - py0) / 50)))
  else yticks, ylabels = linear_ticks(ylo, yhi, max(2, floor((py1 - py0) / 50))) end
  local label_w = 0
  for _, s in ipairs(ylabels) do label_w = max(label_w, text_width(s)) end
  local px0 = 6 + (ylabel and GLYPH_H + 6 or 0) + label_w + 6
  local px1 = W - 1 - 16
  local xticks, xlabels
  for _ = 1, 2 do -- widen the right margin when the last label needs it
    xticks, xlabels = linear_ticks(xlo, xhi, max(2, floor((px1 - px0) / 90)))
    local last = xlabels[#xlabels]
    local need = last and ceil(text_width(last) / 2) + 4 or 0
    if W - 1 - px1 >= need then break end
    px1 = W - 1 - need
  end
  if px1 - px0 < 24 then fail(fn, 'width %d is too small for the tick labels', W) end

  -- data coordinates -> pixels inside the frame
  local ix0, ix1, iy0, iy1 = px0 + 1, px1 - 1, py0 + 1, py1 - 1
  local function fx(v) return ix0 + (v - xlo) / (xhi - xlo) * (ix1 - ix0) end
  local function fy(v) return iy1 - (v - ylo) / (yhi - ylo) * (iy1 - iy0) end
  local function X(v) return floor(fx(v) + 0.5) end
  local function Y(v) return floor(fy(v) + 0.5) end
  local clip = { ix0, iy0, ix1, iy1 }

  for i, t in ipairs(yticks) do
    local ty = Y(t)
    if ty >= iy0 and ty <= iy1 then
      cv:fill_rect(ix0, ty, ix1 - ix0 + 1, 1, GRID)
      cv:fill_rect(px0 - 4, ty, 4, 1, FRAME)
      cv:text(ylabels[i], px0 - 6 - text_width(ylabels[i]), ty - 3, TEXT)
    end
  end
  for i, t in ipairs(xticks) do
    local tx = X(t)
    if tx >= ix0 and tx <= ix1 then
      cv:fill_rect(tx, iy0, 1, iy1 - iy0 + 1, GRID)
      cv:fill_rect(tx, py1 + 1, 1, 4, FRAME)
      cv:text(xlabels[i], tx - floor(text_width(xlabels[i]) / 2), py1 + 7, TEXT)
    end
  end
  -- the frame
  cv:fill_rect(px0, py0, px1 - px0 + 1, 1, FRAME)
  cv:fill_rect(px0, py1, px1 - px0 + 1, 1, FRAME)
  cv:fill_rect(px0, py0, 1, py1 - py0 + 1, FRAME)
  cv:fill_rect(px1, py0, 1, py1 - py0 + 1, FRAME)
  if xlabel then
    cv:text(xlabel, floor((px0 + px1 - text_width(xlabel)) / 2), py1 + 7 + GLYPH_H + 4, TEXT)
  end
  if ylabel then
    cv:text(ylabel, 6, floor((py0 + py1 - text_width(ylabel)) / 2), TEXT, 1, true)
  end

  -- the series: runs of consecutive valid points; a run of one is a dot
  for _, s in ipairs(series) do
    local k = 1
    while k <= s.n do
      if s.x[k] == s.x[k] then
        local e = k
        while e < s.n and s.x[e + 1] == s.x[e + 1] do e = e + 1 end
        if e == k then
          local dx, dy = X(s.x[k]), Y(s.y[k])
          if dx >= ix0 - 2 and dx <= ix1 + 2 and dy >= iy0 - 2 and dy <= iy1 + 2 then cv:dot(dx, dy, s.color, clip) end
        else
          for j = k, e - 1 do
            cv:line(fx(s.x[j]), fy(s.y[j]), fx(s.x[j + 1]), fy(s.y[j + 1]), s.color, clip)
          end
        end
        k = e + 1
      else
        k = k + 1
      end
    end
  end
  cv:write(path, fn)
end

-------------------------------------------------------------------------------
-- plot.overlay

-- Neither the background nor the text is grey, so the grey pixels of a
-- montage are exactly its tiles' (the specs find tiles that way).
local BG, LABEL = { 20, 24, 36 }, { 250, 250, 210 }
local OUTLINE_COLORS = { { 255, 64, 64 }, { 64, 255, 64 }, { 64, 160, 255 }, { 255, 200, 0 }, { 255, 64, 255 }, { 0, 255, 255 } }
local OVERLAY_OPTS = { 'outlines', 'axis', 'slices', 'columns', 'zoom', 'title', 'window', 'flip' }
local OUTLINE_KEYS = { mask = true, color = true, name = true }
local MASK_DTYPES = { i32 = true, i64 = true, u8 = true, bool = true }

local function shape_str(t) return table.concat(t:size(), 'x') end

-- A tensor from a tensor or a lumen.image, on the CPU.
local function tensor_of(fn, v, what)
  if type(v) == 'table' and lumen.is_tensor(v.data) then v = v.data end
  if not lumen.is_tensor(v) then fail(fn, '%s must be a tensor or a lumen.image, got %s', what, type(v)) end
  if v:device() ~= 'cpu' then v = v:to('cpu') end
  return v
end

-- A fresh contiguous copy in dtype, and a pointer to its values.
local function contiguous_copy(t, dtype, ctype)
  local c = lumen.empty(t:size(), dtype)
  c:copy_(t)
  return c, ffi.cast(ctype, c:data_ptr())
end

-- The k-th smallest of a[lo..hi] (in place; Hoare partitions).
local function select_kth(a, lo, hi, k)
  while lo < hi do
    local x, y, z = a[lo], a[floor((lo + hi) / 2)], a[hi]
    local pivot = max(min(x, y), min(max(x, y), z)) -- median of three
    local i, j = lo, hi
    while i <= j do
      while a[i] < pivot do i = i + 1 end
      while a[j] > pivot do j = j - 1 end
      if i <= j then
        a[i], a[j] = a[j], a[i]
        i, j = i + 1, j - 1
      end
    end
    if k <= j then hi = j elseif k >= i then lo = i else return a[k] end
  end
  return a[k]
end

-- The 1st and 99th percentiles (numpy's linear interpolation) of the
-- finite values, found by selection rather than a full sort. Above 2^18
-- values, of every k-th value (a brain volume of 7M voxels: every 28th),
-- which moves them by far less than a grey level and keeps this fast.
local SAMPLE_MAX = 2 ^ 18
local function default_window(p, n)
  local every = ceil(n / SAMPLE_MAX)
  local a = ffi.new('double[?]', ceil(n / every))
  local m = 0
  for i = 0, n - 1, every do
    local v = p[i]
    if v == v and v ~= huge and v ~= -huge then a[m] = v; m = m + 1 end
  end
  if m == 0 then return 0, 1 end
  local function percentile(q, from)
    local pos = q / 100 * (m - 1)
    local k = floor(pos)
    local v = select_kth(a, from, m - 1, k)
    local f = pos - k
    if f > 0 then
      local nxt = huge -- everything right of k is >= a[k]: its least is the next value
      for i = k + 1, m - 1 do nxt = min(nxt, a[i]) end
      v = v + (nxt - v) * f
    end
    return v, k
  end
  local lo, k = percentile(1, 0)
  local hi = percentile(99, k)
  if not (hi > lo) then hi = lo + 1 end
  return lo, hi
end

local function check_outlines(fn, list, shape)
  if list == nil then return {} end
  if type(list) ~= 'table' or lumen.is_tensor(list) then
    fail(fn, 'outlines must be a list of {mask =, color =, name =}, got %s', lumen.is_tensor(list) and 'a tensor' or type(list))
  end
  local out = {}
  for i, o in ipairs(list) do
    local where = 'outline ' .. i
    if type(o) ~= 'table' or lumen.is_tensor(o) then fail(fn, '%s must be a table {mask =, color =, name =}', where) end
    for k in pairs(o) do
      if not OUTLINE_KEYS[k] then fail(fn, "%s: unknown field '%s' (expected mask, color, name)", where, tostring(k)) end
    end
    if o.mask == nil then fail(fn, '%s: mask is missing', where) end
    local m = tensor_of(fn, o.mask, where .. ': mask')
    if not MASK_DTYPES[m:dtype()] then
      fail(fn, '%s: mask dtype is %s, expected an integer or bool tensor (labels)', where, m:dtype())
    end
    if shape_str(m) ~= shape then fail(fn, '%s: mask is %s, image is %s', where, shape_str(m), shape) end
    local t, p = contiguous_copy(m, 'i32', 'int32_t*')
    out[i] = {
      t = t, p = p, name = string_option(fn, o.name, where .. ': name'),
      color = o.color and color_option(fn, o.color, where .. ': color') or OUTLINE_COLORS[(i - 1) % #OUTLINE_COLORS + 1],
    }
  end
  return out
end

-- Which slices along axis hold any labelled voxel (a list of booleans).
local function occupied_slices(masks, n, axis)
  local any = {}
  for s = 0, n[axis] - 1 do any[s] = false end
  local others = axis == 0 and { 1, 2 } or axis == 1 and { 0, 2 } or { 0, 1 }
  for _, m in ipairs(masks) do
    local counts = lumen.count_nonzero(m.t, others):totable()
    for s = 0, n[axis] - 1 do
      if counts[s + 1] ~= 0 then any[s] = true end
    end
  end
  return any
end

local function pick_slices(fn, v, masks, n, axis)
  local count = n[axis]
  if type(v) == 'table' then
    local list = {}
    for i, s in ipairs(v) do
      if not is_int(s) or s < -count or s >= count then
        fail(fn, 'slices[%d] is %s, expected an index in [%d, %d] along axis %d', i, tostring(s), -count, count - 1, axis)
      end
      list[i] = s < 0 and s + count or s
    end
    if #list == 0 then fail(fn, 'slices is an empty list') end
    return list
  end
  local want = int_option(fn, v, 'slices', 6, 1, 1024)
  local any = occupied_slices(masks, n, axis)
  local lo, hi = nil, nil
  for s = 0, count - 1 do
    if any[s] then lo = lo or s; hi = s end
  end
  if not lo then lo, hi = 0, count - 1 end
  -- the centres of `want` equal parts of [lo, hi]; repeats dropped
  local list, seen = {}, {}
  for i = 0, want - 1 do
    local s = floor(lo + (i + 0.5) * (hi - lo + 1) / want)
    if not seen[s] then seen[s] = true; list[#list + 1] = s end
  end
  return list
end

function plot.overlay(path, img, opts)
  local fn = 'overlay'
  check_path(fn, path)
  opts = check_options(fn, opts, OVERLAY_OPTS)
  local data = tensor_of(fn, img, 'image')
  local nd = data:dim()
  if nd ~= 2 and nd ~= 3 then fail(fn, 'image is %d-D (%s), expected 2-D or 3-D', nd, shape_str(data)) end
  if data:numel() == 0 then fail(fn, 'image is empty (%s)', shape_str(data)) end
  local shape = shape_str(data)
  local vol, vp = contiguous_copy(data, 'f64', 'double*')
  local masks = check_outlines(fn, opts.outlines, shape)
  local zoom = int_option(fn, opts.zoom, 'zoom', 1, 1, 16)
  local title = string_option(fn, opts.title, 'title')
  if opts.flip ~= nil and type(opts.flip) ~= 'boolean' then fail(fn, 'flip must be a boolean, got %s', type(opts.flip)) end
  local flip = opts.flip ~= false
  local lo, hi
  if opts.window ~= nil then
    local w = opts.window
    if type(w) ~= 'table' or type(w[1]) ~= 'number' or type(w[2]) ~= 'number'
        or not is_finite(w[1]) or not is_finite(w[2]) or not (w[1] < w[2]) then
      fail(fn, 'window must be {lo, hi} with finite numbers lo < hi')
    end
    lo, hi = w[1], w[2]
  else
    lo, hi = default_window(vp, data:numel())
  end

  -- geometry: n[0..2] sizes; a 2-D image is one slice of a 3-D one
  local size = data:size()
  local n, axis, slices
  if nd == 2 then
    n, axis, slices = { [0] = size[1], size[2], 1 }, 2, { 0 }
  else
    n = { [0] = size[1], size[2], size[3] }
    axis = opts.axis == nil and 2 or opts.axis
    if not is_int(axis) or axis < -3 or axis > 2 then fail(fn, 'axis must be 0, 1 or 2 (or -3..-1), got %s', tostring(axis)) end
    if axis < 0 then axis = axis + 3 end
    slices = pick_slices(fn, opts.slices, masks, n, axis)
  end
  local stride = { [0] = n[1] * n[2], n[2], 1 }
  local pa, qa = axis == 0 and 1 or 0, axis == 2 and 1 or 2 -- in-plane axes, in order
  local np, nq = n[pa], n[qa]
  local sp, sq, sa = stride[pa], stride[qa], stride[axis]
  local columns = int_option(fn, opts.columns, 'columns', min(#slices, ceil(math.sqrt(#slices))), 1, 1024)
  columns = min(columns, #slices)
  local rows = ceil(#slices / columns)

  -- layout: title, rows of (slice label strip, tile), legend
  local PAD = 6
  local tw, th = np * zoom, nq * zoom
  local strip = nd == 3 and LINE_H or 0
  local legend_w, named = 0, false
  for _, m in ipairs(masks) do
    if m.name then legend_w = legend_w + 14 + text_width(m.name) + 12; named = true end
  end
  local W = max(PAD + columns * (tw + PAD), legend_w + 2 * PAD, title and text_width(title) + 2 * PAD or 0)
  local title_scale = (title and text_width(title, 2) + 2 * PAD <= W) and 2 or 1
  local title_h = title and GLYPH_H * title_scale + PAD or 0
  local legend_h = named and LINE_H + PAD or 0
  local H = PAD + title_h + rows * (strip + th + PAD) + legend_h
  if W * H > 2 ^ 26 then fail(fn, 'the figure would be %dx%d pixels; use fewer slices or a smaller zoom', W, H) end
  local cv = new_canvas(W, H, BG)
  local buf = cv.buf
  if title then cv:text(title, floor((W - text_width(title, title_scale)) / 2), PAD, LABEL, title_scale) end

  -- per-tile scratch in display order (row 0 at the top)
  local grey = ffi.new('uint8_t[?]', np * nq)
  local lab = ffi.new('int32_t[?]', np * nq)
  local scale = 255 / (hi - lo)
  for t, s in ipairs(slices) do
    local col, row = (t - 1) % columns, floor((t - 1) / columns)
    local x0 = PAD + col * (tw + PAD)
    local ystrip = PAD + title_h + row * (strip + th + PAD)
    local y0 = ystrip + strip
    if nd == 3 then cv:text(tostring(s), x0, ystrip, LABEL) end
    local base = s * sa
    for r = 0, nq - 1 do
      local q = flip and nq - 1 - r or r
      for c = 0, np - 1 do
        local v = vp[base + c * sp + q * sq]
        local g = (v - lo) * scale
        g = (g ~= g or g < 0) and 0 or g > 255 and 255 or floor(g + 0.5)
        grey[r * np + c] = g
      end
    end
    -- the tile: each voxel a zoom x zoom block
    for r = 0, nq - 1 do
      for dy = 0, zoom - 1 do
        local o = ((y0 + r * zoom + dy) * W + x0) * 3
        for c = 0, np - 1 do
          local g = grey[r * np + c]
          for _ = 1, zoom do
            buf[o], buf[o + 1], buf[o + 2] = g, g, g
            o = o + 3
          end
        end
      end
    end
    -- outlines: the display pixels of a labelled voxel that touch a
    -- differently labelled (or outside) neighbour, one pixel wide
    for _, m in ipairs(masks) do
      local mp = m.p
      for r = 0, nq - 1 do
        local q = flip and nq - 1 - r or r
        for c = 0, np - 1 do lab[r * np + c] = mp[base + c * sp + q * sq] end
      end
      local cr, cg, cb = m.color[1], m.color[2], m.color[3]
      local function paint(x, y, w, h)
        for yy = y, y + h - 1 do
          local o = (yy * W + x) * 3
          for _ = 1, w do
            buf[o], buf[o + 1], buf[o + 2] = cr, cg, cb
            o = o + 3
          end
        end
      end
      for r = 0, nq - 1 do
        for c = 0, np - 1 do
          local L = lab[r * np + c]
          if L ~= 0 then
            local bx, by = x0 + c * zoom, y0 + r * zoom
            if c == 0 or lab[r * np + c - 1] ~= L then paint(bx, by, 1, zoom) end
            if c == np - 1 or lab[r * np + c + 1] ~= L then paint(bx + zoom - 1, by, 1, zoom) end
            if r == 0 or lab[(r - 1) * np + c] ~= L then paint(bx, by, zoom, 1) end
            if r == nq - 1 or lab[(r + 1) * np + c] ~= L then paint(bx, by + zoom - 1, zoom, 1) end
          end
        end
      end
    end
  end

  -- legend: a swatch and the name of each outline
  if named then
    local x, y = PAD, H - legend_h
    for _, m in ipairs(masks) do
      if m.name then
        cv:fill_rect(x, y + 1, 10, 7, m.color)
        cv:text(m.name, x + 14, y, LABEL)
        x = x + 14 + text_width(m.name) + 12
      end
    end
  end
  cv:write(path, fn)
  -- the copies own the memory read through vp and m.p: alive until here
  vol:free()
  for _, m in ipairs(masks) do m.t:free() end
end

return plot
