---@meta baton
-- LuaCATS annotations for baton (lua-language-server). Nothing here runs: baton's functions
-- are C (src/lua/) and Lua (lua/baton/). spec/types_spec.lua walks the live module and every
-- object kind's methods and fails on a function without a `function ...(` declaration here,
-- so a new function must be annotated in the same commit. Docs: docs/api.md and the others.

---One of the words baton returns third in `nil, message, kind, detail` (docs/errors.md).
---@alias baton.Kind
---| "timeout"      # a deadline passed
---| "cancelled"    # the task was aborted
---| "closed"       # the object was closed while (or before) waiting
---| "io"           # the system refused: a broken pipe, a cut body, a program that cannot start
---| "resource"     # out of file descriptors, processes or memory
---| "connect"      # HTTP: refused, unresolvable, connect timeout
---| "tls"          # HTTP: TLS failed
---| "protocol"     # an answer that is not HTTP / JSON-RPC
---| "too_large"    # over a size limit
---| "malformed"    # not JSON, not the expected shape
---| "busy"         # nothing free without waiting
---| "circuit_open" # a breaker refused
---| "shed"         # backpressure refused the work
---| "queue_wait"   # a limiter key is at its limit and no wait was asked for
---| "rate_limited" # a rate limit refused; detail.retry_after_ms says when
---| "auth"         # credentials refused
---| "unavailable"  # the remote side is overloaded or down
---| "rejected"     # the request itself was refused (context length, bad request)
---| "tool_error"   # an MCP tool reported an error
---| "rpc_error"    # a JSON-RPC error reply
---| "redis"        # Redis answered with an error reply
---| "error"        # a failure without a kind

---Facts of a failure: `url`, `timeout_ms`, `limit`, `pid`, `byte`, `available`, `capacity`, ...
---@alias baton.Detail table<string, any>

---A raised failure: `baton.error(kind, message, detail)`, the cancellation error, a join's error.
---@class baton.Error
---@field kind baton.Kind|string
---@field message string
---@field detail? baton.Detail
---@field traceback? string

---@class baton
---@field kinds baton.Kind[] the kinds baton returns (docs/errors.md)
---@field _VERSION string baton's version, as baton.version() returns it
---@field json baton.json
---@field http baton.http
---@field process baton.process
---@field coroutine baton.coroutine
---@field limiter baton.limiterlib
---@field router baton.routerlib
---@field store baton.storelib
local baton = {}

-- Running ---------------------------------------------------------------------------------

---Runs `fn` as the main task; returns its results or raises its error. Refuses to nest.
---@param fn fun(...): ...
---@param ... any
---@return ...
function baton.run(fn, ...) end

---@class baton.SpawnOptions
---@field name? string the task's name (task:name(), baton.tasks(), the trace)
---@field [1] fun(...): ... the task's body; [2], [3], ... its arguments

---A task owned by the runtime; it first runs when the spawner waits or yields.
---`baton.spawn{ name = "fetch", fn, arg1, ... }` also names it.
---@param fn (fun(...): ...)|baton.SpawnOptions
---@param ... any
---@return baton.Task
function baton.spawn(fn, ...) end

