---@meta baton.mcp
-- require "baton.mcp" (lua/baton/mcp.lua): the MCP client over stdio or Streamable HTTP.
-- See docs/mcp.md. Checked by spec/types_spec.lua.

---@class baton.mcp
---@field SUPPORTED_VERSIONS string[]
---@field VERSION string
---@field Client baton.mcp.Client
local mcp = {}

---@class baton.mcp.ConnectOptions
---@field command? string[] stdio: argv, never a shell (exactly one of command, url)
---@field url? string Streamable HTTP
---@field headers? table<string, string> HTTP: sent with every request
---@field listen? boolean HTTP: open the GET stream (default true)
---@field env? table<string, string>
---@field cwd? string
---@field process_group? boolean
---@field protocol_version? string
---@field supported_versions? string[]
---@field capabilities? table
---@field roots? { uri: string, name?: string }[]
---@field client_info? { name: string, version: string }
---@field timeout_ms? number the handshake's deadline
---@field request_timeout_ms? number default deadline of later requests
---@field max_line_bytes? integer
---@field on_log? fun(params: table)
---@field on_notification? fun(method: string, params: table?)
---@field on_warning? fun(message: string)
---@field auth? baton.mcp.AuthOptions|true HTTP: OAuth 2.1 per the MCP authorization spec

---@class baton.mcp.AuthOptions
---@field client_id? string pre-registered (else a metadata document URL, else registration)
---@field client_secret? string
---@field client_metadata_url? string a Client ID Metadata Document's URL (used as client_id)
---@field client_name? string sent with dynamic client registration
---@field scopes? string|string[] asked for (default: the server's challenge, then scopes_supported)
---@field redirect_uri? string
---@field authorize? fun(url: string, info: { redirect_uri: string, state: string }): string?, string?, string? the person in the loop: code[, state] | nil, message[, kind]
---@field token_store? baton.mcp.TokenStore default: in memory
---@field grant? "authorization_code"|"client_credentials"|"jwt_bearer"
---@field private_key? string client_credentials with private_key_jwt: a PEM private key
---@field signing_alg? string private_key_jwt's algorithm (ES256)
---@field token_endpoint_auth_method? string overrides the one chosen from the metadata
---@field id_token? string jwt_bearer: the identity provider's ID token
---@field idp_client_id? string jwt_bearer: the client id at the identity provider
---@field idp_token_endpoint? string jwt_bearer: the identity provider's token endpoint

---@class baton.mcp.TokenStore
local TokenStore = {}
---@param key string
---@return table? entry
function TokenStore:load(key) end
---@param key string
---@param entry table
---@return true|nil ok, string? message
function TokenStore:save(key, entry) end

---@alias baton.mcp.Kind baton.Kind|"rpc_error"|"tool_error"|"auth"

---@class baton.mcp.CallOptions
---@field timeout_ms? number
---@field on_progress? fun(params: table)

---Connects and completes the handshake: client | nil, message, kind[, detail].
---@param opts baton.mcp.ConnectOptions
---@return baton.mcp.Client|nil client, string? message, baton.mcp.Kind? kind, baton.Detail? detail
function mcp.connect(opts) end

---The text of a tools/call result's content, joined.
---@param result table
---@return string
function mcp.text(result) end

---A dispatcher for baton.engine calling `client:call(tool, args)`.
---@param client baton.mcp.Client
---@param opts? { timeout_ms?: number, body?: fun(result: table): any }
---@return fun(tool: string, args: any, request: table): any
function mcp.dispatcher(client, opts) end

---A token store in memory (connect's default).
---@return baton.mcp.TokenStore
function mcp.memory_token_store() end

---A token store in a JSON file, written with mode 0600.
---@param path string
---@return baton.mcp.TokenStore
function mcp.file_token_store(path) end

---@class baton.mcp.Client
---@field server_info table
---@field server_capabilities table
---@field protocol_version string
---@field instructions? string
local Client = {}
---@param method string
---@param params? table
---@param opts? baton.mcp.CallOptions
---@return any result, string? message, baton.mcp.Kind? kind, baton.Detail? detail
function Client:request(method, params, opts) end
---@param method string
---@param params? table
---@return true|nil ok, string? message, baton.mcp.Kind? kind
function Client:notify(method, params) end
---@param opts? baton.mcp.CallOptions
---@return true|nil ok, string? message, baton.mcp.Kind? kind
function Client:ping(opts) end
---Every page of tools/list.
---@return table[]|nil tools, string? message, baton.mcp.Kind? kind, baton.Detail? detail
function Client:list_tools(opts) end
---@return table[]|nil resources, string? message, baton.mcp.Kind? kind, baton.Detail? detail
function Client:list_resources(opts) end
---@return table[]|nil prompts, string? message, baton.mcp.Kind? kind, baton.Detail? detail
function Client:list_prompts(opts) end
---tools/call: result | nil, msg, "tool_error", result | nil, msg, kind, detail.
---@param tool string
---@param args? table
---@param opts? baton.mcp.CallOptions
---@return table|nil result, string? message, baton.mcp.Kind? kind, any detail
function Client:call(tool, args, opts) end
---@return table|nil result, string? message, baton.mcp.Kind? kind, baton.Detail? detail
function Client:read_resource(uri, opts) end
---@return table|nil result, string? message, baton.mcp.Kind? kind, baton.Detail? detail
function Client:get_prompt(name, args, opts) end
---Handles a notification from the server.
---@param method string
---@param fn fun(params: table?)|nil
function Client:on(method, fn) end
---Answers a request from the server (its return value is the result).
---@param method string
---@param fn (fun(params: table?): ...)|nil
function Client:handle(method, fn) end
---@param roots { uri: string, name?: string }[]
function Client:set_roots(roots) end
---Replaces the headers sent with every later request (HTTP only).
---@param headers table<string, string>
---@return baton.mcp.Client
function Client:set_headers(headers) end
---@return table
function Client:stats() end
---The server's pid (stdio), or nil.
---@return integer?
function Client:pid() end
---What the server wrote to stderr (kept tail).
---@return string
function Client:stderr() end
---@param grace_ms? number
function Client:close(grace_ms) end

return mcp
