-- baton.mcp.es256 — ECDSA P-256 with SHA-256 signatures (JWS "ES256", RFC 7518 §3.4) in pure
-- Lua, for private_key_jwt client authentication (RFC 7523) in baton.mcp.auth. Only signing:
-- the authorization server verifies.
--
-- Numbers are 256-bit, little-endian arrays of 16 limbs of 16 bits; field and scalar
-- arithmetic is Montgomery multiplication (CIOS) modulo p or n; points are Jacobian. The
-- nonce k is fresh from the kernel for every signature (/dev/urandom). Not constant-time:
-- the key is the client's own and signs a handful of assertions, not a service's.
--
-- es256.sign(pem, message) -> the 64-byte signature r || s | nil, message
-- es256.private_scalar(pem) -> the 32-byte private key of a PKCS#8 or SEC 1 PEM | nil, message
local A = require "baton.mcp.auth"

local L = 16               -- limbs
local MASK = 0xffff

local E = {}

local function from_hex(h)
  local x = {}
  for i = 1, L do
    local j = #h - 4 * i + 1
    x[i] = tonumber(h:sub(j, j + 3), 16)
  end
  return x
end

local function from_bytes(s)  -- 32 bytes, big-endian
  local x = {}
  for i = 1, L do
    local hi, lo = s:byte(33 - 2 * i, 34 - 2 * i)
    x[i] = (hi << 8) | lo
  end
  return x
end

