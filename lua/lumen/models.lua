-- models.lua: networks that recipes and benchmarks share.
--
--   local models = require 'lumen.models'
--   local net = models.UNet(3, {16, 32, 64}, 1, 4)   -- dim, channels per level, in channels, classes
--
-- UNet: [conv3x3 (no bias) + BatchNorm + ReLU] x 2 per level, max pooling
-- down, transposed 2x2 convolutions up, skip connections by concatenation,
-- a 1x1 convolution head (logits). The parameter names match
-- bench/workloads_torch.py's, so a torch state_dict loads as it is.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local F = nn.F

local models = {}

local function block(dim, cin, cout)
  local Conv = dim == 2 and nn.Conv2d or nn.Conv3d
  local BN = dim == 2 and nn.BatchNorm2d or nn.BatchNorm3d
  return nn.Sequential(Conv(cin, cout, 3, { padding = 1, bias = false }), BN(cout), nn.ReLU(),
    Conv(cout, cout, 3, { padding = 1, bias = false }), BN(cout), nn.ReLU())
end

local UNet = nn.Module:extend('UNet')
function UNet:__init(dim, chans, in_ch, n_classes)
  self.dim = dim
  local ConvT = dim == 2 and nn.ConvTranspose2d or nn.ConvTranspose3d
  local Conv = dim == 2 and nn.Conv2d or nn.Conv3d
  self.enc = nn.ModuleList()
  local prev = in_ch or 1
  for _, c in ipairs(chans) do
    self.enc:append(block(dim, prev, c))
    prev = c
  end
  self.ups, self.dec = nn.ModuleList(), nn.ModuleList()
  for i = #chans - 1, 1, -1 do
    local c = chans[i]
    self.ups:append(ConvT(prev, c, 2, { stride = 2 }))
    self.dec:append(block(dim, 2 * c, c))
    prev = c
  end
  self.head = Conv(chans[1], n_classes or 2, 1)
end
function UNet:forward(x)
  local pool = self.dim == 2 and F.max_pool2d or F.max_pool3d
  local skips = {}
  for i, blk in ipairs(self.enc:children()) do
    if i > 1 then x = pool(x, 2) end
    x = blk(x)
    skips[i] = x
  end
  for i, up in ipairs(self.ups:children()) do
    x = lumen.cat({ skips[#skips - i], up(x) }, 1)
    x = self.dec:get(i - 1)(x)
  end
  return self.head(x)
end
models.UNet = UNet

-- Cross-entropy plus (1 - soft Dice of the foreground class 1 over the
-- whole batch), the usual segmentation loss (nnU-Net's Dice+CE).
function models.ce_plus_soft_dice(logits, target, eps)
  eps = eps or 1e-5
  local ce = F.cross_entropy(logits, target)
  local p = F.softmax(logits, 1):select(1, 1)
  local t = target:eq(1):to(logits:dtype())
  local dice = ((p * t):sum() * 2 + eps) / (p:sum() + t:sum() + eps)
  return ce + (1 - dice)
end

return models
