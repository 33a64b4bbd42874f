-- images.lua: the lumen side of `sh bench/run.sh images` (the peer is
-- bench/images_peer.py: nibabel and scipy.ndimage, torch's DataLoader).
-- Prints "<case> <median seconds> <timed iterations>" per case:
--   read_ch2      read Colin27's ch2.nii.gz (gzip, 181x217x181 u8) to an array
--   aug3d_128     one 128^3 image and its labels through random affine +
--                 elastic + Gaussian noise (linear for the image, nearest
--                 for the labels), in the calling thread
--   loader_aug3d  the same pipeline, batches of 2 patches 128^3 from 4
--                 cases, 2 workers producing ahead; seconds per batch
local lumen = require 'lumen'
local image = require 'lumen.image'
local augment = require 'lumen.augment'
local loader = require 'lumen.loader'
local data = require 'lumen.data'

local THREADS = tonumber(os.getenv('BENCH_THREADS') or 2)
lumen.set_num_threads(THREADS)

local function median(t)
  table.sort(t)
  local n = #t
  return n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
end

local function measure(fn, iters)
  fn()
  collectgarbage('collect')
  local times = {}
  for i = 1, iters do
    local t0 = lumen.clock()
    fn()
    times[i] = lumen.clock() - t0
  end
  return median(times), iters
end

local function report(name, fn, iters)
  local ok, t, n = pcall(measure, fn, iters)
  if ok then print(string.format('%s %.6f %d', name, t, n))
  else print(name .. ' NA ' .. tostring(t):gsub('%s+', ' ')) end
end

local want = {}
for _, a in ipairs(arg) do want[a] = true end
local function on(name) return next(want) == nil or want[name] end

if on('read_ch2') then
  local ok, cases = pcall(data.cases, 'colin27')
  if ok then
    report('read_ch2', function() return image.read(cases[1].image) end, 7)
  else
    print('read_ch2 NA ' .. tostring(cases):gsub('%s+', ' '))
  end
end

local N = 128
local transforms = {
  augment.affine{ rotate = 15, scale = { 0.85, 1.25 }, p = 1 },
  augment.elastic{ magnitude = 3, spacing = 16, p = 1 },
  augment.noise{ std = { 0.1, 0.1 }, p = 1 },
}
lumen.manual_seed(1)
local function volume() return lumen.randn(1, N, N, N) end
local function labels() return lumen.randint(0, 4, { N, N, N }):to('u8') end

if on('aug3d_128') then
  local img, lab = volume(), labels()
  local seed = 0
  report('aug3d_128', function()
    seed = seed + 1
    return augment.apply(transforms, img, lab, { seed = seed })
  end, 5)
end

if on('loader_aug3d') then
  local cases = {}
  for i = 1, 4 do cases[i] = { image = volume(), label = labels() } end
  local dl = loader.new{ cases = cases, patch = { N, N, N }, batch = 2, transforms = transforms,
    workers = 2, threads = 1, seed = 1 }
  report('loader_aug3d', function() return dl:next() end, 10)
  dl:close()
end
