-- luacheck of the server-side scripts (popoto/lua/*.lua): `make lint-lua`.
-- They run in Redis 6.2: Lua 5.1, no globals of their own.
std = "lua51"
max_line_length = 100

read_globals = {
  -- what Redis gives a script
  "redis", "KEYS", "ARGV", "cmsgpack", "cjson", "bit", "struct", "unpack",
  -- popoto.protocol.lua_prelude(): the shared constants, a `local` each, prepended to
  -- every script by popoto.engine.scripts (tests/test_lua_scripts.py keeps this list
  -- equal to the prelude's names)
  -- begin prelude
  "CLAIM_BUSY", "CLAIM_HELD", "CLAIM_OK", "CLAIM_RELEASED_MARK",
  "DECAY_DAY_S", "DECAY_FLAG_BOUNDED", "DECAY_FLAG_CYCLES", "DECAY_FLAG_PRESSURE",
  "DECAY_MAX_AMPLITUDE", "DECAY_MIN_AMPLITUDE", "DECAY_MIN_ELAPSED_DAYS",
  "ERR_EXISTS", "ERR_LEASE", "ERR_MISSING", "ERR_NOTNUM", "ERR_RANGE", "ERR_UNIQUE",
  "FLAG_EXISTING", "FLAG_EXTERNAL", "FLAG_NEW",
  "IDX_PREFIX",
  "KIND_CLAIM", "KIND_COMPANION_FIELD", "KIND_GEO", "KIND_KEY", "KIND_LINKED_KEY",
  "KIND_SET", "KIND_ZSET",
  "OP_AND", "OP_AND_SMALL", "OP_GEO", "OP_KEYS", "OP_LEX", "OP_NOT", "OP_OR",
  "OP_PART_KEY", "OP_PART_RANGE", "OP_PATTERN", "OP_RANGE",
  "TTL_AT", "TTL_SECONDS",
  -- end prelude
}

-- Includes: a script whose first line is `--! include: run_commands ...` is run after
-- the fragments it names (popoto/lua/<fragment>.lua), each defining the local function
-- of its name. So the script reads those names, and a fragment defines a function it
-- does not call itself.
local dir = "popoto/lua/"
local included = {}
for entry in require("lfs").dir(dir) do
  if entry:match("%.lua$") then
    local file = io.open(dir .. entry)
    local first = file:read("*l") or ""
    file:close()
    local names = first:match("^%-%-! include:(.*)$")
    if names then
      local fragments = {}
      for name in names:gmatch("[%w_]+") do
        fragments[#fragments + 1] = name
        included[name] = true
      end
      files[dir .. entry] = {read_globals = fragments}
    end
  end
end
for name in pairs(included) do
  files[dir .. name .. ".lua"] = {ignore = {"211/" .. name}}
end

-- save_one is a fragment that calls the fragments included before it
files["popoto/lua/save_one.lua"] = {
  read_globals = {"remove_entries", "run_commands"},
  ignore = {"211/save_one"},
}
