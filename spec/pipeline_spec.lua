-- baton.pipeline: order, empty, short-circuit (the failure names the stage and keeps its
-- kind), stage count, timings, the error handler, stages that await, `nil, msg, kind`
-- returns, timings with sub-millisecond resolution, cancellation passing through, misuse.
local baton = require "baton"
local H = require "spec.helper"

describe("baton.pipeline", function()
  it("runs stages in insertion order, each on the previous output", function()
    local p = baton.pipeline()
      :stage("upper", function(s) return s:upper() end)
      :stage("append", function(s) return s .. "!" end)
    assert.equal("HELLO!", p:run("hello"))
  end)

  it("returns the input when it has no stages", function()
    assert.equal("test", baton.pipeline():run("test"))
  end)

  it("short-circuits at the first failing stage: nil, msg, kind, { stage }", function()
    local ran = false
    local p = baton.pipeline()
      :stage("fail", function() error("boom", 0) end)
      :stage("never", function(s) ran = true; return s end)
    local msg, _, detail = H.assert_failure("baton.pipeline:run", "error", p:run("input"))
    assert.equal("baton.pipeline:run: stage 'fail' failed: boom", msg)
    assert.same({ stage = "fail" }, detail)
    assert.is_false(ran)
  end)

  it("treats a stage's `nil, msg, kind, detail` return as a failure, keeping the kind",
     function()
    local p = baton.pipeline():stage("fetch", function()
      return nil, "baton.http.request: no route", "connect", { url = "http://x" }
    end)
    local msg, _, detail = H.assert_failure("baton.pipeline:run", "connect", p:run(1))
    assert.equal("baton.pipeline:run: stage 'fetch' failed: baton.http.request: no route", msg)
    assert.same({ stage = "fetch", detail = { url = "http://x" } }, detail)
    H.assert_failure("baton.pipeline:run", "error",
                     baton.pipeline():stage("io", function() return nil, "unreachable" end):run(1))
    local q = baton.pipeline():stage("nothing", function() return nil end)
      :stage("default", function(v) return v == nil and "none" or v end)
    assert.equal("none", q:run(1))
  end)

  it("reads a raised baton.error like a returned failure", function()
    local _, _, detail = H.assert_failure("baton.pipeline:run", "rate_limited",
      baton.pipeline():stage("s", function()
        error(baton.error("rate_limited", "slow down", { retry_after_ms = 5 }))
      end):run())
    assert.same({ stage = "s", detail = { retry_after_ms = 5 } }, detail)
  end)

  it("counts its stages with #", function()
    local p = baton.pipeline():stage("s1", tostring):stage("s2", tostring)
    assert.equal(2, #p)
  end)

  it("times each stage in a timed run", function()
    local p = baton.pipeline()
      :stage("s1", function(s) return s .. "1" end)
      :stage("s2", function(s) return s .. "2" end)
    local r = p:run_timed("x")
    assert.equal("x12", r.output)
    assert.equal(2, #r.timings)
    assert.equal("s1", r.timings[1].name)
    assert.equal("s2", r.timings[2][1])
    for _, t in ipairs(r.timings) do
      assert.equal(t.ms, t[2])
      assert.equal("float", math.type(t.ms))
      assert.is_true(t.ms > 0 and t.ms < 1000)
    end
  end)

  it("resolves timings below a millisecond", function()
    local r = baton.pipeline():stage("tiny", function(s) return s end):run_timed("x")
    -- A stage that returns its input takes microseconds, and its time says so rather than
    -- rounding to 0 or 1.
    assert.is_true(r.timings[1].ms > 0 and r.timings[1].ms < 1)
  end)

  it("lets stages await, and times the wait", H.async(function()
    local p = baton.pipeline()
      :stage("slow", function(s) baton.sleep(5); return s .. "+slept" end)
      :stage("fast", function(s) baton.yield(); return s .. "+yielded" end)
    local r = p:run_timed("in")
    assert.equal("in+slept+yielded", r.output)
    assert.is_true(r.timings[1].ms >= 4, "slept " .. r.timings[1].ms .. " ms")
  end))

  describe("with an error handler", function()
    it("replaces the failed stage's output and goes on", function()
      local p = baton.pipeline()
        :stage("fail_stage", function() error("oops") end)
        :stage("append", function(s) return s .. "-recovered" end)
        :on_error(function(stage, _err) return "recovered_from_" .. stage end)
      assert.equal("recovered_from_fail_stage-recovered", p:run("input"))
    end)

    it("receives the stage name and the failure: msg, kind, detail", function()
      local seen
      local p = baton.pipeline()
        :stage("ok", function(s) return s end)
        :stage("bad", function() return nil, "no route", "connect", { host = "h" } end)
        :on_error(function(...) seen = { ... }; return "fallback" end)
      local r = p:run_timed("x")
      assert.same({ "bad", "no route", "connect", { host = "h" } }, seen)
      assert.equal("fallback", r.output)
      assert.equal(2, #r.timings)
    end)

    it("may decline with a failure: the run then fails at that stage with it", function()
      local p = baton.pipeline()
        :stage("a", function() error("first", 0) end)
        :stage("b", function() error("never reached") end)
        :on_error(function(_, msg) return nil, "gave up: " .. msg, "protocol", { why = 1 } end)
      local msg, _, detail = H.assert_failure("baton.pipeline:run_timed", "protocol",
                                              p:run_timed(0))
      assert.equal("baton.pipeline:run_timed: stage 'a' failed: gave up: first", msg)
      assert.same({ stage = "a", detail = { why = 1 } }, detail)
    end)

    it("may await", H.async(function()
      local p = baton.pipeline()
        :stage("a", function() error("x") end)
        :on_error(function() baton.sleep(1); return "late" end)
      assert.equal("late", p:run(0))
    end))

    it("propagates an error the handler raises", function()
      local p = baton.pipeline()
        :stage("a", function() error("x") end)
        :on_error(function() error("handler bug", 0) end)
      assert.has_error(function() p:run(0) end, "handler bug")
    end)
  end)

  it("lets cancellation through: an aborted run is not a stage failure", H.async(function()
    local handled = false
    local p = baton.pipeline()
      :stage("wait", function() baton.sleep(10000) end)
      :on_error(function() handled = true; return "swallowed" end)
    local t = baton.spawn(function() return p:run(0) end)
    baton.yield()
    t:abort()
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.equal("cancelled", t:status())
    assert.is_false(handled)
  end))

  it("raises on misuse, naming the argument", function()
    local p = baton.pipeline()
    H.raises_misuse("baton.pipeline:stage", 1, "name", "expected string, got table",
                    p.stage, p, {}, tostring)
    assert.has_error(function() p:stage("", tostring) end,
      "baton.pipeline:stage: bad argument #1 'name' (expected non-empty string, got '')")
    H.raises_misuse("baton.pipeline:stage", 2, "fn", "expected function, got 'not a function'",
                    p.stage, p, "s", "not a function")
    H.raises_misuse("baton.pipeline:on_error", 1, "fn", "expected function or nil, got 42",
                    p.on_error, p, 42)
    H.raises_misuse("baton.pipeline:run", 0, "self", "expected baton.Pipeline, got 5",
                    p.run, 5)
    assert.equal(0, #p)
  end)
end)
