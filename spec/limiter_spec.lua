-- baton.limiter: provider/model keys and chains, limits by key and by tier (the most specific
-- key wins), the fallback order (one spec per `via` step), the queue with its timeout and
-- cancellation, max_agents as a real bound, failures and configuration errors,
-- and configurations loaded from JSON (spec/fixtures/limiter/*.json).
local baton = require "baton"
local H = require "spec.helper"

local FIXTURES = (os.getenv("BATON_SRC") or ".") .. "/spec/fixtures/limiter/"

-- A crafted configuration where each step of the search has exactly one way to succeed:
-- opus (premium, tools, limit 1) falls back along the chain to gpt-4o, then to sonnet by
-- capability (one tier cheaper, tools), then to the CLI provider; haiku is two tiers
-- cheaper and sonnet-lite has no tools, so neither ever matches opus.
local function crafted(overrides)
  local cfg = {
    max_agents = 10,
    models = { ["anthropic/opus"] = 1, ["openai/gpt-4o"] = 1, ["anthropic/sonnet"] = 1,
               ["claude-cli/claude-code"] = 1 },
    providers = {
      { name = "anthropic", models = { "opus", "sonnet", "haiku", "sonnet-lite" } },
      { name = "openai", models = { "gpt-4o" } },
      { name = "claude-cli", models = { "claude-code" }, cli = true },
    },
    profiles = {
      opus = { cost_tier = "premium", tools = true },
      sonnet = { cost_tier = "standard", tools = true },
      ["sonnet-lite"] = { cost_tier = "standard", tools = false },
      haiku = { cost_tier = "cheap", tools = true },
      ["gpt-4o"] = { cost_tier = "premium", tools = true },
      ["claude-code"] = { cost_tier = "premium", tools = true },
    },
  }
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  return baton.limiter(cfg)
end

local function in_use(lim)
  return lim:snapshot().global.in_use
end

local function release_all(grants)
  for _, g in ipairs(grants) do g.permit:release() end
end

describe("baton.parse_key", function()
  it("splits provider/model", function()
    assert.same({ "zai-coding", "glm-5" }, { baton.parse_key("zai-coding/glm-5") })
  end)

  it("rejects a key without a slash, provider or model", function()
    assert.is_nil(baton.parse_key("no-slash"))
    assert.is_nil(baton.parse_key("/no-provider"))
    assert.is_nil(baton.parse_key("no-model/"))
    assert.is_nil(baton.parse_key("  / "))
  end)

  it("trims both parts and splits at the first slash", function()
    assert.same({ "zai", "glm-5" }, { baton.parse_key("  zai / glm-5\t") })
    assert.same({ "together", "meta/llama-3" }, { baton.parse_key("together/meta/llama-3") })
  end)
end)

describe("baton.parse_chain", function()
  it("parses a comma-separated chain in order", function()
    assert.same({ "zai-coding/glm-5", "claude/opus", "openai/gpt-4o" },
                baton.parse_chain("zai-coding/glm-5, claude/opus, openai/gpt-4o"))
  end)

  it("skips bad entries", function()
    assert.same({ "a/b", "c/d" }, baton.parse_chain("a/b, no-slash,, /x, y/ , c/d"))
    assert.same({}, baton.parse_chain(""))
  end)
end)

describe("baton.limiter limits", function()
  it("defaults by cost tier: premium 3, standard 5, cheap 8", function()
    local lim = baton.limiter {
      profiles = { ["glm-5"] = { cost_tier = "premium" }, ["glm-4.7"] = { cost_tier = "standard" },
                   ["glm-4.7-flash"] = { cost_tier = "cheap" } },
    }
    assert.equal(3, lim:limit("zai/glm-5"))
    assert.equal(5, lim:limit("zai/glm-4.7"))
    assert.equal(8, lim:limit("zai/glm-4.7-flash"))
  end)

  it("an unknown model gets the default profile (standard, no tools)", function()
    local lim = baton.limiter {}
    assert.equal(5, lim:limit("someone/mystery"))
  end)

  it("default_concurrency overrides the tier defaults", function()
    local lim = baton.limiter {
      default_concurrency = { premium = 1, cheap = 20 },
      profiles = function(model)
        if model == "big" then return { cost_tier = "premium" } end
        if model == "small" then return { cost_tier = "cheap" } end
      end,
    }
    assert.equal(1, lim:limit("p/big"))
    assert.equal(5, lim:limit("p/medium"))
    assert.equal(20, lim:limit("p/small"))
  end)

  it("a provider/model limit wins over a bare model name limit", H.async(function()
    local lim = baton.limiter { models = { ["glm-5"] = 1, ["zai-coding/glm-5"] = 4 } }
    assert.equal(4, lim:limit("zai-coding/glm-5"))
    assert.equal(1, lim:limit("other/glm-5"))
    local grants = {}
    for _ = 1, 4 do
      local g = lim:acquire("zai-coding/glm-5")
      assert.equal("primary", g.via)
      grants[#grants + 1] = g
    end
    local msg, _, detail = H.assert_failure("baton.limiter:acquire", "queue_wait",
                                            lim:acquire("zai-coding/glm-5"))
    assert.equal("baton.limiter:acquire: 'zai-coding/glm-5' is at its limit (4 of 4 in use)", msg)
    assert.same({ key = "zai-coding/glm-5", capacity = 4, in_use = 4, waiting = 0, reason = "models" }, detail)
    release_all(grants)
  end))

  it("keys are normalised: spaces around the parts do not make a new model", H.async(function()
    local lim = baton.limiter { models = { [" p / m "] = 1 } }
    local g = lim:acquire("p/m")
    assert.is_nil(lim:acquire("  p/m "))
    g:release()
    assert.equal(1, lim:snapshot().keys["p/m"].capacity)
  end))

  it("a profiles function is called once per key, with the model and the provider", function()
    local calls = {}
    local lim = baton.limiter {
      profiles = function(model, provider)
        calls[#calls + 1] = provider .. "|" .. model
        return { cost_tier = "cheap" }
      end,
    }
    assert.equal(8, lim:limit("p/m"))
    assert.equal(8, lim:limit("p/m"))
    assert.same({ "p|m" }, calls)
  end)
end)

describe("baton.limiter:acquire fallback order", function()
  it("grants in each via step: primary, chain, capability, cli, then queue", H.async(function()
    local lim = crafted()
    local opts = { chain = { "openai/gpt-4o" } }
    local got, grants = {}, {}
    for _ = 1, 4 do
      local g = assert(lim:acquire("anthropic/opus", opts))
      got[#got + 1] = g.via .. " " .. g.key
      grants[#grants + 1] = g
    end
    assert.same({ "primary anthropic/opus", "chain openai/gpt-4o",
                  "capability anthropic/sonnet", "cli claude-cli/claude-code" }, got)
    H.assert_failure("baton.limiter:acquire", "queue_wait", lim:acquire("anthropic/opus", opts))
    local waiter = baton.spawn(function()
      local g <close> = lim:acquire("anthropic/opus", { chain = opts.chain, wait = true })
      return g.via, g.key
    end)
    baton.yield()
    assert.equal(1, lim:snapshot().keys["anthropic/opus"].waiting)
    grants[1].permit:release()
    assert.same({ true, "queue", "anthropic/opus" }, { waiter:join() })
    release_all(grants)
    assert.equal(0, in_use(lim))
  end))

  it("takes a chain given as a string, and skips the primary in it", H.async(function()
    local lim = crafted()
    local a = lim:acquire("anthropic/opus")
    local g = lim:acquire("anthropic/opus", { chain = "anthropic/opus, bad, openai/gpt-4o" })
    assert.equal("chain", g.via)
    assert.equal("openai/gpt-4o", g.key)
    a:release()
    g:release()
  end))

  it("capability: a tool-using primary never falls back to a model without tools",
    H.async(function()
      local lim = crafted({ models = { ["anthropic/opus"] = 1, ["anthropic/sonnet"] = 0,
                                       ["openai/gpt-4o"] = 0, ["claude-cli/claude-code"] = 0 } })
      local a = lim:acquire("anthropic/opus")
      -- sonnet-lite (standard, no tools) and haiku (two tiers cheaper) are free but unfit
      assert.is_nil(lim:acquire("anthropic/opus"))
      a:release()
      assert.equal(0, in_use(lim))
    end))

  it("capability: a primary without tools accepts one tier cheaper, not two", H.async(function()
    local lim = baton.limiter {
      models = { ["p/std"] = 1 },
      providers = { { name = "p", models = { "std", "pricey", "cheap", "lite" } } },
      profiles = { std = { cost_tier = "standard" }, pricey = { cost_tier = "premium" },
                   cheap = { cost_tier = "cheap" }, lite = { cost_tier = "cheap" } },
      default_concurrency = { cheap = 1 },
    }
    local a = lim:acquire("p/std")
    local b = lim:acquire("p/std")
    local c = lim:acquire("p/std")
    assert.same({ "capability", "p/cheap" }, { b.via, b.key })   -- premium is pricier: skipped
    assert.same({ "capability", "p/lite" }, { c.via, c.key })
    assert.is_nil(lim:acquire("p/std"))
    a:release(); b:release(); c:release()

    local prem = baton.limiter {
      models = { ["p/top"] = 0 },
      providers = { { name = "p", models = { "top", "cheap" } } },
      profiles = { top = { cost_tier = "premium" }, cheap = { cost_tier = "cheap" } },
    }
    assert.is_nil(prem:acquire("p/top"))   -- cheap is two tiers below premium
  end))

  it("cli: reached only after capability; a tool-using primary needs a tool-using CLI",
    H.async(function()
      local lim = baton.limiter {
        models = { ["api/opus"] = 1, ["api/sonnet"] = 1 },
        providers = {
          { name = "plain-cli", cli = true },                       -- implicit model: its name
          { name = "api", models = { "opus", "sonnet" } },
          { name = "agent-cli", models = { "agent", "ignored" }, cli = true },
        },
        profiles = { opus = { cost_tier = "premium", tools = true },
                     sonnet = { cost_tier = "premium", tools = true },
                     agent = { cost_tier = "cheap", tools = true } },
      }
      local a = lim:acquire("api/opus")
      local b = lim:acquire("api/opus")
      assert.same({ "capability", "api/sonnet" }, { b.via, b.key })  -- before any CLI
      local c = lim:acquire("api/opus")
      assert.same({ "cli", "agent-cli/agent" }, { c.via, c.key })    -- plain-cli has no tools
      local snap = lim:snapshot().keys
      assert.is_nil(snap["agent-cli/ignored"])  -- a CLI provider stands for its first model
      assert.equal(0, snap["plain-cli/plain-cli"].in_use)
      a:release(); b:release(); c:release()
    end))

  it("a primary without tools falls back to a CLI provider without tools", H.async(function()
    local lim = baton.limiter {
      models = { ["api/m"] = 1 },
      providers = { { name = "api", models = { "m" } }, { name = "tool-less", cli = true } },
    }
    local a = lim:acquire("api/m")
    local b = lim:acquire("api/m")
    assert.same({ "cli", "tool-less/tool-less" }, { b.via, b.key })
    a:release(); b:release()
  end))
end)

describe("baton.limiter:acquire queue", function()
  it("a queued waiter is granted when a permit comes back, FIFO", H.async(function()
    local lim = baton.limiter { models = { ["p/m"] = 1 } }
    local held = lim:acquire("p/m")
    local order = {}
    local g = baton.group()
    for i = 1, 3 do
      g:spawn(function()
        local grant <close> = lim:acquire("p/m", { wait = true })
        order[#order + 1] = i .. grant.via
        baton.yield()
      end)
    end
    baton.yield()
    assert.equal(3, lim:snapshot().keys["p/m"].waiting)
    held:release()
    g:join_all()
    assert.same({ "1queue", "2queue", "3queue" }, order)
    assert.same({ capacity = 1, in_use = 0, waiting = 0 }, lim:snapshot().keys["p/m"])
  end))

  it("max_agents really bounds concurrent holders", H.async(function()
    local lim = baton.limiter {
      max_agents = 4,
      models = { ["a/x"] = 3, ["b/y"] = 3, ["c/z"] = 3 },
      providers = { { name = "a", models = { "x" } }, { name = "b", models = { "y" } },
                    { name = "c", models = { "z" } } },
    }
    local now, peak, vias = 0, 0, {}
    local g = baton.group()
    for i = 1, 20 do
      g:spawn(function()
        local grant <close> = lim:acquire("a/x", { chain = { "b/y" }, wait = true })
        vias[grant.via] = (vias[grant.via] or 0) + 1
        now = now + 1
        if now > peak then peak = now end
        assert(lim:snapshot().global.in_use <= 4)
        baton.sleep(i % 3 + 1)
        now = now - 1
      end)
    end
    for _, t in ipairs(g:join_all()) do assert.is_true(t.ok, tostring(t.error)) end
    assert.equal(4, peak)
    assert.is_true(vias.queue > 0)
    assert.same({ capacity = 4, in_use = 0, waiting = 0 }, lim:snapshot().global)
  end))

  it("a permit holds its global slot until released, on every path",
    H.async(function()
      local lim = baton.limiter { max_agents = 1, models = { ["p/a"] = 5, ["p/b"] = 5 } }
      local a = lim:acquire("p/a")
      assert.same({ capacity = 1, in_use = 1, waiting = 0 }, lim:snapshot().global)
      local msg, _, detail = H.assert_failure("baton.limiter:acquire", "queue_wait",
                                              lim:acquire("p/b"))
      assert.equal("baton.limiter:acquire: no slot for 'p/b': max_agents is reached (1 in use)",
                   msg)
      assert.same({ key = "p/b", capacity = 5, in_use = 0, waiting = 0, reason = "max_agents" }, detail)
      -- the queue path waits for the global slot too, though p/b itself is free
      local t = baton.spawn(function()
        local g <close> = lim:acquire("p/b", { wait = true })
        return g.via, lim:snapshot().global.in_use
      end)
      baton.sleep(5)
      assert.equal("waiting", t:status())
      assert.equal(1, lim:snapshot().global.waiting)
      a:release()
      assert.same({ true, "queue", 1 }, { t:join() })
      assert.equal(0, in_use(lim))
    end))

  it("a waiter blocked on a full model does not hold up another model", H.async(function()
    local lim = baton.limiter { max_agents = 2, models = { ["p/a"] = 1, ["p/b"] = 2 } }
    local a = lim:acquire("p/a")
    local b = lim:acquire("p/b")
    local wa = baton.spawn(function() local g <close> = lim:acquire("p/a", { wait = true }) return "a" end)
    local wb = baton.spawn(function() local g <close> = lim:acquire("p/b", { wait = true }) return "b" end)
    baton.yield()
    b:release()   -- frees a global slot and one of p/b: wb fits, wa (p/a full) does not
    assert.same({ true, "b" }, { wb:join() })
    assert.equal("waiting", wa:status())
    a:release()
    assert.same({ true, "a" }, { wa:join() })
  end))

  it("aborting a waiting acquirer leaves no waiter behind", H.async(function()
    local lim = baton.limiter { models = { ["p/m"] = 1 } }
    local held = lim:acquire("p/m")
    local first = baton.spawn(function() return lim:acquire("p/m", { wait = true }) end)
    local second = baton.spawn(function()
      local g <close> = lim:acquire("p/m", { wait = true })
      return "second"
    end)
    baton.yield()
    assert.equal(2, lim:snapshot().global.waiting)
    first:abort()
    first:join()
    assert.equal("cancelled", first:status())
    assert.equal(1, lim:snapshot().keys["p/m"].waiting)
    held:release()
    assert.same({ true, "second" }, { second:join() })
    assert.same({ capacity = 1, in_use = 0, waiting = 0 }, lim:snapshot().keys["p/m"])
  end))

  it("a waiter granted but aborted before it resumes gives the permit back", H.async(function()
    local lim = baton.limiter { models = { ["p/m"] = 1 } }
    local held = lim:acquire("p/m")
    local t = baton.spawn(function() return lim:acquire("p/m", { wait = true }) end)
    baton.yield()
    held:release()   -- grants t (it is queued to run) ...
    t:abort()        -- ... and aborts it before it runs
    t:join()
    assert.equal("cancelled", t:status())
    assert.same({ capacity = 1, in_use = 0, waiting = 0 }, lim:snapshot().keys["p/m"])
  end))

  it("a timeout is the standard timeout failure and leaves the queue clean", H.async(function()
    local lim = baton.limiter { models = { ["p/m"] = 1 } }
    local held = lim:acquire("p/m")
    local elapsed, g, err, kind, detail = H.timed(lim.acquire, lim, "p/m",
                                                  { wait = true, timeout_ms = 30 })
    local msg = H.assert_failure("baton.limiter:acquire", "timeout", g, err, kind, detail)
    assert.equal("baton.limiter:acquire: timed out after 30 ms", msg)
    assert.same({ key = "p/m", timeout_ms = 30 }, detail)
    assert.is_true(elapsed >= 29, "elapsed " .. elapsed)
    assert.equal(0, lim:snapshot().global.waiting)
    held:release()
    assert.equal(0, in_use(lim))
  end))

  it("waiting on a model with limit 0 returns queue_wait at once", H.async(function()
    local lim = baton.limiter { models = { ["p/off"] = 0 } }
    local msg, _, detail = H.assert_failure("baton.limiter:acquire", "queue_wait",
                                            lim:acquire("p/off", { wait = true }))
    assert.equal("baton.limiter:acquire: 'p/off' is disabled (its limit is 0)", msg)
    assert.equal(0, detail.capacity)
  end))

  it("only a queue wait needs a task; the search works anywhere", function()
    local lim = baton.limiter { models = { ["p/m"] = 1 } }
    local g = lim:acquire("p/m")
    assert.equal("primary", g.via)
    H.raises("baton.limiter:acquire: not inside a baton task",
             function() lim:acquire("p/m", { wait = true }) end)
    g:release()
  end)
end)

describe("baton.limiter permits", function()
  it("release is idempotent, and grant:release / <close> release the permit", H.async(function()
    local lim = baton.limiter { models = { ["p/m"] = 1 } }
    local g = lim:acquire("p/m")
    g.permit:release()
    g.permit:release()
    g:release()
    assert.is_false(g.permit:held())
    assert.equal(0, in_use(lim))
    do
      local c <close> = lim:acquire("p/m")
      assert.equal(1, in_use(lim))
    end
    assert.equal(0, in_use(lim))
  end))

  it("a permit held by an aborted task comes back through <close>", H.async(function()
    local lim = baton.limiter { models = { ["p/m"] = 1 } }
    local t = baton.spawn(function()
      local g <close> = lim:acquire("p/m")
      baton.sleep(60000)
    end)
    baton.yield()
    assert.equal(1, in_use(lim))
    t:abort()
    t:join()
    assert.equal(0, in_use(lim))
  end))

  it("a permit collected while held is released with a warning", H.async(function()
    local warnings = {}
    baton.on_warning(function(m) warnings[#warnings + 1] = m end)
    local lim = baton.limiter { models = { ["p/m"] = 1 } }
    do local _ = lim:acquire("p/m") end
    collectgarbage()
    collectgarbage()
    baton.on_warning(nil)
    assert.equal(0, in_use(lim))
    assert.equal(1, #warnings)
    assert.matches("permit", warnings[1])
  end))
end)

describe("baton.limiter configuration", function()
  -- Each raises "baton.limiter: bad argument #1 '<field>' (...)": the field, then the text.
  local bad = {
    { { max_agents = 0 }, "max_agents", "expected integer >= 1, got 0" },
    { { max_agents = 2.5 }, "max_agents", "got 2.5" },
    { { max_agnets = 2 }, "max_agnets", "unknown option" },
    { { max_agnets = 2, models = 5 }, "max_agnets", "unknown option" },  -- typos first
    { { models = { ["p/m"] = -1 } }, 'models["p/m"]', "expected integer >= 0, got -1" },
    { { models = { ["/m"] = 1 } }, 'models["/m"]', "expected 'provider/model' key" },
    { { models = { ["p/m"] = 1, [" p/m"] = 2 } }, 'models["', "the same key twice" },
    { { models = { 3 } }, "models", "expected string keys, got 1" },
    { { providers = { name = "p" } }, "providers", "expected list, got a table with a key 'name'" },
    { { providers = { { name = "a/b" } } }, "providers[1].name", "got 'a/b'" },
    { { providers = { { name = "p", modles = {} } } }, "providers[1].modles", "unknown option" },
    { { providers = { { name = "p", models = { "m", "" } } } }, "providers[1].models[2]",
      "expected model name, got ''" },
    { { providers = { { name = "p", cli = "yes" } } }, "providers[1].cli", "expected boolean, got 'yes'" },
    { { profiles = 3 }, "profiles", "expected table or function, got 3" },
    { { profiles = { m = { cost_tier = "luxury" } } }, 'profiles["m"].cost_tier',
      "expected one of 'premium', 'standard', 'cheap', got 'luxury'" },
    { { profiles = { m = { tools = 1 } } }, 'profiles["m"].tools', "expected boolean, got 1" },
    { { profiles = { m = { tier = "cheap" } } }, 'profiles["m"].tier', "unknown option" },
    { { default_concurrency = { premium = -1 } }, "default_concurrency.premium", "got -1" },
    { { default_concurrency = { luxury = 1 } }, "default_concurrency.luxury", "unknown option" },
  }
  for i, case in ipairs(bad) do
    it("bad config raises naming the key (" .. i .. ": " .. case[2] .. ")", function()
      local ok, err = pcall(baton.limiter, case[1])
      assert.is_false(ok)
      assert.matches("baton.limiter: bad argument #1 '" .. case[2], err, 1, true)
      assert.matches(case[3], err, 1, true)
    end)
  end

  it("a bad profile from a profiles function raises when the key is first used", function()
    local lim = baton.limiter { profiles = function() return { cost_tier = "gold" } end }
    local ok, err = pcall(lim.limit, lim, "p/m")
    assert.is_false(ok)
    assert.matches("baton.limiter:limit: bad argument #0 'profiles(\"m\") result.cost_tier' " ..
                   "(expected one of 'premium', 'standard', 'cheap', got 'gold')", err, 1, true)
  end)

  it("acquire rejects bad arguments naming them", function()
    local lim = baton.limiter {}
    local cases = {
      { { "no-slash" }, "#1 'primary' (expected 'provider/model' key, got 'no-slash')" },
      { { 42 }, "#1 'primary' (expected 'provider/model' key, got 42)" },
      { { "p/m", { wiat = true } }, "#2 'wiat' (unknown option)" },
      { { "p/m", 5 }, "#2 'options' (expected table, got 5)" },
      { { "p/m", { chain = { "ok/k", "bad" } } }, "#2 'chain[2]' (expected 'provider/model' key, got 'bad')" },
      { { "p/m", { chain = 5 } }, "#2 'chain' (expected list of keys" },
      { { "p/m", { wait = "yes" } }, "#2 'wait' (expected boolean, got 'yes')" },
      { { "p/m", { wait = true, timeout_ms = -1 } }, "#2 'timeout_ms' (expected milliseconds >= 0, got -1)" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(lim.acquire, lim, table.unpack(c[1]))
      assert.is_false(ok)
      assert.matches("baton.limiter:acquire: bad argument " .. c[2], err, 1, true)
    end
    assert.equal(0, lim:snapshot().global.in_use)
    H.raises_misuse("baton.limiter:limit", 1, "key", "got 'x'", lim.limit, lim, "x")
    H.raises_misuse("baton.parse_key", 1, "s", "expected string, got nil", baton.parse_key, nil)
    H.raises_misuse("baton.limiter", 1, "config", "expected table, got 5", baton.limiter, 5)
  end)
end)

describe("baton.limiter.from_json", function()
  it("loads a configuration file", H.async(function()
    local lim = assert(baton.limiter.from_json(FIXTURES .. "good.json"))
    assert.equal(1, lim:limit("anthropic/opus"))
    assert.equal(2, lim:limit("anthropic/sonnet"))     -- bare model name
    assert.equal(2, lim:limit("claude-cli/claude-code"))  -- premium default, from the file
    assert.equal(4, lim:limit("other/unknown"))           -- standard default, from the file
    local a = lim:acquire("anthropic/opus")
    local b = lim:acquire("anthropic/opus")
    local c = lim:acquire("anthropic/opus")
    assert.same({ "primary", "capability", "capability" }, { a.via, b.via, c.via })
    H.assert_failure("baton.limiter:acquire", "queue_wait", lim:acquire("anthropic/opus"))  -- max_agents 3
    assert.same({ capacity = 3, in_use = 3, waiting = 0 }, lim:snapshot().global)
    a:release(); b:release(); c:release()
  end))

  local bad = {
    { "bad_unknown_key.json", "'max_agent' (unknown option)" },
    { "bad_provider_model.json", "'providers[1].models[2]'" },
    { "bad_tier.json", "'profiles[\"opus\"].cost_tier'" },
    { "bad_limit.json", "'models[\"openai/gpt-4o\"]'" },
    { "bad_null.json", "'max_agents' (expected integer >= 1, got baton.json.null)" },
    { "not_object.json", "'path' (expected a file holding a JSON object, got baton.json.array)" },
  }
  for _, case in ipairs(bad) do
    it("raises naming the file and the field: " .. case[1], function()
      local ok, err = pcall(baton.limiter.from_json, FIXTURES .. case[1])
      assert.is_false(ok)
      assert.matches("baton.limiter.from_json: " .. FIXTURES .. case[1] .. ": bad argument #1 " ..
                     case[2], err, 1, true)
    end)
  end

  it("returns nil, message, 'malformed' for a file that is not JSON", function()
    local msg, _, detail = H.assert_failure("baton.limiter.from_json", "malformed",
                                            baton.limiter.from_json(FIXTURES .. "malformed.json"))
    assert.matches("malformed.json: malformed JSON at byte", msg, 1, true)
    assert.equal(FIXTURES .. "malformed.json", detail.path)
  end)

  it("returns nil, message, 'io' for a missing file", function()
    local msg, _, detail = H.assert_failure("baton.limiter.from_json", "io",
                                            baton.limiter.from_json(FIXTURES .. "missing.json"))
    assert.matches("missing.json", msg, 1, true)
    assert.same({ path = FIXTURES .. "missing.json" }, detail)
    H.assert_failure("baton.limiter.from_json", "io", baton.limiter.from_json(FIXTURES))  -- a directory
  end)
end)
