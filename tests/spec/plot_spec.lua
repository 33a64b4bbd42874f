-- Figures as PNG (lua/lumen/plot.lua): each figure is read back through
-- lumen's PNG reader and its pixels are checked against where the data
-- must land: curve pixels along the frame's diagonal, outline rings at the
-- mask's boundary (with zoom and flip), tile greys through the window.
local lumen = require 'lumen'
local image = require 'lumen.image'
local plot = require 'lumen.plot'
local ffi = require 'ffi'
local scratch = require 'helpers.scratch'

local dir, P = scratch.dir()
local floor, abs = math.floor, math.abs

-- A PNG read back: px(x, y) -> r, g, b (x column, y row from the top).
local function load(path)
  local img = image.read(path)
  local size = img.data:size()
  assert.are.equal(3, size[3])
  local rows = img.data:permute(1, 0, 2):contiguous()
  local p = ffi.cast('uint8_t*', rows:data_ptr())
  local w, h = size[1], size[2]
  return {
    w = w, h = h, rows = rows,
    px = function(x, y)
      local i = (y * w + x) * 3
      return p[i], p[i + 1], p[i + 2]
    end,
  }
end

local function is_color(f, x, y, c)
  local r, g, b = f.px(x, y)
  return r == c[1] and g == c[2] and b == c[3]
end

-- Every pixel of colour c, as a set keyed "x,y", and their count.
local function pixels_of(f, c, x0, y0, x1, y1)
  local set, n = {}, 0
  for y = y0 or 0, y1 or f.h - 1 do
    for x = x0 or 0, x1 or f.w - 1 do
      if is_color(f, x, y, c) then set[x .. ',' .. y] = true; n = n + 1 end
    end
  end
  return set, n
end

