-- A short tour of lumen (make demo runs it): build/lumen run examples/tour.lua
lumen.manual_seed(0)
local x = lumen.randn(2, 3)                  -- f32 by default, 0-based dims
print(x)
print(x:t():matmul(x))                        -- 3x3, BLAS, no copy for the transpose
local y = (x * 2 + 1):relu()                  -- broadcasting, Lua operators
print(y:sum(1), y:max())                      -- reductions over a dim, or all
print(x[{ 0, { 1, 3 } }])                     -- row 0, columns 1..2 (a view)
x[{ {}, 0 }] = 0                              -- assignment through a view
local img = lumen.arange(16, 'f32'):view(1, 1, 4, 4)
print(table.concat(img:pad({ 1, 1, 1, 1 }, 'reflect'):size(), 'x')) -- 1x1x6x6
local v, i = lumen.tensor({ 3, 1, 2 }):sort()
print(v, i)                                   -- values and their 0-based positions
local path = os.tmpname()                      -- any name: the format is in the file
lumen.save(path, { x = x, y = y }, { note = 'tour' })
local back, meta = lumen.load(path)
print(back.y:eq(y):all():item(), meta.note)   -- true   tour
os.remove(path)
local m = lumen.memory()                      -- live, peak and cached bytes
print(string.format('live %d B, peak %d B, cached %d B', m.live, m.peak, m.cached))