---Runs fn(...) with `label` as what the current task is doing: baton.tasks() shows the label
---as `waits` while the task waits inside fn, and a trace gets a span named `label` (its cat
---is the label's first word). The previous label comes back however fn ends. Returns fn's
---results; re-raises its error. The MCP client labels its calls "mcp <method> [<tool>]".
---@param label string
---@param fn fun(...): ...
---@param ... any
---@return ...
function baton.activity(label, fn, ...) end

---@class baton.ProgressOptions
---@field total? integer how many items there are (a bar and an ETA); unknown when absent
---@field label? string the line's first word (default "progress")
---@field tty? boolean draw the in-place line (default: whether stderr is a terminal)
---@field interval_ms? number not a terminal: a plain line at most this often (default 2000)

---A progress line on stderr: on a terminal one line redrawn in place at most every ~100 ms
---(label, bar, done/total, failed, rate, ETA); otherwise a plain line every interval_ms when
---something changed. Its redraw timer never keeps the loop alive.
---@param opts? baton.ProgressOptions
---@return baton.Progress
function baton.progress(opts) end

---Tracing: a Chrome trace-event JSON timeline (docs/observability.md).
baton.trace = {}

---Starts writing a trace to `path` (truncated). Raises if a trace is already being written.
---BATON_TRACE=<path> in the environment starts one when baton is loaded.
---@param path string
---@return true|nil ok, string? message, baton.Kind? kind "io"
function baton.trace.start(path) end

---Finishes the trace file; returns how many events were written (0 if no trace was open).
---@return integer|nil events, string? message, baton.Kind? kind "io"
function baton.trace.stop() end

---Whether a trace is being written.
---@return boolean
function baton.trace.active() end

---An instant event on the current task's track (nothing when no trace is being written).
---@param name string
---@param args? table<string, string|number|boolean>
function baton.trace.instant(name, args) end

---Awaits a timer. Returns nil, msg, "resource" only if no memory was left for the timer.
---@param ms number milliseconds in [0, 1e15)
---@return true|nil ok, string? message, baton.Kind? kind
function baton.sleep(ms) end

---Goes to the back of the woken tasks.
function baton.yield() end

---The loop's monotonic clock, integer milliseconds.
---@return integer
function baton.now() end

---Sub-millisecond monotonic clock (float milliseconds), for timings.
---@return number
function baton.clock() end

---fn's results, or `nil, msg, "timeout", { timeout_ms = }` after aborting fn's task.
---@param ms number
---@param fn fun(...): ...
---@param ... any
---@return any ...
function baton.timeout(ms, fn, ...) end

---A `baton.Error` for code that raises a failure a policy should branch on.
---@param kind baton.Kind|string
---@param message string
---@param detail? baton.Detail
---@return baton.Error
function baton.error(kind, message, detail) end

---The running task, or nil.
---@return baton.Task?
function baton.current() end

---@class baton.Stats
---@field tasks integer
---@field ready integer
---@field timers integer
---@field processes integer
---@field handles integer
---@field transfers integer HTTP requests in flight
---@field pooled_coroutines integer

---Counts of what the runtime holds.
---@return baton.Stats
function baton.stats() end

---@class baton.TaskInfo
---@field id integer
---@field status "running"|"waiting"|"finishing"
---@field waits? string what it waits on, in words: "sleep until +120 ms", 'semaphore "api" (3rd in line)', "process 1234", "http GET host/path", "mcp tools/call echo", "channel recv", "join task 17", ...; nil unless waiting
---@field call? string the function the task is parked in ("baton.sleep", "baton.task:join", ...)
---@field due_ms? integer milliseconds left until that wait's deadline, if it has one
---@field age_ms integer milliseconds since the task first ran
---@field parent? integer the id of the task owning it (a group made in a task), nil for baton.spawn's
---@field group? string its group's name, when the group has one
---@field name? string task:name()
---@field task? baton.Task

---The tasks that have started and not finished, in no particular order (pending tasks are not listed).
---@return baton.TaskInfo[]
function baton.tasks() end

---Sets the one warning hook (default: stderr).
---@param fn fun(message: string)|nil
function baton.on_warning(fn) end

---Reports a warning through the hook.
---@param message string
function baton.warn(message) end

---While `baton.run` runs, each delivery spawns `fn(name)`; nil puts the default back.
---@param name "int"|"term"|"hup"|"usr1"|"usr2"
---@param fn fun(name: string)|nil
function baton.on_signal(name, fn) end

---Ends the run (or the process outside one) with `code`.
---@param code? boolean|integer
---@param close? boolean
function baton.exit(code, close) end

---baton's version string.
---@return string
function baton.version() end

-- Concurrency ------------------------------------------------------------------------------

---Runs each function as a task; the first to finish wins (its error re-raised); the rest are aborted.
---@param ... fun(): ...
---@return any ...
function baton.race(...) end

---The first success's results | nil, msg, kind, { errors = { [i] = err } }.
---@param ... fun(): ...
---@return any ...
function baton.first_ok(...) end

---@class baton.HedgeOptions
---@field after_ms number start another attempt after this long without an answer
---@field max? integer attempts at most (default 2)

---Calls `fn(attempt)`, starting another attempt every `after_ms`; the first success wins.
---@param fn fun(attempt: integer): ...
---@param opts baton.HedgeOptions
---@return any ...
function baton.hedge(fn, opts) end

---A ticker (Go's time.Ticker): missed ticks coalesce.
---@param ms number > 0
---@return baton.Interval
function baton.interval(ms) end

---Runs `fn(...)` to completion even if the task is aborted meanwhile; fn's error re-raised.
---@param fn fun(...): ...
---@param ... any
---@return any ...
function baton.shield(fn, ...) end

---Waits on several sources at once (channels, futures, notifies, watches):
---`i, results of source i` | `nil, msg, "timeout", { timeout_ms = }`.
---@param sources table a list of sources, and `timeout_ms =`
---@return integer|nil index, any ...
function baton.select(sources) end

---@class baton.GroupOptions
---@field limit? integer|baton.Semaphore at most this many tasks run at once (or a shared semaphore's permits)
---@field fail_fast? boolean the first failure aborts the siblings; join_all/wait_within re-raise it
---@field detached? boolean owned by no task (a group that outlives the task that makes it)
---@field name? string shown by baton.tasks() (`group`) and in wait descriptions

---A task group (a JoinSet); closing it shuts its tasks down.
---@param opts? baton.GroupOptions
---@return baton.Group
function baton.group(opts) end

---@class baton.SemaphoreOptions
---@field name? string shown in wait descriptions ('semaphore "api" (3rd in line)')

---A counting semaphore (FIFO, direct hand-off).
---@param n integer permits
---@param opts? baton.SemaphoreOptions
---@return baton.Semaphore
function baton.semaphore(n, opts) end

---@class baton.BudgetOptions
---@field cap? integer permits per key (default 4)

---Permits counted per key.
---@param opts? baton.BudgetOptions
---@return baton.Budget
function baton.budget(opts) end

---A value delivered once, to any number of waiters.
---@return baton.Future
function baton.future() end

---A bounded channel (capacity 0: rendezvous).
---@param capacity integer >= 0
---@return baton.Channel
function baton.channel(capacity) end

---A value many tasks watch for changes.
---@param initial any not nil
---@return baton.Watch
function baton.watch(initial) end

---Wake one or all waiters (Tokio's Notify).
---@return baton.Notify
function baton.notify() end

-- Resilience -------------------------------------------------------------------------------

---@class baton.RetryOptions
---@field max_attempts integer >= 1, the first included
---@field base_ms number >= 1, the wait after the first failure
---@field max_delay_ms? number cap on any wait (default 60000)
---@field jitter? "none"|"full"|"equal"
---@field retry_on? fun(message: string, kind: string?, detail: any): boolean
---@field on_retry? fun(attempt: integer, delay_ms: number, message: string, kind: string?, detail: any)

---A retry policy.
---@param opts baton.RetryOptions
---@return baton.Retry
function baton.retry(opts) end

---@class baton.BreakerOptions
---@field service string the name the state is kept under
---@field threshold integer consecutive counted failures that open the circuit
---@field recovery_ms number how long it stays open before probing
---@field half_open_max? integer concurrent probes while half-open (default 1)
---@field counts? fun(message: string, kind: string?, detail: any): boolean
---@field backend? baton.BreakerBackend
---@field clock? fun(): number

---A circuit breaker.
---@param opts baton.BreakerOptions
---@return baton.Breaker
function baton.breaker(opts) end

---A shareable in-memory breaker backend.
---@return baton.BreakerBackend
function baton.breaker_backend() end

---@class baton.DedupOptions
---@field ttl_ms number how long results (and pending keys) live
---@field clock? fun(): number
---@field store? baton.Store keep claims and results in a store
---@field key_prefix? string with a store (default "dedup:")
---@field poll_ms? number with a store: how often a waiter asks

---Single flight and a result cache by key.
---@param opts baton.DedupOptions
---@return baton.Dedup
function baton.dedup(opts) end

---@class baton.BackpressureOptions
---@field capacity integer
---@field soft? integer

---Load shedding: refuse work over capacity, never queue it.
---@param opts baton.BackpressureOptions
---@return baton.Backpressure
function baton.backpressure(opts) end

---Stages run in order, each given the previous output.
---@return baton.Pipeline
function baton.pipeline() end

---@class baton.RunnerRequest
---@field session_id? string
---@field reason string "startup" | "poll" | a poke's reason
---@field trace_idle boolean

---@class baton.RunnerOptions
---@field handler fun(request: baton.RunnerRequest): any runs in a task
---@field poll_ms? integer default 400

---@class baton.QueueRunnerOptions
---@field queue baton.RedisQueue the work queue (baton.redis.queue)
---@field handler fun(job: any, delivery: baton.RedisDelivery): any runs in a task per job; a failure (raise, or nil, msg, kind) is a failed delivery
---@field concurrency? integer jobs run at once (default 1)
---@field block_ms? integer the longest blocking read (default min(1000, claim_idle_ms / 2))

---A poll-and-poke work driver (docs/runner.md); with `queue`, the distributed runner on a
---Redis stream (docs/redis.md, "The work queue").
---@param opts baton.RunnerOptions
---@return baton.Runner
---@overload fun(opts: baton.QueueRunnerOptions): baton.QueueRunner
function baton.runner(opts) end

---@class baton.EngineOptions
---@field max_parallel integer prefetches in flight
---@field timeout_ms number the deadline of each wait_within
---@field dispatcher fun(tool: string, args: any, request: baton.EngineRequest): any
---@field per_host_cap? integer|table<string, integer>
---@field respect_rate_limits? boolean
---@field enabled? boolean
---@field budget? baton.Budget

---@class baton.EngineRequest
---@field tool string
---@field args any
---@field host? string
---@field cost_tokens? number
---@field speculate? boolean

---@class baton.EngineOutcome
---@field status "settled"|"failed"|"skipped"
---@field tool string
---@field args any
---@field host? string
---@field cost_tokens? number
---@field body? any
---@field error? baton.Error
---@field reason? string
---@field elapsed_ms? number

---A speculation engine (docs/engine.md).
---@param opts baton.EngineOptions
---@return baton.Engine
function baton.engine(opts) end

---@class baton.RateLimitOptions
---@field rate number units per per_ms
---@field per_ms? number default 1000
---@field burst? integer
---@field store? baton.Store
---@field key? string required with a store

---A GCRA rate limit (docs/ratelimit.md).
---@param opts baton.RateLimitOptions
---@return baton.RateLimit
function baton.ratelimit(opts) end

---Splits "provider/model" at the first '/', both parts trimmed.
---@param key string
---@return string|nil provider, string? model
function baton.parse_key(key) end

---"a/b, bad, c/d" -> { "a/b", "c/d" }.
---@param chain string
---@return string[]
function baton.parse_chain(chain) end

-- Model limiter (docs/limiter.md) ----------------------------------------------------------

---@class baton.LimiterOptions
---@field models? table<string, integer>
---@field providers? { name: string, models: string[], cli?: boolean }[]
---@field profiles? table<string, table>|fun(model: string, provider: string): table
---@field max_agents? integer
---@field default_concurrency? table<string, integer>

---@class baton.limiterlib
---@overload fun(opts: baton.LimiterOptions): baton.Limiter
baton.limiter = {}

---A limiter from a JSON file with the same fields.
---@param path string
---@return baton.Limiter|nil limiter, string? message, baton.Kind? kind, baton.Detail? detail
function baton.limiter.from_json(path) end

-- JSON -----------------------------------------------------------------------------------

---@class baton.json
---@field null userdata the JSON null sentinel: decode returns it, encode writes it (and lua-cjson's cjson.null) as null
baton.json = {}

---@class baton.JsonEncodeOptions
---@field pretty? boolean
---@field raw_bytes? boolean write string bytes as they are

---Encodes a value; raises (naming the path) on what JSON cannot hold.
---@param v any
---@param opts? baton.JsonEncodeOptions
---@return string
function baton.json.encode(v, opts) end

---@class baton.JsonDecodeOptions
---@field raw_bytes? boolean keep string bytes that are not UTF-8 (default: malformed)

---Decodes strict JSON (UTF-8 strings): value | nil, message, "malformed", { byte = }.
---@param s string
---@param opts? baton.JsonDecodeOptions
---@return any value, string? message, baton.Kind? kind, baton.Detail? detail
function baton.json.decode(s, opts) end

---Marks a table as a JSON array (so `{}` encodes as `[]`).
---@generic T: table
---@param t T
---@return T
function baton.json.array(t) end

---Marks a table as a JSON object.
---@generic T: table
---@param t T
---@return T
function baton.json.object(t) end

-- Processes ------------------------------------------------------------------------------

---@class baton.process
baton.process = {}

---@class baton.ProcessOptions
---@field [integer] string argv, never a shell
---@field stdin? string|boolean run: the child's input; spawn: true opens a pipe
---@field cwd? string
---@field env? table<string, string> replaces the whole environment
---@field timeout_ms? number run only
---@field max_output_bytes? integer per stream (default 64 MiB)
---@field process_group? boolean default true: the child leads its own group
---@field max_write_queue_bytes? integer spawn only
---@field max_line_bytes? integer spawn only

---@class baton.ProcessResult
---@field code integer 128 + signal when killed
---@field signal? integer
---@field stdout string
---@field stderr string

---Runs a program to its end: result | nil, message, kind, detail.
---@param opts baton.ProcessOptions
---@return baton.ProcessResult|nil result, string? message, baton.Kind? kind, baton.Detail? detail
function baton.process.run(opts) end

---Starts a program to talk with: proc | nil, message, kind, detail.
---@param opts baton.ProcessOptions
---@return baton.Process|nil proc, string? message, baton.Kind? kind, baton.Detail? detail
function baton.process.spawn(opts) end

-- HTTP -------------------------------------------------------------------------------------

---@class baton.http
baton.http = {}

---@class baton.HttpOptions
---@field url string http:// or https://
---@field method? string
---@field headers? table<string, string>
---@field body? string|any http.json: a value to encode
---@field timeout_ms? number the whole request (no default)
---@field connect_timeout_ms? number
---@field max_body_bytes? integer default 64 MiB
---@field max_header_bytes? integer default 256 KiB
---@field follow_redirects? boolean|integer
---@field ca_file? string
---@field max_event_bytes? integer stream only

---@class baton.HttpResponse
---@field status integer
---@field headers table<string, string> lowercase names
---@field body string|any http.json: decoded
---@field text? string http.json: the raw body
---@field url string the final URL
---@field retry_after_ms? number

---One request: response | nil, message, kind, { url = }.
---@param opts baton.HttpOptions
---@return baton.HttpResponse|nil resp, string? message, baton.Kind? kind, baton.Detail? detail
function baton.http.request(opts) end

---A request whose body is JSON both ways.
---@param opts baton.HttpOptions
---@return baton.HttpResponse|nil resp, string? message, baton.Kind? kind, any detail
function baton.http.json(opts) end

---Returns once the head is in; read the body as it arrives.
---@param opts baton.HttpOptions
---@return baton.HttpStream|nil stream, string? message, baton.Kind? kind, baton.Detail? detail
function baton.http.stream(opts) end

---@class baton.coroutine
baton.coroutine = {}

---coroutine.wrap whose baton waits pass through to the running task.
---@param f function
---@return function
function baton.coroutine.wrap(f) end

-- Objects ----------------------------------------------------------------------------------

---@class baton.Task
---@field id integer
---@field ok? boolean
---@field error? any
local Task = {}
---`true, results...` | `false, err` | `nil, msg, "timeout", { task =, timeout_ms = }`.
---@param timeout_ms? number
---@return boolean|nil ok, any ...
function Task:join(timeout_ms) end
function Task:abort() end
---@return "pending"|"running"|"waiting"|"done"|"failed"|"cancelled"
function Task:status() end
---@return any ...
function Task:results() end
---The name set with set_name, else "source:line" of the task's function (nil once finished).
---@return string?
function Task:name() end
---@param name string
---@return baton.Task self
function Task:set_name(name) end
---The stack of a started, unfinished task ("task N waiting on <what>" then luaL_traceback's
---lines: where a parked task waits); nil before it starts and once it has finished.
---@return string?
function Task:traceback() end

---@class baton.Progress
local Progress = {}
---Counts n items done (default 1). Raises once done() was called.
---@param n? integer
---@return baton.Progress self
function Progress:advance(n) end
---Counts n items failed (default 1). Raises once done() was called.
---@param n? integer
---@return baton.Progress self
function Progress:fail(n) end
---Draws the last state and ends the line (idempotent; also `<close>`).
---@return integer done, integer failed
function Progress:done() end
---@return integer done, integer failed, integer? total
function Progress:counts() end

---@class baton.Group
local Group = {}
---`g:spawn{ name = "x", fn, args... }` also names the task.
---@param fn (fun(...): ...)|baton.SpawnOptions
---@return baton.Task
function Group:spawn(fn, ...) end
---@param sem baton.Semaphore
---@param fn fun(...): ...
---@return baton.Task
function Group:spawn_bounded(sem, fn, ...) end
---@return integer
function Group:live() end
---A finished task | nil when empty | nil, msg, "timeout"|"closed".
---@param timeout_ms? number
---@return baton.Task|nil task, string? message, baton.Kind? kind
function Group:join_next(timeout_ms) end
---@param ms number
---@return baton.Task[]|nil tasks, string? message, baton.Kind? kind, baton.Detail? detail
function Group:wait_within(ms) end
---@return baton.Task[]
function Group:drain() end
---@return baton.Task[]
function Group:join_all() end
function Group:abort_all() end
function Group:shutdown() end
function Group:close() end

---@class baton.Semaphore
local Semaphore = {}
---@param k? integer
---@return baton.Permit|nil permit, string? message, baton.Kind? kind, baton.Detail? detail
function Semaphore:try_acquire(k) end
---@param k? integer
---@param timeout_ms? number
---@return baton.Permit|nil permit, string? message, baton.Kind? kind, baton.Detail? detail
function Semaphore:acquire(k, timeout_ms) end
---@return integer
function Semaphore:available() end
---@return integer
function Semaphore:capacity() end
---@return integer
function Semaphore:waiting() end
function Semaphore:close() end
---@return boolean
function Semaphore:closed() end
---Adds n permits to the capacity and to what is available; waiters are granted in FIFO order.
---@param n integer
function Semaphore:add_permits(n) end
---Removes up to n available permits (held ones are never taken) from the capacity.
---@param n integer
---@return integer forgotten
function Semaphore:forget(n) end

---@class baton.Permit
local Permit = {}
---Idempotent; `<close>` releases too.
function Permit:release() end
---@return boolean
function Permit:held() end

---@class baton.Budget
local Budget = {}
---@param key string
---@param cap? integer
---@return baton.Permit|nil permit, string? message, baton.Kind? kind, baton.Detail? detail
function Budget:try_acquire(key, cap) end
---@return table<string, integer>
function Budget:snapshot() end
---@param key string
---@return integer
function Budget:count(key) end

---@class baton.Future
local Future = {}
---Delivers the values once; later sets return false.
---@return boolean
function Future:set(...) end
---@param ms? number
---@return any ...
function Future:wait(ms) end
---@return boolean
function Future:done() end
---@return integer
function Future:waiting() end

---@class baton.Channel
local Channel = {}
---@param v any
---@param ms? number
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function Channel:send(v, ms) end
---@param ms? number
---@return any v, string? message, baton.Kind? kind, baton.Detail? detail
function Channel:recv(ms) end
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function Channel:try_send(v) end
---@return any v, string? message, baton.Kind? kind, baton.Detail? detail
function Channel:try_recv() end
---Waits until one value fits, then sends as many of list[i..j] as fit; returns how many.
---@param list any[]
---@param i? integer default 1
---@param j? integer default #list
---@param ms? number
---@return integer|nil k, string? message, baton.Kind? kind, baton.Detail? detail
function Channel:send_many(list, i, j, ms) end
---Waits until one value is there, then takes up to max of them into buf[1..k] (or, buf nil,
---a new list); returns k and the list.
---@param buf any[]|nil
---@param max integer
---@param ms? number
---@return integer|nil k, any[]|string list_or_message, baton.Kind? kind, baton.Detail? detail
function Channel:recv_many(buf, max, ms) end
---Receives until closed and drained.
---@return fun(): any
function Channel:iter() end
function Channel:close() end
---@return boolean
function Channel:closed() end
---@return integer
function Channel:capacity() end

---@class baton.Watch
local Watch = {}
---@return true|nil ok, string? message, baton.Kind? kind
function Watch:send(v) end
---@return any value, integer version
function Watch:get() end
---@return any value, integer version
function Watch:borrow() end
---@param ms? number
---@return any value, integer|string version_or_message, baton.Kind? kind, baton.Detail? detail
function Watch:changed(ms) end
---@return baton.Watch
function Watch:subscribe() end
function Watch:close() end
---@return boolean
function Watch:closed() end

---@class baton.Notify
local Notify = {}
---@param ms? number
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function Notify:notified(ms) end
---@return boolean woken
function Notify:notify_one() end
---@return integer woken
function Notify:notify_all() end
---@return integer
function Notify:waiting() end

---@class baton.Interval
local Interval = {}
---Waits for the next tick; ticks since the last tick().
---@return integer
function Interval:tick() end
function Interval:reset() end

---@class baton.Process
local Process = {}
---@param s string
---@param ms? number
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function Process:write(s, ms) end
function Process:close_stdin() end
---@param ms? number
---@return string|nil line, string? message, baton.Kind? kind, baton.Detail? detail
function Process:read_line(ms) end
---@param ms? number
---@return string|nil bytes, string? message, baton.Kind? kind, baton.Detail? detail
function Process:read(ms) end
---@param ms? number
---@return integer|nil code, integer|string|nil signal_or_message, baton.Kind? kind
function Process:wait(ms) end
---@return string
function Process:stderr() end
---@param sig? string|integer
function Process:kill(sig) end
---@return integer
function Process:pid() end
---@param grace_ms? number
---@param wait? boolean
function Process:close(grace_ms, wait) end

---@class baton.HttpStream
---@field status integer
---@field headers table<string, string>
---@field url string
---@field retry_after_ms? number
---@field retry_ms? number
local HttpStream = {}
---@param ms? number
---@return string|nil bytes, string? message, baton.Kind? kind, baton.Detail? detail
function HttpStream:read(ms) end
---@param ms? number
---@return string|nil line, string? message, baton.Kind? kind, baton.Detail? detail
function HttpStream:read_line(ms) end
---@param ms? number
---@return { event: string, data: string, id?: string }|nil event, string? message, baton.Kind? kind, baton.Detail? detail
function HttpStream:read_event(ms) end
---@return integer
function HttpStream:buffered() end
function HttpStream:close() end

---@class baton.Retry
local Retry = {}
---fn's results | nil, "baton.retry:call: gave up after n attempts: ...", kind, { attempts =, last = }.
---@return any ...
function Retry:call(fn, ...) end
---@param n integer
---@return number ms
function Retry:delay_for(n) end

---@class baton.Breaker
local Breaker = {}
---@return any ...
function Breaker:call(fn, ...) end
---@return "closed"|"open"|"half_open"
function Breaker:state() end
---@return integer
function Breaker:failures() end

---Where a breaker's state lives (the in-memory one, or a store's: baton.store.breaker_backend).
---@class baton.BreakerBackend
local BreakerBackend = {}
---@return integer
function BreakerBackend:get_failures(service) end
---@return integer
function BreakerBackend:increment_failures(service) end
function BreakerBackend:reset_failures(service) end
---@return number|nil open_at, number? now the backend's clock, when it has one
function BreakerBackend:get_open_at(service) end
function BreakerBackend:set_open_at(service, at) end
function BreakerBackend:clear_open_at(service) end
---Optional: the backend's own clock (a breaker without `clock` then decides on it).
---@return number ms
function BreakerBackend:now() end
---Optional (with release_probe): the fleet's probe lease for the opening at open_at.
---@param service string
---@param open_at integer
---@return boolean granted
function BreakerBackend:acquire_probe(service, open_at) end
---Optional: gives the probe lease back.
function BreakerBackend:release_probe(service) end

---@class baton.Dedup
local Dedup = {}
---@param key string
---@param ttl_ms? number
---@return "new"|"in_progress"|"cached" state, any ...
function Dedup:check(key, ttl_ms) end
function Dedup:complete(key, ...) end
function Dedup:fail(key) end
---What fn(...) returns, computed once per key.
---@return any ...
function Dedup:run(key, fn, ...) end
---@return integer
function Dedup:size() end

---@class baton.Backpressure
local Backpressure = {}
---@return baton.BackpressurePermit|nil permit, string? message, baton.Kind? kind, baton.Detail? detail
function Backpressure:try_acquire() end
---@return integer
function Backpressure:depth() end
---@return integer
function Backpressure:capacity() end
---@return integer|nil
function Backpressure:soft() end
---@return number
function Backpressure:soft_ratio() end

---@class baton.BackpressurePermit
local BackpressurePermit = {}
function BackpressurePermit:release() end
---@return boolean
function BackpressurePermit:held() end

---@class baton.Pipeline
local Pipeline = {}
---@param name string
---@param fn fun(input: any): ...
---@return baton.Pipeline
function Pipeline:stage(name, fn) end
---@param fn fun(stage: string, message: string, kind: string?, detail: any): ...
---@return baton.Pipeline
function Pipeline:on_error(fn) end
---@return any output, string? message, baton.Kind? kind, baton.Detail? detail
function Pipeline:run(input) end
---@return { output: any, timings: table[] }|nil result, string? message, baton.Kind? kind, baton.Detail? detail
function Pipeline:run_timed(input) end

---@class baton.Runner
local Runner = {}
---@return baton.Runner
function Runner:start() end
---@param reason? string
---@return true|nil ok, string? message, baton.Kind? kind
function Runner:poke(reason) end
---@return true|nil ok, string? message, baton.Kind? kind
function Runner:poke_session(session_id, reason) end
---@return true|nil ok, string? message, baton.Kind? kind
function Runner:complete_session(session_id, reason) end
function Runner:stop() end
---@return "new"|"running"|"stopped"
function Runner:status() end
---@return string[]
function Runner:inflight() end
---@return integer
function Runner:pending() end

---@class baton.Engine
local Engine = {}
---@param requests baton.EngineRequest[]
---@return baton.EngineOutcome[] skips
function Engine:dispatch(requests) end
---@param ms? number
---@return baton.EngineOutcome[]
function Engine:wait_within(ms) end
---@return baton.EngineOutcome[]
function Engine:drain_pending() end
---@return integer
function Engine:pending() end
function Engine:shutdown() end
function Engine:close() end
---@return table
function Engine:stats() end
---@return table<string, integer>
function Engine:budget_snapshot() end

---@class baton.Limiter
local Limiter = {}
---@param primary string "provider/model"
---@param opts? { chain?: string|string[], wait?: boolean, timeout_ms?: number }
---@return baton.LimiterGrant|nil grant, string? message, baton.Kind? kind, baton.Detail? detail
function Limiter:acquire(primary, opts) end
---@return { keys: table<string, table>, global: table }
function Limiter:snapshot() end
---@return integer
function Limiter:limit(key) end

---@class baton.LimiterGrant
---@field key string
---@field via "primary"|"chain"|"capability"|"cli"|"queue"
---@field permit baton.LimiterPermit
local LimiterGrant = {}
function LimiterGrant:release() end

---@class baton.LimiterPermit
local LimiterPermit = {}
function LimiterPermit:release() end
---@return boolean
function LimiterPermit:held() end

---@class baton.RateLimit
local RateLimit = {}
---@param cost number
---@param opts? { timeout_ms?: number }
---@return any grant, string? message, baton.Kind? kind, baton.Detail? detail
function RateLimit:acquire(cost, opts) end
---@param cost number
---@return any grant, string? message, baton.Kind? kind, baton.Detail? detail
function RateLimit:try_acquire(cost) end
---Charges or gives back the difference once the real cost is known.
function RateLimit:adjust(grant, actual) end
---@return number ms
function RateLimit:retry_after(cost) end
---@return integer
function RateLimit:available() end
---@return integer
function RateLimit:waiting() end

-- ---- baton.redis (docs/redis.md) ----------------------------------------------------------

baton.redis = {}

---@class baton.RedisOptions
---@field url? string "redis://[[user]:password@]host[:port][/db]" (exactly one of url and path)
---@field path? string a unix socket
---@field password? string sent with AUTH
---@field db? integer sent with SELECT
---@field timeout_ms? number bounds the connect and every later call of the client
---@field reconnect? boolean a call after a lost connection opens a new one (with backoff)

---Connects (AUTH, SELECT, PING answered before it returns).
---@param opts baton.RedisOptions
---@return baton.Redis|nil client, string? message, baton.Kind? kind, baton.Detail? detail
function baton.redis.connect(opts) end

---@class baton.Redis
local Redis = {}
---A command; a Redis nil is a lone nil (no second value), an error reply kind "redis".
---@param cmd string
---@param ... string|number
---@return any reply, string? message, baton.Kind? kind, baton.Detail? detail
function Redis:call(cmd, ...) end
---Queues commands in fn (which must not wait), sends them together, returns the replies.
---@param fn fun(p: { call: fun(self: any, cmd: string, ...: string|number) })
---@return any[]|nil replies, string? message, baton.Kind? kind, baton.Detail? detail
function Redis:pipeline(fn) end
---Runs a script by its SHA (SCRIPT LOAD on first use and on NOSCRIPT).
---@param script string
---@param keys? (string|number)[]
---@param args? (string|number)[]
---@return any reply, string? message, baton.Kind? kind, baton.Detail? detail
function Redis:eval(script, keys, args) end
---A subscription on a connection of its own, once the server confirmed every channel.
---@param channel string
---@param ... string
---@return baton.RedisSubscription|nil sub, string? message, baton.Kind? kind, baton.Detail? detail
function Redis:subscribe(channel, ...) end
---A new client to the same server, set up the same way (for blocking commands).
---@return baton.Redis|nil client, string? message, baton.Kind? kind, baton.Detail? detail
function Redis:duplicate() end
---Fails calls in flight with "closed"; later use raises.
function Redis:close() end
---@return boolean
function Redis:closed() end

---@class baton.RedisSubscription
local RedisSubscription = {}
---The next message, in order.
---@param ms? number
---@return string|nil payload, string? channel_or_message, baton.Kind? kind, baton.Detail? detail
function RedisSubscription:next(ms) end
---@return integer dropped messages over the 10,000 unread cap
function RedisSubscription:dropped() end
function RedisSubscription:close() end

-- ---- baton.redis.queue (docs/redis.md, "The work queue") --------------------------------

---@class baton.RedisQueueOptions
---@field redis baton.Redis a client (reconnect = true to ride out a restart of the server)
---@field stream string the stream's key
---@field group? string the consumer group (default "baton")
---@field consumer? string this worker's name in the group (default a new unique one)
---@field claim_idle_ms? integer a job idle this long (its worker died) is claimed by another (default 30000)
---@field max_deliveries? integer deliveries before a job is dead-lettered (default 5)
---@field dead_letter? string the dead-letter stream (default stream .. ":dead")
---@field keep_acked? boolean keep acknowledged entries in the stream (default false: XDEL)

---A work queue on a Redis stream; workers are baton.runner{ queue = }.
---@param opts baton.RedisQueueOptions
---@return baton.RedisQueue
function baton.redis.queue(opts) end

---@class baton.RedisQueue
---@field stream string
---@field group string
---@field consumer string
local RedisQueue = {}
---Adds a job (XADD; the job JSON-encoded).
---@param job any a JSON value
---@return string|nil id, string? message, baton.Kind? kind, baton.Detail? detail
function RedisQueue:enqueue(job) end
---Adds jobs in one pipeline.
---@param jobs any[]
---@return string[]|nil ids, string? message, baton.Kind? kind, baton.Detail? detail
function RedisQueue:enqueue_all(jobs) end
---Creates the group (and the stream) if missing.
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function RedisQueue:ensure() end
---@return { length: integer, pending: integer, dead: integer, consumers: table<string, integer> }|nil info, string? message, baton.Kind? kind, baton.Detail? detail
function RedisQueue:info() end
---The oldest dead letters.
---@param count? integer default 100
---@return { id: string, job: any, deliveries: integer, kind: string, error: string, consumer: string, entry: string }[]|nil letters, string? message, baton.Kind? kind, baton.Detail? detail
function RedisQueue:dead_letters(count) end

---@class baton.RedisDelivery
---@field id string the stream entry's id
---@field deliveries integer this delivery's number (1 the first time)
local RedisDelivery = {}
---Acknowledges now, running `commands` in the same server-side script as the XACK (both or
---neither); "closed" when another consumer holds the job now (nothing was run).
---@param commands? (string|number)[][]
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function RedisDelivery:ack(commands) end

---@class baton.QueueRunner
local QueueRunner = {}
---Starts the reader and the heartbeat.
---@return baton.QueueRunner
function QueueRunner:start() end
---Aborts the jobs (they go back to the group), stops the tasks, closes the reader's connection.
function QueueRunner:stop() end
---@return "new"|"running"|"stopped"
function QueueRunner:status() end
---@return { delivered: integer, completed: integer, failed: integer, dead_lettered: integer, reclaimed: integer, errors: integer, lost: integer, running: integer }
function QueueRunner:stats() end

-- ---- baton.redis.store (docs/redis.md, "The store"; docs/store.md) ----------------------

---@class baton.RedisStoreOptions
---@field redis baton.Redis a client (reconnect = true to recover from a restart on its own)
---@field prefix? string put before every key (default "baton:")
---@field on_outage? "fail"|"open" while Redis is unreachable: return the failure (default) or answer as allowed

---The store interface (docs/store.md) on Redis: each operation one server-side script, on the server's clock.
---@param opts baton.RedisStoreOptions
---@return baton.RedisStore
function baton.redis.store(opts) end

---@class baton.RedisStore
local RedisStore = {}
---@return number|nil ms, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:now() end
---@param key string
---@param rate number
---@param per_ms number
---@param burst number
---@param cost number
---@param mode? "peek"|"force"
---@return integer|nil remaining, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:gcra_take(key, rate, per_ms, burst, cost, mode) end
---@param key string
---@param holder string
---@param limit integer
---@param ttl_ms number
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:lease_acquire(key, holder, limit, ttl_ms) end
---@param key string
---@param holder string
---@param ttl_ms number
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:lease_renew(key, holder, ttl_ms) end
---@param key string
---@param holder string
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:lease_release(key, holder) end
---@param key string
---@return integer|nil holders, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:lease_holders(key) end
---@param key string
---@param by number
---@param ttl_ms? number
---@return number|nil value, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:incr(key, by, ttl_ms) end
---@param key string
---@return number|nil value, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:get(key) end
---@param key string
---@param ttl_ms number
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:set_cooldown(key, ttl_ms) end
---@param key string
---@return integer|nil ms_left, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:cooldown(key) end
---@param key string
---@param ttl_ms number
---@return "new"|"in_progress"|"cached"|nil state, any value_or_message, baton.Kind? kind, baton.Detail? detail
function RedisStore:claim(key, ttl_ms) end
---@param key string
---@param value any JSON-shaped
---@param ttl_ms number
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:complete(key, value, ttl_ms) end
---@param key string
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:fail(key) end
---@param key string
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function RedisStore:del(key) end
---@return { calls: integer, outage_open: integer, outage_failed: integer, errors: integer, on_outage: string }
function RedisStore:stats() end

return baton
