-- The module system: registration, torch-compatible state_dict names,
-- load_state_dict checks, train/eval, dtype conversion, printing, the
-- containers, Linear against PyTorch, and the initializers' distributions.
local lumen = require 'lumen'
local nn = require 'lumen.nn'
local oracle = require 'helpers.oracle'
local check = require 'helpers.check'

local function err(f, ...) return select(2, pcall(f, ...)) end

local Net = nn.Module:extend('Net')
function Net:__init(hidden)
  self.body = nn.Sequential(nn.Linear(4, hidden), nn.Linear(hidden, 3))
  self.head = nn.Linear(3, 2, { bias = false })
  self:buffer('steps', lumen.zeros(1))
  self.scale = 2 -- a plain field
end
function Net:forward(x) return self.head(self.body(x)) * self.scale end

describe('nn modules', function()
  lumen.manual_seed(3)

  it('register parameters, buffers and children in order, with torch names', function()
    local n = Net(5)
    local names = {}
    for _, p in ipairs(n:named_parameters()) do names[#names + 1] = p[1] end
    assert.are.same({ 'body.0.weight', 'body.0.bias', 'body.1.weight', 'body.1.bias', 'head.weight' }, names)
    assert.are.equal(5 * 4 + 5 + 3 * 5 + 3 + 2 * 3, n:num_parameters())
    local sd, keys = n:state_dict()
    assert.are.same({ 'body.0.weight', 'body.0.bias', 'body.1.weight', 'body.1.bias', 'head.weight', 'steps' }, keys)
    assert.is_false(sd['head.weight'].requires_grad)
    for _, p in ipairs(n:parameters()) do assert.is_true(p.requires_grad) end
    assert.are.equal(2, n.body:len())
    assert.are.equal(n.body:get(-1), n.body:get(1))
  end)

  it('round-trips a state dict and refuses wrong ones, naming the key', function()
    local a, b = Net(5), Net(5)
    b:load_state_dict(a:state_dict())
    local x = lumen.randn(2, 4)
    check.assert_close(b(x), a(x))
    local sd = a:state_dict()
    sd['body.0.bias'] = nil
    assert.matches("lumen.nn.load_state_dict: 'body.0.bias' is missing from the state dict", err(b.load_state_dict, b, sd), 1, true)
    b:load_state_dict(sd, false)
    sd = a:state_dict()
    sd.extra = lumen.ones(1)
    assert.matches('lumen.nn.load_state_dict: unexpected key extra', err(b.load_state_dict, b, sd), 1, true)
    sd = Net(6):state_dict()
    assert.matches("lumen.nn.load_state_dict: 'body.0.weight' has shape 6x4 in the state dict, expected 5x4",
      err(b.load_state_dict, b, sd), 1, true)
  end)

  it('switch train and eval through the tree, convert dtypes, zero gradients', function()
    local n = Net(5)
    n:eval()
    assert.is_false(n.training)
    assert.is_false(n.body:get(0).training)
    n:train()
    assert.is_true(n.body:get(1).training)
    local y = n(lumen.randn(2, 4))
    y:backward(lumen.ones(2, 2))
    assert.is_not_nil(n.head.weight.grad)
    n:zero_grad()
    assert.is_nil(n.head.weight.grad)
    n:to('f64')
    assert.are.equal('f64', n.body:get(0).weight:dtype())
    assert.are.equal('f64', n.steps:dtype())
    assert.is_true(n.body:get(0).weight.requires_grad)
    assert.are.equal('f64', n(lumen.randn(2, 4, 'f64')):dtype())
    if not lumen.cuda.is_available() then
      assert.matches('lumen.nn.to: CUDA is not available: ', err(n.to, n, 'cuda'), 1, true)
    end
    assert.matches("lumen: unknown dtype 'f16'", err(n.to, n, 'f16'), 1, true)
  end)

  it('report a bad constructor argument at the line that built the module', function()
    local _, e = pcall(function() local m = nn.Linear(2, 3, 5); return m end)
    assert.matches('nn_module_spec%.lua:%d+: lumen%.nn%.Linear: options must be a table', e)
    _, e = pcall(function() local m = nn.BatchNorm2d('x'); return m end)
    assert.matches('nn_module_spec%.lua:%d+: lumen%.nn%.BatchNorm2d: num_features must be an integer', e)
  end)

  it('print as a tree with parameter counts', function()
    local s = tostring(Net(5))
    assert.matches('^Net  %[49 params%]\n  %(body%): Sequential  %[43 params%]\n    %(0%): Linear%(4, 5%)  %[25 params%]', s)
    assert.matches('(head): Linear(3, 2, bias=false)  [6 params]', s, 1, true)
  end)

  it('ModuleList and ModuleDict hold modules under torch-style names', function()
    local l = nn.ModuleList { nn.Linear(2, 2), nn.Linear(2, 3) }
    l:append(nn.Identity())
    assert.are.equal(3, l:len())
    local _, keys = l:state_dict()
    assert.are.same({ '0.weight', '0.bias', '1.weight', '1.bias' }, keys)
    local d = nn.ModuleDict { b = nn.Linear(1, 1), a = nn.Linear(1, 1, { bias = false }) }
    _, keys = d:state_dict()
    assert.are.same({ 'a.weight', 'b.weight', 'b.bias' }, keys)
    assert.matches('lumen.nn.ModuleList: position 3 is out of range for 3 modules', err(l.get, l, 3), 1, true)
  end)

  it('Linear and flatten match PyTorch, gradients included', function()
    local x, w, b, g = lumen.randn(3, 2, 4), lumen.randn(5, 4), lumen.randn(5), lumen.randn(3, 2, 5)
    local x2, g2 = lumen.randn(6, 4), lumen.randn(6, 5)
    local res = oracle.run {
      { 'grad_of(lambda x, w, b: F.linear(x, w, b), [x, w, b], g)', x = x, w = w, b = b, g = g },
      { 'grad_of(lambda x, w, b: F.linear(x, w, b), [x, w, b], g)', x = x2, w = w, b = b, g = g2 },
      { 'torch.flatten(x, 1)', x = x },
    }
    for i, c in ipairs { { x, g }, { x2, g2 } } do
      local m = nn.Linear(4, 5)
      lumen.no_grad(function() m.weight:copy_(w); m.bias:copy_(b) end)
      local xi = c[1]:clone():requires_grad_()
      local y = m(xi)
      y:backward(c[2])
      check.assert_close(y:detach(), res[i][1], { rtol = 1e-5, atol = 1e-5 }, 'output')
      check.assert_close(xi.grad, res[i][2], { rtol = 1e-5, atol = 1e-5 }, 'grad x')
      check.assert_close(m.weight.grad, res[i][3], { rtol = 1e-5, atol = 1e-5 }, 'grad w')
      check.assert_close(m.bias.grad, res[i][4], { rtol = 1e-5, atol = 1e-5 }, 'grad b')
    end
    check.assert_close(nn.Flatten()(x), res[3][1])
    assert.matches('lumen.linear: input 3x2x3 has 3 features, expected 4', err(nn.F.linear, lumen.randn(3, 2, 3), w), 1, true)
  end)

  it('initializers draw from the documented distributions', function()
    local t = lumen.empty(400, 300)
    local function range(x) return x:min():item(), x:max():item(), x:mean():item(), x:std():item() end
    -- kaiming uniform, fan_in 300, gain sqrt(2): bound sqrt(6/300)
    nn.init.kaiming_uniform_(t, { nonlinearity = 'relu' })
    local lo, hi, mean = range(t)
    local bound = math.sqrt(6 / 300)
    assert.is_true(lo >= -bound and hi <= bound and hi > 0.99 * bound and math.abs(mean) < 0.01 * bound * 10)
    -- kaiming normal, fan_out 400: std sqrt(2/400)
    nn.init.kaiming_normal_(t, { mode = 'fan_out', nonlinearity = 'relu' })
    local _, _, _, std = range(t)
    assert.is_true(math.abs(std - math.sqrt(2 / 400)) < 0.02 * math.sqrt(2 / 400))
    -- xavier: uniform bound gain*sqrt(6/(fan_in+fan_out)), normal std gain*sqrt(2/(...))
    nn.init.xavier_uniform_(t, { gain = 2 })
    lo, hi = range(t)
    bound = 2 * math.sqrt(6 / 700)
    assert.is_true(lo >= -bound and hi <= bound and hi > 0.99 * bound)
    nn.init.xavier_normal_(t)
    _, _, _, std = range(t)
    assert.is_true(math.abs(std - math.sqrt(2 / 700)) < 0.02 * math.sqrt(2 / 700))
    nn.init.constant_(t, 0.25)
    assert.are.equal(0.25, t:max():item())
    assert.are.equal(0.25, t:min():item())
    assert.are.equal(0, nn.init.zeros_(t):abs():max():item())
    assert.are.equal(1, nn.init.ones_(t):min():item())
    assert.are.equal(5 / 3, nn.init.calculate_gain('tanh'))
    assert.matches("lumen.nn.init: unknown nonlinearity 'swish'", err(nn.init.calculate_gain, 'swish'), 1, true)
    assert.matches('lumen.nn.init: fan in and fan out need a tensor of 2 or more dimensions', err(nn.init.xavier_uniform_, lumen.empty(3)), 1, true)
  end)
end)
