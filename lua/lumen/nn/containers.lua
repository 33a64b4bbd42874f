-- containers.lua: Sequential, ModuleList, ModuleDict. Children of lists are
-- named "0", "1", ... as in torch, and positions are 0-based as everywhere
-- in lumen: seq:get(0) is the first module.
return function(nn, lumen)
  local function append(self, m)
    local n = #self._nn_names.children
    self:add(tostring(n), m)
    return self
  end
  local function get(self, i)
    local n = #self._nn_names.children
    if type(i) ~= 'number' or i ~= math.floor(i) or i < -n or i >= n then
      error(string.format('lumen.nn.%s: position %s is out of range for %d modules', self.__name, tostring(i), n), 2)
    end
    if i < 0 then i = i + n end
    return rawget(self, self._nn_names.children[i + 1])
  end
  local function len(self) return #self._nn_names.children end

  -- Sequential(m1, m2, ...) or Sequential{m1, m2, ...}
  local Sequential = nn.Module:extend('Sequential')
  nn.Sequential = Sequential
  function Sequential:__init(...)
    local mods = { ... }
    if #mods == 1 and not nn.is_module(mods[1]) and type(mods[1]) == 'table' then mods = mods[1] end
    for _, m in ipairs(mods) do append(self, m) end
  end
  Sequential.append, Sequential.get, Sequential.len = append, get, len
  function Sequential:forward(x)
    for _, m in ipairs(self:children()) do x = m(x) end
    return x
  end

  local function module_table(mods, who)
    if mods ~= nil and (type(mods) ~= 'table' or nn.is_module(mods)) then
      error(string.format('lumen.nn.%s: expected a table of modules, got %s', who, nn.is_module(mods) and 'a module' or type(mods)), 4)
    end
    return mods or {}
  end

  local ModuleList = nn.Module:extend('ModuleList')
  nn.ModuleList = ModuleList
  function ModuleList:__init(mods)
    for _, m in ipairs(module_table(mods, 'ModuleList')) do append(self, m) end
  end
  ModuleList.append, ModuleList.get, ModuleList.len = append, get, len
  function ModuleList:forward() error('lumen.nn.ModuleList: a list has no forward; call its modules', 2) end

  -- ModuleDict{name = module}: children in sorted name order.
  local ModuleDict = nn.Module:extend('ModuleDict')
  nn.ModuleDict = ModuleDict
  function ModuleDict:__init(mods)
    local names = {}
    mods = module_table(mods, 'ModuleDict')
    for k in pairs(mods) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do self:add(k, mods[k]) end
  end
  function ModuleDict:forward() error('lumen.nn.ModuleDict: a dict has no forward; call its modules', 2) end
end