local function to_bytes(x)
  local out = {}
  for i = L, 1, -1 do out[#out + 1] = string.char(x[i] >> 8, x[i] & 0xff) end
  return table.concat(out)
end

local function cmp(a, b)
  for i = L, 1, -1 do
    if a[i] ~= b[i] then return a[i] < b[i] and -1 or 1 end
  end
  return 0
end

local function is_zero(a)
  for i = 1, L do if a[i] ~= 0 then return false end end
  return true
end

-- a - b (limb-wise, with borrow): the difference and the final borrow.
local function sub_raw(a, b)
  local r, borrow = {}, 0
  for i = 1, L do
    local d = a[i] - b[i] - borrow
    if d < 0 then d, borrow = d + 0x10000, 1 else borrow = 0 end
    r[i] = d
  end
  return r, borrow
end

local function add_raw(a, b)
  local r, c = {}, 0
  for i = 1, L do
    local s = a[i] + b[i] + c
    r[i], c = s & MASK, s >> 16
  end
  return r, c
end

-- A modulus: m, m' = -m^-1 mod 2^16, R^2 mod m, 1 in Montgomery form.
local function modulus(hex)
  local m = from_hex(hex)
  local m0, x = m[1], m[1]
  for _ = 1, 4 do x = (x * (2 - m0 * x)) & MASK end
  local M = { m = m, minv = (-x) & MASK }
  local r = { 1 }
  for i = 2, L do r[i] = 0 end
  for _ = 1, 512 do  -- 2^512 mod m by doubling
    local s, c = add_raw(r, r)
    if c == 1 or cmp(s, m) >= 0 then s = sub_raw(s, m) end
    r = s
  end
  M.r2 = r
  return M
end

local function addm(M, a, b)
  local s, c = add_raw(a, b)
  if c == 1 or cmp(s, M.m) >= 0 then s = sub_raw(s, M.m) end
  return s
end

local function subm(M, a, b)
  local d, borrow = sub_raw(a, b)
  if borrow == 1 then d = add_raw(d, M.m) end
  return d
end

-- a * b * R^-1 mod m (CIOS).
local function mul(M, a, b)
  local m, minv = M.m, M.minv
  local t = {}
  for i = 1, L + 2 do t[i] = 0 end
  for i = 1, L do
    local bi, c = b[i], 0
    for j = 1, L do
      local s = t[j] + a[j] * bi + c
      t[j], c = s & MASK, s >> 16
    end
    local s = t[L + 1] + c
    t[L + 1], t[L + 2] = s & MASK, s >> 16
    local q = (t[1] * minv) & MASK
    c = (t[1] + q * m[1]) >> 16
    for j = 2, L do
      s = t[j] + q * m[j] + c
      t[j - 1], c = s & MASK, s >> 16
    end
    s = t[L + 1] + c
    t[L], c = s & MASK, s >> 16
    t[L + 1], t[L + 2] = t[L + 2] + c, 0
  end
  local r = {}
  for i = 1, L do r[i] = t[i] end
  if t[L + 1] ~= 0 or cmp(r, m) >= 0 then r = sub_raw(r, m) end
  return r
end

local ONE = { 1 }
for i = 2, L do ONE[i] = 0 end

local function to_m(M, a) return mul(M, a, M.r2) end
local function from_m(M, a) return mul(M, a, ONE) end

-- a^(m-2) (the inverse, m prime), a in Montgomery form.
local function inv(M, a)
  local e = sub_raw(M.m, { 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 })
  local r = to_m(M, ONE)
  for i = L, 1, -1 do
    for bit = 15, 0, -1 do
      r = mul(M, r, r)
      if (e[i] >> bit) & 1 == 1 then r = mul(M, r, a) end
    end
  end
  return r
end

local P = modulus("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff")
local N = modulus("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
local GX = to_m(P, from_hex("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"))
local GY = to_m(P, from_hex("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"))

-- Jacobian doubling for a = -3 (dbl-2001-b); nil is the point at infinity.
local function double(p)
  if not p then return nil end
  local x, y, z = p[1], p[2], p[3]
  if is_zero(y) then return nil end
  local delta = mul(P, z, z)
  local gamma = mul(P, y, y)
  local beta = mul(P, x, gamma)
  local t = mul(P, subm(P, x, delta), addm(P, x, delta))
  local alpha = addm(P, addm(P, t, t), t)
  local beta4 = addm(P, beta, beta)
  beta4 = addm(P, beta4, beta4)
  local x3 = subm(P, mul(P, alpha, alpha), addm(P, beta4, beta4))
  local yz = addm(P, y, z)
  local z3 = subm(P, subm(P, mul(P, yz, yz), gamma), delta)
  local g2 = mul(P, gamma, gamma)
  local g8 = addm(P, g2, g2)
  g8 = addm(P, g8, g8)
  g8 = addm(P, g8, g8)
  local y3 = subm(P, mul(P, alpha, subm(P, beta4, x3)), g8)
  return { x3, y3, z3 }
end

-- p + (x2, y2) (affine), madd-2007-bl.
local function add_affine(p, x2, y2)
  if not p then return { x2, y2, to_m(P, ONE) } end
  local x1, y1, z1 = p[1], p[2], p[3]
  local z1z1 = mul(P, z1, z1)
  local u2 = mul(P, x2, z1z1)
  local s2 = mul(P, y2, mul(P, z1, z1z1))
  local h = subm(P, u2, x1)
  local r = subm(P, s2, y1)
  if is_zero(h) then
    if is_zero(r) then return double(p) end
    return nil
  end
  r = addm(P, r, r)
  local hh = mul(P, h, h)
  local i = addm(P, hh, hh)
  i = addm(P, i, i)
  local j = mul(P, h, i)
  local v = mul(P, x1, i)
  local x3 = subm(P, subm(P, mul(P, r, r), j), addm(P, v, v))
  local yj = mul(P, y1, j)
  local y3 = subm(P, mul(P, r, subm(P, v, x3)), addm(P, yj, yj))
  local zh = addm(P, z1, h)
  local z3 = subm(P, subm(P, mul(P, zh, zh), z1z1), hh)
  return { x3, y3, z3 }
end

-- The affine x (plain form) of k·G.
local function base_mul_x(k)
  local q
  for i = L, 1, -1 do
    for bit = 15, 0, -1 do
      q = double(q)
      if (k[i] >> bit) & 1 == 1 then q = add_affine(q, GX, GY) end
    end
  end
  if not q then return nil end
  local zi = inv(P, q[3])
  return from_m(P, mul(P, q[1], mul(P, zi, zi)))
end

-- The private scalar d of a PEM EC P-256 key (PKCS#8 "PRIVATE KEY" or SEC 1 "EC PRIVATE
-- KEY"): the OCTET STRING of 32 bytes after ECPrivateKey's version 1.
function E.private_scalar(pem)
  local body = type(pem) == "string" and pem:match("%-%-%-%-%-BEGIN [%u ]*PRIVATE KEY%-%-%-%-%-(.-)%-%-%-%-%-END")
  if not body then return nil, "not a PEM private key" end
  local der = A.unbase64(body)
  if not der then return nil, "the PEM private key is not base64" end
  if not der:find("\6\8\42\134\72\206\61\3\1\7", 1, true) then
    return nil, "not a P-256 (prime256v1) key"
  end
  local at = der:find("\2\1\1\4\32", 1, true)
  if not at then return nil, "no EC private key in the PEM" end
  return der:sub(at + 5, at + 36)
end

-- The ES256 signature of message with the PEM key: r || s, 64 bytes | nil, message.
function E.sign(pem, message)
  local dbytes, e = E.private_scalar(pem)
  if not dbytes then return nil, e end
  local d = from_bytes(dbytes)
  if is_zero(d) or cmp(d, N.m) >= 0 then return nil, "the private key is out of range" end
  local z = from_bytes(A.sha256(message))
  if cmp(z, N.m) >= 0 then z = sub_raw(z, N.m) end
  for _ = 1, 64 do
    local k = from_bytes(A.random(32))
    if not is_zero(k) and cmp(k, N.m) < 0 then
      local x = base_mul_x(k)
      if x then
        if cmp(x, N.m) >= 0 then x = sub_raw(x, N.m) end
        if not is_zero(x) then
          local rm = to_m(N, x)
          local sum = addm(N, to_m(N, z), mul(N, rm, to_m(N, d)))
          local s = from_m(N, mul(N, inv(N, to_m(N, k)), sum))
          if not is_zero(s) then return to_bytes(x) .. to_bytes(s) end
        end
      end
    end
  end
  return nil, "no signature after 64 nonces"
end

return E
