---@meta baton.store
-- baton.store (lua/baton/store.lua): the store interface and its memory implementation.
-- See docs/store.md. Checked by spec/types_spec.lua.

---@class baton.storelib
baton.store = {}

---A store in this process's memory.
---@return baton.Store
function baton.store.memory() end

---@class baton.StoreBreakerOptions
---@field probe_ttl_ms? number how long a half-open probe holds the fleet's probe lease at most (default 30000)

---A breaker backend keeping its state in a store, with the store's clock and one probe
---lease for the whole fleet (docs/resilience.md, "Backends").
---@param s baton.Store
---@param prefix? string
---@param opts? baton.StoreBreakerOptions
---@return baton.BreakerBackend
function baton.store.breaker_backend(s, prefix, opts) end

---The store interface (a remote store implements the same methods).
---@class baton.Store
local Store = {}
---@return number ms
function Store:now() end
---@return number|nil remaining, string? message, baton.Kind? kind, baton.Detail? detail
function Store:gcra_take(key, rate, per_ms, burst, cost, mode) end
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function Store:lease_acquire(key, holder, limit, ttl_ms) end
---@return true|nil ok, string? message, baton.Kind? kind, baton.Detail? detail
function Store:lease_renew(key, holder, ttl_ms) end
---@return true
function Store:lease_release(key, holder) end
---@return integer
function Store:lease_holders(key) end
---@return integer
function Store:incr(key, by, ttl_ms) end
---@return integer
function Store:get(key) end
---@return true
function Store:set_cooldown(key, ttl_ms) end
---@return number ms left
function Store:cooldown(key) end
---@return "new"|"in_progress"|"cached" state, any value
function Store:claim(key, ttl_ms) end
---@return true
function Store:complete(key, value, ttl_ms) end
---@return true
function Store:fail(key) end
---@return true
function Store:del(key) end
