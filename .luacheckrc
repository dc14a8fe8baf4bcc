-- luacheck's configuration (Debian's lua-check). `luacheck lua spec examples bench` is a
-- ctest test (spec/tests.cmake), so `make test` fails on any warning.
std = "lua54"
max_line_length = 120

exclude_files = {
  "spec/fixtures/mcp/node_modules/**",  -- the npm MCP servers' own files
  "bench/peers_redis/node_modules/**",  -- the Redis benchmark peers' (Bottleneck's scripts)
  "spec/fixtures/cli/syntax_error.lua", -- a chunk that must not load, on purpose
}

files["spec"] = {
  std = "+busted",
  -- Spec bodies hold permits, grants and tasks in <close> variables they never read (closing
  -- is the use; luacheck 1.1 does not count it), fake backends take arguments they ignore
  -- (self), and multiple results are taken whole to check a few of them.
  ignore = { "211", "212", "213" },
  unused_secondaries = false,
  max_line_length = false,
}

-- Scripts the specs run with the `baton` executable, which makes `baton` a global.
files["spec/fixtures"] = { read_globals = { "baton" } }
files["spec/fixtures/cli/greeter.lua"] = { globals = { "loaded_greeter" } }  -- a module's global
files["spec/fixtures/cli/join_bg.lua"] = { read_globals = { "bg" } }  -- set by a REPL line first
