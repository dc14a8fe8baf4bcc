---@meta baton.router
-- baton.router (lua/baton/router.lua): deployments, groups, classification, ledger, usage.
-- See docs/router.md. Checked by spec/types_spec.lua.

---@class baton.RouterDeployment
---@field name string unique
---@field call fun(req: any, ctx: baton.RouterContext): ... one attempt: a response, or nil, msg, kind, detail
---@field model? string
---@field rpm? number
---@field rpm_burst? number
---@field tpm? number
---@field tpm_burst? number
---@field max_parallel? integer
---@field cost? { input: number, output: number }
---@field context_window? integer
---@field timeout_ms? number
---@field usage? fun(result: any): integer?, integer?

---@class baton.RouterContext
---@field deployment string
---@field model string
---@field attempt integer
---@field why string
---@field deadline number
---@field timeout_ms number
---@field estimate_tokens? integer

---@class baton.RouterOptions
---@field deployments baton.RouterDeployment[]
---@field groups? table<string, string[]|{ strategy?: "ordered"|"least_busy"|"lowest_latency" }>
---@field fallbacks? table<string, string[]>
---@field context_fallbacks? table<string, string[]>
---@field on? table<string, "next"|"cooldown"|"retry"|"fallback"|"fail">
---@field retry? { max?: integer, base_ms?: number, max_delay_ms?: number }
---@field hedge? { after_ms: number|"p95", max?: integer, budget?: number }
---@field timeout_ms? number
---@field cooldown_ms? number
---@field classify? fun(value: any, msg: string?, kind: string?, detail: any): string?, number?
---@field on_attempt? fun(row: baton.RouterLedgerRow)
---@field store? baton.Store
---@field name? string

---@class baton.RouterLedgerRow
---@field deployment string
---@field why string
---@field class? string
---@field action? string

---@class baton.routerlib
---@field classes string[] the class names, sorted
---@overload fun(opts: baton.RouterOptions): baton.Router
baton.router = {}

---Class of an outcome: class, retry_after_ms | nil (a success).
---@return string|nil class, number? retry_after_ms
function baton.router.classify(value, msg, kind, detail) end

---Tokens of a result (OpenAI, Anthropic, Gemini shapes): tokens_in, tokens_out | nil.
---@return integer|nil tokens_in, integer? tokens_out
function baton.router.usage(result) end

---@class baton.Router
local Router = {}
---result, ledger | nil, "baton.router:call: ...", kind, { ledger =, class =, retry_after_ms = }.
---@param group string
---@param req any
---@param opts? { estimate_tokens?: integer, timeout_ms?: number }
---@return any result, baton.RouterLedgerRow[]|string ledger_or_message, baton.Kind? kind, baton.Detail? detail
function Router:call(group, req, opts) end
---Per deployment: model, attempts, ok, failed, tokens, cost, latency percentiles, cooldown.
---@return table<string, table>
function Router:usage() end
