-- lumen.nn: layers, losses and the module system.
--   local nn = require 'lumen.nn'
--   nn.F.conv2d(...)            functional forms (torch.nn.functional names)
--   nn.Conv2d(...)              modules (torch.nn names)
--   nn.init.kaiming_uniform_(t) initializers
local lumen = require 'lumen'

local nn = { F = {} }
lumen.nn = nn
require('lumen.nn.module')(nn, lumen)
require('lumen.nn.initializers')(nn, lumen)

-- One file per layer family; each adds functions to nn.F and classes to nn.
for _, name in ipairs { 'linear', 'containers', 'conv', 'pool', 'resample', 'norm', 'activation', 'dropout', 'loss', 'rnn' } do
  local ok, mod = pcall(require, 'lumen.nn.' .. name)
  if ok then
    mod(nn, lumen)
  elseif not tostring(mod):find("module 'lumen.nn." .. name .. "' not found", 1, true) then
    error(mod, 0)
  end
end

return nn