-------------------------------------------------------------------------------
describe('plot.curves', function()
  local FRAME = { 64, 64, 64 }
  local RED, BLUE = { 200, 0, 0 }, { 0, 0, 200 }

  -- The frame: the longest horizontal run of frame-coloured pixels gives
  -- its left and right columns, the longest vertical run its rows.
  local function frame_of(f)
    local best, x0, x1 = 0, nil, nil
    for y = 0, f.h - 1 do
      local run = 0
      for x = 0, f.w - 1 do
        run = is_color(f, x, y, FRAME) and run + 1 or 0
        if run > best then best, x0, x1 = run, x - run + 1, x end
      end
    end
    local bestv, y0, y1 = 0, nil, nil
    for x = 0, f.w - 1 do
      local run = 0
      for y = 0, f.h - 1 do
        run = is_color(f, x, y, FRAME) and run + 1 or 0
        if run > bestv then bestv, y0, y1 = run, y - run + 1, y end
      end
    end
    assert.is_true(best > 50 and bestv > 50, 'no frame found')
    -- the other sides are there too
    for x = x0, x1 do assert.is_true(is_color(f, x, y0, FRAME) and is_color(f, x, y1, FRAME)) end
    for y = y0, y1 do assert.is_true(is_color(f, x0, y, FRAME) and is_color(f, x1, y, FRAME)) end
    return { x0 = x0 + 1, x1 = x1 - 1, y0 = y0 + 1, y1 = y1 - 1, fx0 = x0, fx1 = x1, fy0 = y0, fy1 = y1 }
  end

  local function range(a, b)
    local t = {}
    for v = a, b do t[#t + 1] = v end
    return t
  end

  it('draws y = x along the diagonal of the frame', function()
    local xs = range(0, 10)
    plot.curves(P('diag.png'), { series = { { name = 'y=x', x = xs, y = xs, color = RED } }, width = 400, height = 300 })
    local f = load(P('diag.png'))
    assert.are.same({ 400, 300 }, { f.w, f.h })
    local fr = frame_of(f)
    local slope = (fr.y1 - fr.y0) / (fr.x1 - fr.x0)
    local cols, first, last = {}, nil, nil
    local _, n = pixels_of(f, RED, fr.fx0, fr.fy0, fr.fx1, fr.fy1)
    assert.is_true(n > 200)
    for x = fr.fx0, fr.fx1 do
      for y = fr.fy0, fr.fy1 do
        if is_color(f, x, y, RED) then
          local want = fr.y1 - (x - fr.x0) * slope
          -- rounded vertices, Bresenham and the 2-pixel stroke: 2.25 at most
          assert(abs(y - want) <= 2.25, string.format('line pixel (%d, %d) is off the diagonal (row %.1f)', x, y, want))
          cols[x] = true
          first, last = first or x, x
        end
      end
    end
    -- one unbroken stroke over most of the width, centred (equal margins)
    for x = first, last do assert(cols[x], 'gap in the line at column ' .. x) end
    assert.is_true(last - first > 0.85 * (fr.x1 - fr.x0))
    assert.is_true(abs((first - fr.x0) - (fr.x1 - last)) <= 2)
    -- nothing of the series outside the frame but its legend swatch above it
    for y = fr.fy1, f.h - 1 do
      for x = 0, f.w - 1 do assert.is_false(is_color(f, x, y, RED)) end
    end
  end)

  it('maps xlim and ylim to the frame corners, and log10 y to a straight line on logy', function()
    local xs, ys = range(0, 30), {}
    for i, x in ipairs(xs) do ys[i] = 10 ^ (x / 10) end
    plot.curves(P('log.png'), { logy = true, xlim = { 0, 3 * 10 }, ylim = { 1, 1000 },
      series = { { x = xs, y = ys, color = BLUE } } })
    local f = load(P('log.png'))
    local fr = frame_of(f)
    local slope = (fr.y1 - fr.y0) / (fr.x1 - fr.x0)
    local first, last
    for x = fr.x0, fr.x1 do
      for y = fr.y0, fr.y1 do
        if is_color(f, x, y, BLUE) then
          assert(abs(y - (fr.y1 - (x - fr.x0) * slope)) <= 2.25, 'log line off the diagonal at ' .. x .. ',' .. y)
          first, last = first or x, x
        end
      end
    end
    assert.are.equal(fr.x0, first)
    assert.are.equal(fr.x1, last)
  end)

  it('leaves gaps at NaN, inf and (on logy) non-positive points, and draws a lone point as a dot', function()
    local xs, ys = range(0, 20), range(0, 20)
    ys[6], ys[7], ys[8] = 0 / 0, math.huge, 0 / 0 -- x = 5..7
    ys[12] = -math.huge                             -- x = 11
    ys[14] = 0 / 0                                  -- x = 13: x = 12 is alone
    plot.curves(P('gaps.png'), { xlim = { 0, 20 }, ylim = { 0, 20 }, series = { { x = xs, y = ys, color = RED } } })
    local f = load(P('gaps.png'))
    local fr = frame_of(f)
    local function X(v) return fr.x0 + v / 20 * (fr.x1 - fr.x0) end
    local function Y(v) return fr.y1 - v / 20 * (fr.y1 - fr.y0) end
    local function count(xa, xb)
      local _, n = pixels_of(f, RED, math.ceil(xa), fr.y0, floor(xb), fr.y1)
      return n
    end
    assert.are.equal(0, count(X(4) + 2, X(8) - 2))   -- points 4 and 8 are not joined
    assert.are.equal(0, count(X(10) + 3, X(12) - 3)) -- 10 and 12 are not joined
    assert.are.equal(0, count(X(12) + 3, X(14) - 3))
    assert.is_true(count(X(1), X(3)) > 10)            -- the runs are drawn
    assert.is_true(count(X(8) + 1, X(10) - 1) > 10)
    -- the lone point: a dot of a few pixels around it
    local n = 0
    for y = floor(Y(12)) - 3, floor(Y(12)) + 3 do
      for x = floor(X(12)) - 3, floor(X(12)) + 3 do
        if is_color(f, x, y, RED) then n = n + 1 end
      end
    end
    assert.is_true(n >= 9 and n <= 25, 'dot of ' .. n .. ' pixels')

    -- logy: y <= 0 are gaps too; a one-point series is a dot
    plot.curves(P('gaps_log.png'), { logy = true, xlim = { 0, 4 }, ylim = { 1, 100 },
      series = { { x = { 0, 1, 2, 3, 4 }, y = { 1, 10, 0, -5, 100 }, color = RED },
                 { x = { 2 }, y = { 10 }, color = BLUE } } })
    f = load(P('gaps_log.png'))
    fr = frame_of(f)
    local function Xl(v) return fr.x0 + v / 4 * (fr.x1 - fr.x0) end
    local _, between = pixels_of(f, RED, floor(Xl(1)) + 2, fr.y0, floor(Xl(4)) - 3, fr.y1)
    assert.are.equal(0, between)
    local _, dot = pixels_of(f, BLUE, fr.x0, fr.y0, fr.x1, fr.y1)
    assert.is_true(dot >= 9 and dot <= 25)
  end)

  it('writes a legend with a swatch and the name of each series, and a title', function()
    plot.curves(P('legend.png'), { title = 'Loss', xlabel = 'epoch', ylabel = 'value',
      series = { { name = 'train loss', y = { 3, 2, 1 }, color = RED }, { name = 'val dice', y = { 0.1, 0.5, 0.7 }, color = BLUE } } })
    local f = load(P('legend.png'))
    local fr = frame_of(f)
    local BLACK = { 0, 0, 0 }
    for _, c in ipairs { RED, BLUE } do
      -- the swatch: series colour above the frame
      local sx, sy
      for y = 0, fr.fy0 - 1 do
        for x = 0, f.w - 1 do
          if not sx and is_color(f, x, y, c) then sx, sy = x, y end
        end
      end
      assert(sx, 'no legend swatch')
      -- text to its right on the same line
      local _, n = pixels_of(f, BLACK, sx + 20, sy - 4, math.min(sx + 90, f.w - 1), sy + 6)
      assert.is_true(n > 20, 'no legend text')
    end
    -- title text above the legend, x label under the frame, y label left of it
    local _, above = pixels_of(f, BLACK, 0, 0, f.w - 1, 20)
    assert.is_true(above > 30)
    local _, below = pixels_of(f, BLACK, fr.fx0, fr.fy1 + 18, fr.fx1, f.h - 1)
    assert.is_true(below > 10)
    local _, left = pixels_of(f, BLACK, 0, fr.fy0, 12, fr.fy1)
    assert.is_true(left > 10)
    -- tick labels: text left of the frame, near its rows
    local _, ticks = pixels_of(f, BLACK, 14, fr.fy0, fr.fx0 - 2, fr.fy1)
    assert.is_true(ticks > 20)
  end)

  it('draws an empty chart for no series or empty ones', function()
    plot.curves(P('empty.png'), { series = {} })
    plot.curves(P('empty2.png'), { title = 'nothing yet', series = { { name = 'train loss', x = {}, y = {}, color = RED } } })
    plot.curves(P('empty3.png'), { series = { { x = { 1, 2 }, y = { 0 / 0, 0 / 0 }, color = RED } } })
    for _, name in ipairs { 'empty.png', 'empty2.png', 'empty3.png' } do
      local f = load(P(name))
      local fr = frame_of(f)
      local _, n = pixels_of(f, RED, fr.fx0, fr.fy0, fr.fx1, fr.fy1)
      assert.are.equal(0, n)
    end
  end)

  it('clips lines to the frame when points lie far outside xlim and ylim', function()
    plot.curves(P('clip.png'), { xlim = { 0, 10 }, ylim = { 0, 10 },
      series = { { x = { -1e12, 5, 1e12 }, y = { 5, 5, 1e12 }, color = RED } } })
    local f = load(P('clip.png'))
    local fr = frame_of(f)
    -- the horizontal half: y = 5 from the left edge to the middle
    local mid = fr.y1 - 0.5 * (fr.y1 - fr.y0)
    for x = fr.x0, floor((fr.x0 + fr.x1) / 2) - 1 do
      assert(is_color(f, x, floor(mid + 0.5), RED) or is_color(f, x, floor(mid + 0.5) - 1, RED), 'no line at column ' .. x)
    end
    local _, outside = pixels_of(f, RED, 0, 0, fr.fx0, f.h - 1)
    assert.are.equal(0, outside)
  end)

  it('accepts 1-D tensors for x and y', function()
    local t = lumen.arange(11):to('f32')
    plot.curves(P('tensor.png'), { series = { { x = t, y = t, color = RED } }, xlim = { 0, 10 }, ylim = { 0, 10 } })
    local f = load(P('tensor.png'))
    local fr = frame_of(f)
    assert.is_true(is_color(f, fr.x0, fr.y1, RED) or is_color(f, fr.x0, fr.y1 - 1, RED))
  end)

  it('renders every glyph of the font distinctly', function()
    local chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,-+:;()[]/\\%=_!?\'"<>*#|~^&@'
    -- 'H' first: its left column is lit, which fixes where the cells start
    local title = 'H' .. chars
    local width = (#title + 4) * 12 + 16
    plot.curves(P('font.png'), { title = title, width = width, height = 200 })
    local f = load(P('font.png'))
    local BLACK = { 0, 0, 0 }
    local top, left
    for y = 0, 40 do
      for x = 0, f.w - 1 do
        if is_color(f, x, y, BLACK) then
          top = top or y
          if not left or x < left then left = x end
        end
      end
      if top and y > top + 20 then break end
    end
    assert(top and left, 'no title found')
    local seen = {}
    for k = 0, #title - 1 do
      local bits, lit = {}, 0
      for y = top, top + 17 do -- scale 2: 9 rows of 2 pixels
        for x = left + k * 12, left + k * 12 + 9 do
          local on = is_color(f, x, y, BLACK)
          bits[#bits + 1] = on and '#' or '.'
          if on then lit = lit + 1 end
        end
      end
      local ch = title:sub(k + 1, k + 1)
      assert(lit > 0, "glyph '" .. ch .. "' is blank")
      local key = table.concat(bits)
      if k > 0 then
        assert(not seen[key], string.format("glyphs '%s' and '%s' look the same", tostring(seen[key]), ch))
        seen[key] = ch
      end
    end
    -- the widths the layout uses
    assert.are.equal(17, plot.text_width('abc'))
    assert.are.equal(34, plot.text_width('abc', 2))
    assert.are.equal(0, plot.text_width(''))
  end)

  it('rejects malformed input, naming the option', function()
    local function err(path, opts)
      local ok, msg = pcall(function() plot.curves(path, opts) end)
      assert.is_false(ok)
      assert.is_truthy(msg:find('plot_spec.lua', 1, true), 'error not at the caller: ' .. msg)
      return msg
    end
    local good = { x = { 1, 2 }, y = { 1, 2 } }
    local x10, y9 = range(1, 10), range(1, 9)
    assert.is_truthy(err(P('e.png'), { series = { good, { x = x10, y = y9 } } })
      :find('lumen.plot.curves: series 2: x and y have 10 and 9 values', 1, true))
    assert.is_truthy(err(42, {}):find('lumen.plot.curves: path must be a string', 1, true))
    assert.is_truthy(err(P('e.jpg'), {}):find("must end in .png", 1, true))
    assert.is_truthy(err(P('e.png'), { colour = 1 }):find("unknown option 'colour'", 1, true))
    assert.is_truthy(err(P('e.png'), 'loss'):find('options must be a table', 1, true))
    assert.is_truthy(err(P('e.png'), { series = 3 }):find('series must be a list', 1, true))
    assert.is_truthy(err(P('e.png'), { series = { 'loss' } }):find('series 1 must be a table', 1, true))
    assert.is_truthy(err(P('e.png'), { series = { { x = { 1 } } } }):find('series 1: y is missing', 1, true))
    assert.is_truthy(err(P('e.png'), { series = { { y = { 1, 2, 'a' } } } }):find('series 1: y[3] is string, expected a number', 1, true))
    assert.is_truthy(err(P('e.png'), { series = { { y = { 1 }, style = '-' } } }):find("series 1: unknown field 'style'", 1, true))
    assert.is_truthy(err(P('e.png'), { series = { { y = { 1 }, name = 3 } } }):find('series 1: name must be a string', 1, true))
    assert.is_truthy(err(P('e.png'), { series = { { y = { 1 }, color = { 300, 0, 0 } } } }):find('series 1: color must be {r, g, b}', 1, true))
    assert.is_truthy(err(P('e.png'), { series = { { y = lumen.zeros(2, 2) } } }):find('got a 2-D tensor', 1, true))
    assert.is_truthy(err(P('e.png'), { width = 10 }):find('width must be an integer in [160, 8192], got 10', 1, true))
    assert.is_truthy(err(P('e.png'), { height = 100.5 }):find('height must be an integer', 1, true))
    assert.is_truthy(err(P('e.png'), { logy = 1 }):find('logy must be a boolean', 1, true))
    assert.is_truthy(err(P('e.png'), { title = {} }):find('title must be a string', 1, true))
    assert.is_truthy(err(P('e.png'), { xlim = { 2, 1 } }):find('xlim must be {lo, hi}', 1, true))
    assert.is_truthy(err(P('e.png'), { logy = true, ylim = { 0, 1 } }):find('ylim must be positive with logy', 1, true))
    assert.is_truthy(err(P('e.png'), { series = { { y = { -1e308, 1e308 } } } }):find('beyond what a double can scale', 1, true))
    assert.is_truthy(err(P('no/such/dir/e.png'), {}):find("lumen.plot.curves: cannot write " .. P('no/such/dir/e.png'), 1, true))
    assert.is_truthy(err(P('e.png'), { height = 120, title = 'a', xlabel = 'b',
      series = { { name = 'a', y = {} }, { name = ('b'):rep(200), y = {} }, { name = ('c'):rep(200), y = {} },
        { name = ('c'):rep(200), y = {} }, { name = ('c'):rep(200), y = {} }, { name = ('c'):rep(200), y = {} } } })
      :find('too small', 1, true))
  end)
end)

-------------------------------------------------------------------------------
describe('plot.overlay', function()
  local LABEL = { 250, 250, 210 }
  local RED, GREEN = { 255, 64, 64 }, { 64, 255, 64 }

  local function is_grey(f, x, y)
    local r, g, b = f.px(x, y)
    return r == g and g == b
  end

  -- Tiles: rectangles of grey (or outline-coloured) pixels, in reading order.
  -- (The background and the text are not grey.)
  local function tiles_of(f, colors)
    local function in_tile(x, y)
      if x < 0 or y < 0 or x >= f.w or y >= f.h then return false end
      if is_grey(f, x, y) then return true end
      for _, c in ipairs(colors or {}) do
        if is_color(f, x, y, c) then return true end
      end
      return false
    end
    local tiles = {}
    for y = 0, f.h - 1 do
      for x = 0, f.w - 1 do
        -- a tile's top-left pixel is grey (legend swatches are not)
        if is_grey(f, x, y) and not in_tile(x - 1, y) and not in_tile(x, y - 1) then
          local x1, y1 = x, y
          while in_tile(x1 + 1, y) do x1 = x1 + 1 end
          while in_tile(x, y1 + 1) do y1 = y1 + 1 end
          tiles[#tiles + 1] = { x = x, y = y, w = x1 - x + 1, h = y1 - y + 1 }
        end
      end
    end
    return tiles
  end

  local function clamp_grey(v, lo, hi)
    local g = (v - lo) / (hi - lo) * 255
    return math.max(0, math.min(255, floor(g + 0.5)))
  end

  -- Values v(p, q) = 10 p + q over a 7 x 5 image.
  local function ramp2d()
    local rows = {}
    for p = 0, 6 do
      rows[p + 1] = {}
      for q = 0, 4 do rows[p + 1][q + 1] = 10 * p + q end
    end
    return lumen.tensor(rows)
  end

  it('maps grey levels through the window, with zoom and flip', function()
    for _, flip in ipairs { true, false } do
      local name = P('grey_' .. tostring(flip) .. '.png')
      plot.overlay(name, ramp2d(), { window = { 5, 60 }, zoom = 3, flip = flip })
      local f = load(name)
      local tiles = tiles_of(f)
      assert.are.equal(1, #tiles)
      local t = tiles[1]
      assert.are.same({ 21, 15 }, { t.w, t.h })
      for Y = 0, t.h - 1 do
        for X = 0, t.w - 1 do
          local p = floor(X / 3)
          local q = flip and 4 - floor(Y / 3) or floor(Y / 3)
          local want = clamp_grey(10 * p + q, 5, 60)
          local g = f.px(t.x + X, t.y + Y)
          assert(abs(g - want) <= 1, string.format('flip %s: pixel (%d, %d) is %d, expected %d', tostring(flip), X, Y, g, want))
        end
      end
    end
  end)

  it('defaults the window to the 1st and 99th percentiles', function()
    -- 40 x 25 values, a shuffled 0..999 with a few outliers
    local vals, k = {}, 0
    for p = 1, 40 do
      vals[p] = {}
      for q = 1, 25 do
        vals[p][q] = (k * 379) % 1000
        k = k + 1
      end
    end
    vals[3][4], vals[30][20] = 1e6, -1e6
    local sorted = {}
    for p = 1, 40 do for q = 1, 25 do sorted[#sorted + 1] = vals[p][q] end end
    table.sort(sorted)
    local function pct(q) -- linear interpolation between closest ranks
      local pos = q / 100 * (#sorted - 1)
      local i = floor(pos)
      return sorted[i + 1] + (sorted[i + 2] - sorted[i + 1]) * (pos - i)
    end
    local lo, hi = pct(1), pct(99)
    plot.overlay(P('pct.png'), lumen.tensor(vals):to('i32'), { flip = false })
    local f = load(P('pct.png'))
    local t = tiles_of(f)[1]
    assert.are.same({ 40, 25 }, { t.w, t.h })
    for q = 0, 24 do
      for p = 0, 39 do
        local want = clamp_grey(vals[p + 1][q + 1], lo, hi)
        local g = f.px(t.x + p, t.y + q)
        assert(abs(g - want) <= 1, string.format('(%d, %d): %d, expected %d', p, q, g, want))
      end
    end
  end)

  -- The ring of display pixels around voxels [p0, p1] x [q0, q1] of a tile
  -- with nq rows, as a set keyed "x,y" (tile-relative).
  local function ring(p0, p1, q0, q1, zoom, nq, flip)
    local r0 = flip and nq - 1 - q1 or q0
    local r1 = flip and nq - 1 - q0 or q1
    local x0, x1, y0, y1 = p0 * zoom, (p1 + 1) * zoom - 1, r0 * zoom, (r1 + 1) * zoom - 1
    local set = {}
    for y = y0, y1 do
      for x = x0, x1 do
        if x == x0 or x == x1 or y == y0 or y == y1 then set[x .. ',' .. y] = true end
      end
    end
    return set
  end

  local function colored_in(f, t, c)
    local set = {}
    for y = 0, t.h - 1 do
      for x = 0, t.w - 1 do
        if is_color(f, t.x + x, t.y + y, c) then set[x .. ',' .. y] = true end
      end
    end
    return set
  end

  it('outlines each mask one pixel wide at its boundary, in its colour', function()
    -- 12 x 10 x 8, slice axis 2; prediction p 2..5, q 3..7; truth p 7..10, q 1..2
    local img = lumen.arange(12 * 10 * 8):reshape(12, 10, 8):to('f32')
    local pred = lumen.zeros(12, 10, 8):to('u8')
    pred:narrow(0, 2, 4):narrow(1, 3, 5):fill_(1)
    local truth = lumen.zeros(12, 10, 8):to('i64')
    truth:narrow(0, 7, 4):narrow(1, 1, 2):fill_(1)
    for _, case in ipairs { { zoom = 2, flip = true }, { zoom = 3, flip = false }, { zoom = 1, flip = true } } do
      local name = P('ring.png')
      plot.overlay(name, img, { outlines = { { mask = pred, color = RED, name = 'prediction' },
        { mask = truth:gt(0), color = GREEN, name = 'truth' } }, axis = 2, slices = { 3 },
        zoom = case.zoom, flip = case.flip })
      local f = load(name)
      local tiles = tiles_of(f, { RED, GREEN })
      assert.are.equal(1, #tiles)
      local t = tiles[1]
      assert.are.same({ 12 * case.zoom, 10 * case.zoom }, { t.w, t.h })
      assert.are.same(ring(2, 5, 3, 7, case.zoom, 10, case.flip), colored_in(f, t, RED))
      assert.are.same(ring(7, 10, 1, 2, case.zoom, 10, case.flip), colored_in(f, t, GREEN))
    end
  end)

  it('puts the first remaining axis left to right for every slice axis', function()
    -- a 6 x 7 x 8 volume; a box 1..2 x 2..4 x 3..6 seen along each axis
    local box = { { 1, 2 }, { 2, 4 }, { 3, 6 } }
    local m = lumen.zeros(6, 7, 8):to('i32')
    m:narrow(0, 1, 2):narrow(1, 2, 3):narrow(2, 3, 4):fill_(1)
    local img = lumen.zeros(6, 7, 8)
    local sizes = { 6, 7, 8 }
    for axis = 0, 2 do
      local a = axis == 0 and 1 or 0
      local b = axis == 2 and 1 or 2
      plot.overlay(P('axes.png'), image.new(img), { outlines = { { mask = m, color = RED } },
        axis = axis - 3, slices = { box[axis + 1][1] }, zoom = 2 })
      local f = load(P('axes.png'))
      local t = tiles_of(f, { RED })[1]
      assert.are.same({ sizes[a + 1] * 2, sizes[b + 1] * 2 }, { t.w, t.h })
      assert.are.same(ring(box[a + 1][1], box[a + 1][2], box[b + 1][1], box[b + 1][2], 2, sizes[b + 1], true),
        colored_in(f, t, RED))
    end
  end)

  it('draws every label boundary of a multi-label mask', function()
    -- labels 1 (p 1..3, q 2..5) and 2 (p 4..8, q 2..7) side by side; 2
    -- reaches the image's edges, where its boundary is drawn too
    local m = lumen.zeros(9, 8):to('i32')
    m:narrow(0, 1, 3):narrow(1, 2, 4):fill_(1)
    m:narrow(0, 4, 5):narrow(1, 2, 6):fill_(2)
    plot.overlay(P('labels.png'), lumen.zeros(9, 8), { outlines = { { mask = m, color = RED } }, zoom = 2 })
    local f = load(P('labels.png'))
    local t = tiles_of(f, { RED })[1]
    assert.are.same({ 18, 16 }, { t.w, t.h })
    local want = ring(1, 3, 2, 5, 2, 8, true)
    for k in pairs(ring(4, 8, 2, 7, 2, 8, true)) do want[k] = true end
    assert.are.same(want, colored_in(f, t, RED))
  end)

  -- The slice shown in a tile, read from its grey (values = slice index).
  local function shown_slices(f, tiles, n)
    local list = {}
    for i, t in ipairs(tiles) do
      local g = f.px(t.x, t.y)
      list[i] = floor(g / 255 * (n - 1) + 0.5)
    end
    return list
  end

  it('spreads a number of slices over the extent of the masks, or the volume', function()
    -- value = slice index k along axis 2 (of 30)
    local img = lumen.arange(30):reshape(1, 1, 30):expand(6, 5, 30):contiguous():to('f64')
    local m = lumen.zeros(6, 5, 30):to('bool')
    m:narrow(2, 10, 10):fill_(true)
    m:narrow(2, 10, 10):narrow(0, 0, 1):fill_(false)
    plot.overlay(P('spread.png'), img, { outlines = { { mask = m, color = RED } }, slices = 2, window = { 0, 29 } })
    local f = load(P('spread.png'))
    local tiles = tiles_of(f, { RED })
    assert.are.equal(2, #tiles)
    local s = shown_slices(f, tiles, 30)
    assert.is_true(s[1] >= 10 and s[1] <= 14 and s[2] >= 15 and s[2] <= 19, table.concat(s, ' '))

    -- empty masks: the whole volume, in thirds; columns lays them out
    plot.overlay(P('spread2.png'), img, { outlines = { { mask = lumen.zeros(6, 5, 30):to('u8'), color = RED } },
      slices = 3, columns = 1, window = { 0, 29 } })
    f = load(P('spread2.png'))
    tiles = tiles_of(f, { RED })
    assert.are.equal(3, #tiles)
    assert.is_true(tiles[1].x == tiles[2].x and tiles[2].y > tiles[1].y) -- one column
    s = shown_slices(f, tiles, 30)
    for i = 1, 3 do assert.is_true(s[i] >= (i - 1) * 10 and s[i] < i * 10, table.concat(s, ' ')) end

    -- a list of indices, negative from the end, in rows of `columns`
    plot.overlay(P('list.png'), img, { slices = { 4, -1, 0 }, columns = 2, window = { 0, 29 } })
    f = load(P('list.png'))
    tiles = tiles_of(f)
    assert.are.same({ 4, 29, 0 }, shown_slices(f, tiles, 30))
    assert.is_true(tiles[1].y == tiles[2].y and tiles[3].y > tiles[1].y)

    -- each tile has its index written above it, and different indices differ
    local function label_bits(t)
      local bits = {}
      for y = t.y - 11, t.y - 1 do
        for x = t.x, t.x + t.w - 1 do bits[#bits + 1] = is_color(f, x, y, LABEL) and '#' or '.' end
      end
      return table.concat(bits)
    end
    local l1, l2, l3 = label_bits(tiles[1]), label_bits(tiles[2]), label_bits(tiles[3])
    assert.is_truthy(l1:find('#', 1, true))
    assert.is_true(l1 ~= l2 and l2 ~= l3 and l1 ~= l3)
  end)

  it('writes a legend of the outline names, and a title', function()
    local m = lumen.zeros(20, 16):to('u8')
    m:narrow(0, 4, 5):narrow(1, 4, 5):fill_(1)
    plot.overlay(P('olegend.png'), lumen.zeros(20, 16), { title = 'case 1',
      outlines = { { mask = m, color = RED, name = 'prediction' }, { mask = m, color = GREEN, name = 'truth' } } })
    local f = load(P('olegend.png'))
    local t = tiles_of(f, { RED, GREEN })[1]
    local _, title_px = pixels_of(f, LABEL, 0, 0, f.w - 1, t.y - 1)
    assert.is_true(title_px > 20)
    for _, c in ipairs { RED, GREEN } do
      local sx, sy
      for y = t.y + t.h, f.h - 1 do
        for x = 0, f.w - 1 do
          if not sx and is_color(f, x, y, c) then sx, sy = x, y end
        end
      end
      assert(sx, 'no legend swatch below the tiles')
      local _, n = pixels_of(f, LABEL, sx + 10, sy - 2, math.min(sx + 60, f.w - 1), math.min(sy + 9, f.h - 1))
      assert.is_true(n > 10)
    end
  end)

  it('rejects malformed input, naming the option', function()
    local img = lumen.zeros(5, 4, 3)
    local function err(path, im, opts)
      local ok, msg = pcall(function() plot.overlay(path, im, opts) end)
      assert.is_false(ok)
      assert.is_truthy(msg:find('plot_spec.lua', 1, true), 'error not at the caller: ' .. msg)
      return msg
    end
    assert.is_truthy(err(P('e.png'), img, { outlines = { { mask = lumen.zeros(4, 4, 3):to('u8') } } })
      :find('lumen.plot.overlay: outline 1: mask is 4x4x3, image is 5x4x3', 1, true))
    assert.is_truthy(err(P('e.png'), img, { outlines = { { mask = lumen.zeros(5, 4, 3) } } })
      :find('outline 1: mask dtype is f32, expected an integer or bool tensor', 1, true))
    assert.is_truthy(err(P('e.png'), img, { outlines = { { color = RED } } }):find('outline 1: mask is missing', 1, true))
    assert.is_truthy(err(P('e.png'), img, { outlines = { { mask = 'm' } } }):find('outline 1: mask must be a tensor or a lumen.image', 1, true))
    assert.is_truthy(err(P('e.png'), img, { outlines = { { mask = img:to('u8'), colour = RED } } }):find("outline 1: unknown field 'colour'", 1, true))
    assert.is_truthy(err(P('e.png'), img, { outlines = { { mask = img:to('u8'), color = { 1, 2 } } } }):find('outline 1: color must be {r, g, b}', 1, true))
    assert.is_truthy(err(P('e.png'), img, { outlines = img }):find('outlines must be a list', 1, true))
    assert.is_truthy(err(P('e.png'), lumen.zeros(5), {}):find('image is 1-D (5), expected 2-D or 3-D', 1, true))
    assert.is_truthy(err(P('e.png'), lumen.zeros(2, 2, 2, 2), {}):find('image is 4-D', 1, true))
    assert.is_truthy(err(P('e.png'), lumen.zeros(0, 3), {}):find('image is empty', 1, true))
    assert.is_truthy(err(P('e.png'), {}, {}):find('image must be a tensor or a lumen.image', 1, true))
    assert.is_truthy(err(P('e.png'), img, { axis = 3 }):find('axis must be 0, 1 or 2', 1, true))
    assert.is_truthy(err(P('e.png'), img, { slices = { 3 } }):find('slices[1] is 3, expected an index in [-3, 2] along axis 2', 1, true))
    assert.is_truthy(err(P('e.png'), img, { slices = {} }):find('slices is an empty list', 1, true))
    assert.is_truthy(err(P('e.png'), img, { slices = 0 }):find('slices must be an integer in [1, 1024]', 1, true))
    assert.is_truthy(err(P('e.png'), img, { window = { 2, 1 } }):find('window must be {lo, hi}', 1, true))
    assert.is_truthy(err(P('e.png'), img, { zoom = 0 }):find('zoom must be an integer in [1, 16], got 0', 1, true))
    assert.is_truthy(err(P('e.png'), img, { columns = 1.5 }):find('columns must be an integer', 1, true))
    assert.is_truthy(err(P('e.png'), img, { flip = 'yes' }):find('flip must be a boolean', 1, true))
    assert.is_truthy(err(P('e.png'), img, { slice = 2 }):find("unknown option 'slice'", 1, true))
    assert.is_truthy(err('e', img, {}):find("path 'e' must end in .png", 1, true))
  end)

  -- (its time is in bench/, not here)
  it('makes a 6-slice montage of a 181 x 217 x 181 volume', function()
    local vol = lumen.arange(181):reshape(181, 1, 1):to('f32'):add(lumen.arange(217):reshape(1, 217, 1):to('f32'))
      :add(lumen.arange(181):reshape(1, 1, 181):to('f32')):contiguous()
    local pred = lumen.zeros(181, 217, 181):to('u8')
    pred:narrow(0, 60, 50):narrow(1, 80, 40):narrow(2, 70, 30):fill_(1)
    local truth = lumen.zeros(181, 217, 181):to('i32')
    truth:narrow(0, 70, 50):narrow(1, 60, 40):narrow(2, 80, 30):fill_(1)
    plot.overlay(P('big.png'), vol, { outlines = { { mask = pred, name = 'prediction' }, { mask = truth, name = 'truth' } },
      slices = 6, columns = 3, zoom = 2, title = 'montage' })
    local f = load(P('big.png'))
    assert.are.equal(6, #tiles_of(f, { { 255, 64, 64 }, { 64, 255, 64 } }))
  end)
end)
