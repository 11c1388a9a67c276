#!lua name=inferis
--[[
The inferis Redis Functions library: tensors, models and runs as Redis commands.

Every user-facing function is callable from any Redis client with FCALL; the
wire contract is docs/PROTOCOL.md. Errors are replies whose first word is a
stable code (EARGS, ETENSOR, EMODEL, EINPUT, EBUSY, ...). Everything is
validated before anything is written, because Redis does not roll back a
function that fails half way.
--]]

local LIB_VERSION = '12'

local MAGIC = 'INFT'
local FORMAT_VERSION = 1
local MAX_RANK = 8
local MAX_TENSOR_BYTES = 256 * 1024 * 1024
-- Inputs up to this size travel inside the stream entry, so a worker needs no
-- extra round trip to fetch them.
local INLINE_LIMIT = 256 * 1024
local DEFAULT_TIMEOUT_MS = 30000
local MAX_TIMEOUT_MS = 24 * 3600 * 1000
local DEFAULT_TTL_MS = 3600 * 1000
local MAX_TTL_MS = 1000000000000
local STAGING_TTL_MS = 3600 * 1000
local GROUP = 'inferis'
local MODELS_CHANNEL = 'inferis:models'
local DEADLETTER_MAXLEN = 10000
-- Every model's audit stream is trimmed (MAXLEN ~) to this, unless its
-- inferis:{<name>}:limits says audit_maxlen.
local AUDIT_MAXLEN = 10000
local MAX_BY_BYTES = 256  -- the 'by' a caller states
local MAX_CALL_REQUESTS = 256
-- Active-Active (docs/ACTIVE-ACTIVE.md): a writer names its region by index
-- (REGION n, 1..MAX_REGIONS; 0 or none: a single-region deployment). Region n
-- numbers its versions n mod VERSION_STRIDE, and its index orders the alias
-- decisions two regions make at once.
local MAX_REGIONS = 15
local VERSION_STRIDE = 16
-- Alias decisions kept per alias (older ones are pruned as new ones land).
local ALIAS_KEEP = 8
-- No Function may hold Redis for long: what Lua converts element by element
-- (VALUES in and out) and what it builds from nothing (a tensor without data)
-- is bounded; larger tensors travel as BLOB or RAW, which are plain copies.
local MAX_LUA_VALUES = 262144
local MAX_ZERO_FILL_BYTES = 16 * 1024 * 1024
-- Markers of the @<key> entry fields of inputs passed by key (client/protocol/entries.py).
local REF_LARGE, REF_MISSING, REF_NOT_STRING = '', '-', '!'

-- dtype name -> element size and struct format (nil: no VALUES conversion)
local DTYPES = {
  float16 = {size = 2}, bfloat16 = {size = 2},
  float32 = {size = 4, fmt = '<f', float = '%.9g'},
  float64 = {size = 8, fmt = '<d', float = '%.17g'},
  int8 = {size = 1, fmt = '<i1'}, int16 = {size = 2, fmt = '<i2'},
  int32 = {size = 4, fmt = '<i4'}, int64 = {size = 8, fmt = '<i8'},
  uint8 = {size = 1, fmt = '<I1'}, uint16 = {size = 2, fmt = '<I2'},
  uint32 = {size = 4, fmt = '<I4'}, uint64 = {size = 8, fmt = '<I8'},
  bool = {size = 1, fmt = '<I1', bool = true},
  str = {size = nil},
}
-- Names RedisAI users type, mapped to ours.
local DTYPE_ALIASES = {
  FLOAT = 'float32', DOUBLE = 'float64', HALF = 'float16', STRING = 'str',
}

---------------------------------------------------------------------------
-- errors

local function fail(code, msg)
  error({ierr = code .. ' ' .. msg})
end

-- Run a handler; inferis failures become clean error replies.
local function guarded(handler)
  return function(keys, args)
    local ok, res = pcall(handler, keys, args)
    if ok then return res end
    if type(res) == 'table' and res.ierr then return redis.error_reply(res.ierr) end
    if type(res) == 'table' and res.err then return redis.error_reply(res.err) end
    return redis.error_reply(tostring(res))
  end
end

---------------------------------------------------------------------------
-- small helpers

local function upper(s) return string.upper(s or '') end

-- Decimal integers only: tonumber would also take 0x10, 1e309 and inf.
local function to_int(s, what, min, max)
  if type(s) ~= 'string' or #s > 16 or not string.match(s, '^%-?%d+$') then
    fail('EARGS', what .. ' must be a decimal integer, got ' .. tostring(s))
  end
  local n = tonumber(s)
  if (min and n < min) or (max and n > max) then
    fail('EARGS', what .. ' out of range: ' .. tostring(s))
  end
  return n
end

local function hash_tag(key)
  local open = string.find(key, '{', 1, true)
  if not open then return nil end
  local close = string.find(key, '}', open + 1, true)
  if not close or close == open + 1 then return nil end
  return string.sub(key, open + 1, close - 1)
end

-- Keys a run creates share the hash tag of the request stream.
local function request_base(stream)
  local tag = hash_tag(stream)
  if tag then return '{' .. tag .. '}' end
  return stream
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A model Function's KEYS[1] is the model's key base, inferis:{<name>} (so ACL key
-- patterns such as %R~inferis:{*}* can grant it), or the bare name (older
-- clients, redis-cli): both hash to the slot of <name>.
local function model_name(key)
  if type(key) ~= 'string' then return key end
  return string.match(key, '^inferis:{([^{}]+)}$') or key
end

local function check_name(name)
  if type(name) ~= 'string' or #name == 0 or #name > 128 or not string.match(name, '^[%w][%w_.%-]*$') then
    fail('EARGS', 'model name must be 1-128 characters of letters, digits, _ . - (got ' .. tostring(name) .. ')')
  end
end

-- A Function does all it promises or writes nothing. Redis checks each command
-- against the caller's ACL as it runs, so a write refused half way would leave
-- the earlier ones done: each Function asks about all its writes first.
local function may(what, ...)
  local ok, allowed = pcall(redis.acl_check_cmd, ...)
  if not (ok and allowed) then
    fail('ENOPERM', 'this user may not ' .. what .. ' (' .. select(1, ...) .. ' ' .. tostring(select(2, ...))
      .. '), which this call needs; nothing was written')
  end
end

-- Functions write tensors only over tensors: never clobber a stream, hash, ...
local function check_writable(key)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= 'string' then
    fail('EARGS', 'key ' .. key .. ' holds a ' .. t .. ', not a tensor; refusing to overwrite it')
  end
end

local function json_list(t)
  if #t == 0 then return '[]' end
  return cjson.encode(t)
end

local function json_map(t)
  if next(t) == nil then return '{}' end
  return cjson.encode(t)
end

---------------------------------------------------------------------------
-- tensor format (see client/tensor.py)

local function align16(n) return math.ceil(n / 16) * 16 end

local function msgpack_uint(n)
  if n < 128 then return string.char(n) end
  if n < 65536 then return '\205' .. struct.pack('>I2', n) end
  if n < 4294967296 then return '\206' .. struct.pack('>I4', n) end
  return '\207' .. struct.pack('>I8', n)
end

local function encode_header(dtype, shape)
  local parts = {'\146', string.char(160 + #dtype), dtype, string.char(144 + #shape)}
  for _, d in ipairs(shape) do parts[#parts + 1] = msgpack_uint(d) end
  local hdr = table.concat(parts)
  local prefix = MAGIC .. string.char(FORMAT_VERSION, 0) .. struct.pack('<I2', #hdr)
  return prefix .. hdr .. string.rep('\0', align16(8 + #hdr) - 8 - #hdr)
end

local function canonical_dtype(name)
  if DTYPES[name] then return name end
  local up = upper(name)
  if DTYPE_ALIASES[up] then return DTYPE_ALIASES[up] end
  local low = string.lower(name or '')
  if DTYPES[low] then return low end
  return nil
end

local function check_shape(shape)
  if type(shape) ~= 'table' then fail('ETENSOR', 'tensor shape must be an array') end
  if #shape > MAX_RANK then fail('ETENSOR', 'tensor rank ' .. #shape .. ' exceeds the limit of ' .. MAX_RANK) end
  -- Zero dimensions do not excuse the others: [0, 2^62] is refused too.
  local count, product = 1, 1
  for _, d in ipairs(shape) do
    if type(d) ~= 'number' or d < 0 or d ~= math.floor(d) then
      fail('ETENSOR', 'tensor dimension ' .. tostring(d) .. ' is not a non-negative integer')
    end
    count = count * d
    product = product * math.max(d, 1)
    if product > MAX_TENSOR_BYTES then
      fail('ETENSOR', 'tensor shape exceeds the limit of ' .. MAX_TENSOR_BYTES .. ' elements')
    end
  end
  return count
end

-- Validate an encoded tensor value; returns dtype, shape, data offset, count.
local function parse_tensor(v, what)
  if type(v) ~= 'string' or #v < 8 or string.sub(v, 1, 4) ~= MAGIC then
    fail('ETENSOR', what .. ' is not an inferis tensor')
  end
  if string.byte(v, 5) ~= FORMAT_VERSION then
    fail('ETENSOR', what .. ' has unsupported tensor format version ' .. string.byte(v, 5))
  end
  if #v > MAX_TENSOR_BYTES + 4096 then
    fail('ETENSOR', what .. ' exceeds the tensor size limit of ' .. MAX_TENSOR_BYTES .. ' bytes')
  end
  local hlen = struct.unpack('<I2', v, 7)
  local off = align16(8 + hlen)
  if #v < off then fail('ETENSOR', what .. ' has a truncated header') end
  local ok, hdr = pcall(cmsgpack.unpack, string.sub(v, 9, 8 + hlen))
  if not ok or type(hdr) ~= 'table' or type(hdr[1]) ~= 'string' or type(hdr[2]) ~= 'table' then
    fail('ETENSOR', what .. ' has a corrupt header')
  end
  local dtype = hdr[1]
  if not DTYPES[dtype] then fail('ETENSOR', what .. ' has unknown dtype ' .. dtype) end
  local count = check_shape(hdr[2])
  local size = DTYPES[dtype].size
  if size then
    local want = count * size
    if want > MAX_TENSOR_BYTES then
      fail('ETENSOR', what .. ' exceeds the tensor size limit of ' .. MAX_TENSOR_BYTES .. ' bytes')
    end
    if #v - off ~= want then
      fail('ETENSOR', what .. ': ' .. dtype .. ' shape needs ' .. want .. ' data bytes, got ' .. (#v - off))
    end
  end
  return dtype, hdr[2], off, count
end

local function pack_values(dtype, values, count)
  local spec = DTYPES[dtype]
  if count > MAX_LUA_VALUES then
    fail('ETENSOR', 'VALUES takes at most ' .. MAX_LUA_VALUES .. ' items (this shape has ' .. count
      .. '); send BLOB or RAW')
  end
  if #values ~= count then
    fail('ETENSOR', 'VALUES has ' .. #values .. ' items, the shape needs ' .. count)
  end
  if dtype == 'str' then
    if count == 0 then return '\144' end
    return cmsgpack.pack(values)
  end
  if not spec.fmt then fail('ETENSOR', 'VALUES is not supported for ' .. dtype .. '; send BLOB') end
  local out = {}
  for i, s in ipairs(values) do
    local n = tonumber(s)
    if spec.bool then
      local u = upper(s)
      if u == 'TRUE' or s == '1' then n = 1 elseif u == 'FALSE' or s == '0' then n = 0 else n = nil end
    end
    if n == nil then fail('ETENSOR', 'VALUES item ' .. i .. ' is not a ' .. dtype .. ': ' .. tostring(s)) end
    if not spec.float and n ~= math.floor(n) then
      fail('ETENSOR', 'VALUES item ' .. i .. ' is not an integer: ' .. tostring(s))
    end
    out[i] = struct.pack(spec.fmt, n)
  end
  return table.concat(out)
end

local function half_to_number(h)
  local sign = bit.band(h, 0x8000) ~= 0 and -1 or 1
  local exp = bit.band(bit.rshift(h, 10), 0x1f)
  local frac = bit.band(h, 0x3ff)
  if exp == 0 then return sign * frac * 2 ^ -24 end
  if exp == 31 then
    if frac == 0 then return sign * math.huge end
    return 0 / 0
  end
  return sign * (1 + frac / 1024) * 2 ^ (exp - 15)
end

local function unpack_values(dtype, v, off, count)
  local out = {}
  if dtype == 'str' then
    if count == 0 then return out end
    local ok, items = pcall(cmsgpack.unpack, string.sub(v, off + 1))
    if not ok or type(items) ~= 'table' then fail('ETENSOR', 'corrupt string tensor data') end
    return items
  end
  local spec = DTYPES[dtype]
  for i = 0, count - 1 do
    local pos = off + 1 + i * spec.size
    local n
    if dtype == 'float16' then
      n = half_to_number(struct.unpack('<I2', v, pos))
    elseif dtype == 'bfloat16' then
      n = struct.unpack('<f', '\0\0' .. string.sub(v, pos, pos + 1))
    else
      n = struct.unpack(spec.fmt, v, pos)
    end
    if dtype == 'float16' or dtype == 'bfloat16' then
      out[i + 1] = string.format('%.5g', n)
    elseif spec.float then
      out[i + 1] = string.format(spec.float, n)
    else
      out[i + 1] = n
    end
  end
  return out
end

---------------------------------------------------------------------------
-- TENSORSET key dtype dim... [BLOB data | VALUES v...]
-- TENSORSET key RAW encoded

local function tensorset(keys, args)
  local key = keys[1]
  if not key then fail('EARGS', 'TENSORSET needs one key') end
  if upper(args[1]) == 'RAW' then
    if #args ~= 2 then fail('EARGS', 'TENSORSET key RAW takes exactly one value') end
    parse_tensor(args[2], 'value')
    check_writable(key)
    may('write the tensor', 'SET', key, 'x')
    redis.call('SET', key, args[2])
    return 'OK'
  end
  local dtype = canonical_dtype(args[1])
  if not dtype then fail('ETENSOR', 'unknown dtype ' .. tostring(args[1])) end
  local shape, i = {}, 2
  while i <= #args do
    local u = upper(args[i])
    if u == 'BLOB' or u == 'VALUES' then break end
    shape[#shape + 1] = to_int(args[i], 'dimension', 0)
    i = i + 1
  end
  local count = check_shape(shape)
  local size = DTYPES[dtype].size
  if size and count * size > MAX_TENSOR_BYTES then
    fail('ETENSOR', 'a ' .. dtype .. ' tensor of ' .. count .. ' elements exceeds the size limit of '
      .. MAX_TENSOR_BYTES .. ' bytes')
  end
  local data
  local mode = upper(args[i])
  if mode == 'BLOB' then
    if #args ~= i + 1 then fail('EARGS', 'BLOB takes exactly one value') end
    data = args[i + 1]
  elseif mode == 'VALUES' then
    local values = {}
    for j = i + 1, #args do values[#values + 1] = args[j] end
    data = pack_values(dtype, values, count)
  elseif dtype == 'str' then
    data = pack_values(dtype, {}, count)
  else
    if count * size > MAX_ZERO_FILL_BYTES then
      fail('ETENSOR', 'a tensor without BLOB or VALUES is zero-filled up to ' .. MAX_ZERO_FILL_BYTES
        .. ' bytes; this one would be ' .. count * size .. '; send BLOB')
    end
    data = string.rep('\0', count * size)
  end
  local value = encode_header(dtype, shape) .. data
  parse_tensor(value, 'value')
  check_writable(key)
  may('write the tensor', 'SET', key, 'x')
  redis.call('SET', key, value)
  return 'OK'
end

-- TENSORGET key [META] [VALUES] [BLOB]; with no option, the raw encoded value.
local function tensorget(keys, args)
  local key = keys[1]
  if not key then fail('EARGS', 'TENSORGET needs one key') end
  local v = redis.call('GET', key)
  if not v then fail('ETENSOR', 'tensor key ' .. key .. ' does not exist') end
  if #args == 0 then return v end
  local dtype, shape, off, count = parse_tensor(v, 'tensor ' .. key)
  local out = {}
  for _, a in ipairs(args) do
    local u = upper(a)
    if u == 'META' then
      out[#out + 1] = 'dtype'; out[#out + 1] = dtype
      out[#out + 1] = 'shape'; out[#out + 1] = shape
    elseif u == 'VALUES' then
      if count > MAX_LUA_VALUES then
        fail('ETENSOR', 'VALUES returns at most ' .. MAX_LUA_VALUES .. ' items (tensor ' .. key
          .. ' has ' .. count .. '); read BLOB or RAW')
      end
      out[#out + 1] = 'values'; out[#out + 1] = unpack_values(dtype, v, off, count)
    elseif u == 'BLOB' then
      out[#out + 1] = 'blob'; out[#out + 1] = string.sub(v, off + 1)
    elseif u == 'RAW' then
      out[#out + 1] = 'raw'; out[#out + 1] = v
    else
      fail('EARGS', 'TENSORGET option must be META, VALUES, BLOB or RAW, got ' .. tostring(a))
    end
  end
  return out
end

---------------------------------------------------------------------------
-- models: inferis:{<name>}:... (the name is the hash tag, so KEYS[1] = name
-- routes every model key of one name to one shard)

local function model_base(name) return 'inferis:{' .. name .. '}' end

local function region_index(v)
  return to_int(v, 'REGION (the region index, 0-' .. MAX_REGIONS .. ')', 0, MAX_REGIONS)
end

-- The newest version: the highest number in the versions set. A set merges by
-- union across regions, so every region resolves latest to the same version
-- (a 'latest' string would be last-write-wins by wall clock).
local function latest_version(base)
  local newest = redis.call('ZRANGE', base .. ':versions', -1, -1)
  return newest[1]
end

-- A new version number, above every version this Redis has seen and above the
-- writer's own last one (numbers are never reused). Region 0 (no region) takes
-- the next number, 1, 2, 3...; region n > 0 the next that is n modulo
-- VERSION_STRIDE, so two regions storing at once never pick the same number.
-- Only region n writes :seq:<n> (region 0 writes :seq).
local function next_version(base, region)
  local seq = base .. ':seq' .. (region == 0 and '' or ':' .. region)
  local floor = math.max(tonumber(latest_version(base) or '0'),
                         tonumber(redis.call('GET', base .. ':seq') or '0'),
                         tonumber(redis.call('GET', seq) or '0'))
  local version = floor + 1
  if region > 0 then
    version = (math.floor(floor / VERSION_STRIDE) + 1) * VERSION_STRIDE + region
  end
  redis.call('SET', seq, version)
  return version
end

-- Aliases: inferis:{<name>}:alias:<alias> is a hash of decisions, field
-- "<epoch>.<region>" -> the alias's whole record as JSON. The alias is the
-- decision with the highest epoch, a tie (two regions deciding at once) going
-- to the lower region index. A change writes a new decision one epoch above
-- the current one and never rewrites a field, so hash fields that merge by
-- union across regions leave every region resolving the same decision: no
-- wall clock decides (docs/ACTIVE-ACTIVE.md).
local function alias_key(base, alias) return base .. ':alias:' .. alias end

local function decision_of(field)
  local epoch, region = string.match(field, '^(%d+)%.(%d+)$')
  if not epoch then return nil end
  return tonumber(epoch), tonumber(region)
end

-- An alias written before decisions (library 10 and older): its fields are the
-- record; read as it is, and replaced by the first decision written.
local function legacy_alias(flat)
  local a = {}
  for j = 1, #flat, 2 do a[flat[j]] = flat[j + 1] end
  if not a.spec and not a.pending then return nil, 0 end
  local epoch = tonumber(a.epoch or '0') or 0
  a.epoch = tostring(epoch)
  return a, epoch
end

-- The alias's record (nil if it has none or was deleted) and its epoch.
local function alias_get(base, alias)
  local flat = redis.call('HGETALL', alias_key(base, alias))
  local best_epoch, best_region, best = 0, 0, nil
  for j = 1, #flat, 2 do
    local epoch, region = decision_of(flat[j])
    if epoch and (epoch > best_epoch or (epoch == best_epoch and region < best_region)) then
      best_epoch, best_region, best = epoch, region, flat[j + 1]
    end
  end
  if not best then return legacy_alias(flat) end
  local ok, a = pcall(cjson.decode, best)
  if not ok or type(a) ~= 'table' or a.deleted then return nil, best_epoch end
  a.epoch = tostring(best_epoch)
  return a, best_epoch
end

-- Write ``a`` as the alias's next decision, made in ``region``; returns its epoch.
local function alias_put(base, alias, a, region)
  local key = alias_key(base, alias)
  local fields = redis.call('HKEYS', key)
  -- above every decision, and above a pre-decision alias's own epoch field
  local top = tonumber(redis.call('HGET', key, 'epoch') or '0') or 0
  for _, field in ipairs(fields) do top = math.max(top, decision_of(field) or 0) end
  local epoch = top + 1
  local record = {}
  for k, v in pairs(a) do
    if k ~= 'epoch' then record[k] = tostring(v) end
  end
  redis.call('HSET', key, epoch .. '.' .. (region or 0), cjson.encode(record))
  for _, field in ipairs(fields) do
    local e = decision_of(field)
    if not e or e <= epoch - ALIAS_KEEP then redis.call('HDEL', key, field) end
  end
  return epoch
end

-- The version an alias routes most of its traffic to first (its first arm).
local function alias_primary(base, alias)
  local a = alias_get(base, alias)
  if not a or not a.spec then return nil end
  return string.match(a.spec, '^(%d+)')
end

-- The audit: one stream per model (inferis:{<name>}:audit) of who stored, deleted,
-- re-pointed, exported or loaded it. Lua cannot ask Redis who the caller is (ACL
-- WHOAMI is noscript), so 'by' is what the caller states (docs/PROTOCOL.md §17).
local function check_by(by)
  if type(by) ~= 'string' or #by > MAX_BY_BYTES then
    fail('EARGS', 'BY must be at most ' .. MAX_BY_BYTES .. ' bytes')
  end
  return by
end

-- A deployment bounds it per model with HSET inferis:{<name>}:limits audit_maxlen <n>.
local function audit_maxlen(base)
  local n = tonumber(redis.call('HGET', base .. ':limits', 'audit_maxlen') or '')
  if n and n >= 1 then return math.floor(n) end
  return AUDIT_MAXLEN
end

local function record(base, fields)
  redis.call('XADD', base .. ':audit', 'MAXLEN', '~', audit_maxlen(base), '*', unpack(fields))
end

local function may_audit(base)
  may('audit the change', 'XADD', base .. ':audit', '*', 'f', 'v')
end

local function resolve_version(base, name, v)
  local version
  if v == nil or v == '' or string.lower(v) == 'latest' then
    version = latest_version(base)
    if not version then fail('EMODEL', 'model ' .. name .. ' has no versions') end
  elseif string.match(v, '^%d+$') then
    version = v
  elseif #v == 64 and string.match(v, '^%x+$') then  -- a digest names its version
    version = redis.call('HGET', base .. ':digests', string.lower(v))
    if not version then fail('EMODEL', 'model ' .. name .. ' has no version with digest ' .. v) end
  else
    version = alias_primary(base, v)
    if not version then fail('EMODEL', 'model ' .. name .. ' has no version or alias ' .. v) end
  end
  if redis.call('EXISTS', base .. ':v:' .. version) == 0 then
    fail('EMODEL', 'model ' .. name .. ' has no version ' .. version)
  end
  return version
end

local function parse_spec(name, dtype, shape_text, what)
  if not name or not dtype or not shape_text then fail('EARGS', what .. ' takes name dtype shape') end
  local canon = canonical_dtype(dtype)
  if not canon then fail('EARGS', what .. ' ' .. name .. ': unknown dtype ' .. dtype) end
  local shape = {}
  if shape_text ~= '' and shape_text ~= 'scalar' then
    for part in string.gmatch(shape_text, '[^,]+') do
      if part == '?' or part == '-1' or part == 'None' then
        shape[#shape + 1] = -1
      else
        shape[#shape + 1] = to_int(part, what .. ' ' .. name .. ' dimension', 0)
      end
    end
  end
  return {name = name, dtype = canon, shape = shape}
end

local function is_digest(d)
  return type(d) == 'string' and #d == 64 and string.match(d, '^[0-9a-f]+$') ~= nil
end

-- MODELCHUNK name DIGEST hex INDEX i BLOB bytes: stage one chunk of a large blob.
local function modelchunk(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local digest, index, blob
  local i = 1
  while i <= #args do
    local u = upper(args[i])
    if u == 'DIGEST' then digest = string.lower(args[i + 1] or '')
    elseif u == 'INDEX' then index = to_int(args[i + 1], 'INDEX', 0, 100000)
    elseif u == 'BLOB' then blob = args[i + 1]
    else fail('EARGS', 'MODELCHUNK option ' .. tostring(args[i]) .. ' is unknown') end
    i = i + 2
  end
  if not is_digest(digest) then fail('EARGS', 'DIGEST must be 64 lowercase hex characters (SHA-256)') end
  if index == nil or blob == nil then fail('EARGS', 'MODELCHUNK needs INDEX and BLOB') end
  local base = model_base(name)
  -- A committed blob is immutable: never put a TTL back on its chunks.
  if redis.call('HEXISTS', base .. ':digests', digest) == 1 then return 0 end
  may('stage the chunk', 'SET', base .. ':blob:' .. digest .. ':' .. index, 'x')
  redis.call('SET', base .. ':blob:' .. digest .. ':' .. index, blob, 'PX', STAGING_TTL_MS)
  return 1
end

-- MODELSTORE name BACKEND b DIGEST hex [FORMAT f] [DEVICE d] [INPUT n dtype shape]...
--   [OUTPUT n dtype shape]... [BATCH max_size max_delay_us] [PREFERRED n,n...] [TAG k v]...
--   [META json] [SIGNATURE hex [SIGNER id]] [ENCRYPTED key_id] [BY who]
--   (BLOB bytes | CHUNKS n)
local function modelstore(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local m = {backend = nil, format = '', device = 'CPU', inputs = {}, outputs = {}, tags = {},
             batching = {}, extra = '{}'}
  local digest, blob, chunks, by, region = nil, nil, nil, '', 0
  local i = 1
  while i <= #args do
    local u = upper(args[i])
    if u == 'BACKEND' then m.backend = string.lower(args[i + 1] or ''); i = i + 2
    elseif u == 'REGION' then region = region_index(args[i + 1]); i = i + 2
    elseif u == 'FORMAT' then m.format = string.lower(args[i + 1] or ''); i = i + 2
    elseif u == 'DEVICE' then m.device = upper(args[i + 1]); i = i + 2
    elseif u == 'DIGEST' then digest = string.lower(args[i + 1] or ''); i = i + 2
    elseif u == 'BLOB' then blob = args[i + 1]; i = i + 2
    elseif u == 'CHUNKS' then chunks = to_int(args[i + 1], 'CHUNKS', 1, 100000); i = i + 2
    elseif u == 'TAG' then
      if args[i + 2] == nil then fail('EARGS', 'TAG takes key value') end
      m.tags[args[i + 1]] = args[i + 2]; i = i + 3
    elseif u == 'INPUT' then
      m.inputs[#m.inputs + 1] = parse_spec(args[i + 1], args[i + 2], args[i + 3], 'INPUT'); i = i + 4
    elseif u == 'OUTPUT' then
      m.outputs[#m.outputs + 1] = parse_spec(args[i + 1], args[i + 2], args[i + 3], 'OUTPUT'); i = i + 4
    elseif u == 'BATCH' then
      m.batching.max_batch_size = to_int(args[i + 1], 'BATCH max size', 0, 1000000)
      m.batching.max_queue_delay_us = to_int(args[i + 2], 'BATCH max delay', 0, 60000000)
      i = i + 3
    elseif u == 'PREFERRED' then
      local sizes = {}
      for part in string.gmatch(args[i + 1] or '', '[^,]+') do
        sizes[#sizes + 1] = to_int(part, 'PREFERRED batch size', 1, 1000000)
      end
      if #sizes == 0 then fail('EARGS', 'PREFERRED takes sizes like 8,16,32') end
      m.batching.preferred_batch_sizes = sizes
      i = i + 2
    elseif u == 'SIGNATURE' then
      local sig = args[i + 1] or ''
      if #sig ~= 128 or not string.match(sig, '^%x+$') then
        fail('EARGS', 'SIGNATURE must be an ed25519 signature as 128 hex characters')
      end
      m.signature = string.lower(sig); i = i + 2
    elseif u == 'SIGNER' then
      local signer = args[i + 1] or ''
      if #signer == 0 or #signer > 64 or not string.match(signer, '^[%w_.%-]+$') then
        fail('EARGS', 'SIGNER must be 1-64 characters of letters, digits, _ . -')
      end
      m.signer = signer; i = i + 2
    elseif u == 'ENCRYPTED' then
      -- the blob is ciphertext under the envelope key with this id (client/encryption.py)
      local key_id = args[i + 1] or ''
      if #key_id == 0 or #key_id > 64 or not string.match(key_id, '^[%w_.%-]+$') then
        fail('EARGS', 'ENCRYPTED takes the key id: 1-64 characters of letters, digits, _ . -')
      end
      m.encrypted = key_id; i = i + 2
    elseif u == 'BY' then by = check_by(args[i + 1]); i = i + 2
    elseif u == 'META' then
      local ok, decoded = pcall(cjson.decode, args[i + 1] or '')
      if not ok or type(decoded) ~= 'table' then fail('EARGS', 'META must be a JSON object') end
      m.extra = args[i + 1]; i = i + 2
    else
      fail('EARGS', 'MODELSTORE option ' .. tostring(args[i]) .. ' is unknown')
    end
  end
  if not m.backend or m.backend == '' then fail('EARGS', 'MODELSTORE needs BACKEND') end
  if not string.match(m.backend, '^[%w_%-]+$') then fail('EARGS', 'BACKEND ' .. m.backend .. ' is not a name') end
  if not is_digest(digest) then
    fail('EARGS', 'DIGEST must be the SHA-256 of the blob as 64 lowercase hex characters')
  end
  if (blob == nil) == (chunks == nil) then fail('EARGS', 'MODELSTORE needs exactly one of BLOB or CHUNKS') end
  if blob ~= nil and #blob == 0 then fail('EARGS', 'BLOB is empty') end

  local base = model_base(name)
  local existing = redis.call('HGET', base .. ':digests', digest)
  if existing then return {tonumber(existing), digest, 0} end

  may('store the blob', chunks and 'PERSIST' or 'SET', base .. ':blob:' .. digest .. ':0', 'x')
  may('number the version', 'SET', base .. ':seq' .. (region == 0 and '' or ':' .. region), '1')
  may('write the metadata', 'HSET', base .. ':v:1', 'f', 'v')
  may('index the digest', 'HSET', base .. ':digests', 'f', 'v')
  may('list the version', 'ZADD', base .. ':versions', '1', '1')
  may('publish the notice', 'PUBLISH', MODELS_CHANNEL, name)
  may_audit(base)
  local size = 0
  if chunks then
    for c = 0, chunks - 1 do
      local n = redis.call('STRLEN', base .. ':blob:' .. digest .. ':' .. c)
      if n == 0 then fail('EARGS', 'chunk ' .. c .. ' of ' .. digest .. ' was not uploaded (MODELCHUNK)') end
      size = size + n
    end
    for c = 0, chunks - 1 do redis.call('PERSIST', base .. ':blob:' .. digest .. ':' .. c) end
  else
    chunks = 1
    size = #blob
    redis.call('SET', base .. ':blob:' .. digest .. ':0', blob)
  end

  local version = next_version(base, region)
  redis.call('HSET', base .. ':v:' .. version,
    'name', name, 'version', version, 'digest', digest, 'backend', m.backend,
    'format', m.format, 'device', m.device, 'inputs', json_list(m.inputs),
    'outputs', json_list(m.outputs), 'batching', json_map(m.batching), 'tags', json_map(m.tags),
    'extra', m.extra, 'created_ms', now_ms(), 'size', size, 'chunks', chunks,
    'signature', m.signature or '', 'signer', m.signer or '', 'encrypted', m.encrypted or '')
  redis.call('HSET', base .. ':digests', digest, version)
  redis.call('ZADD', base .. ':versions', version, version)
  record(base, {'event', 'store', 'version', version, 'digest', digest, 'signer', m.signer or '',
                'encrypted', m.encrypted or '', 'by', by})
  redis.call('PUBLISH', MODELS_CHANNEL, name)
  return {version, digest, 1}
end

-- The whole file of a version, appended to its metadata reply as 'blob', <bytes>.
local function append_blob(base, name, version, out)
  local meta = {}
  for j = 1, #out, 2 do meta[out[j]] = out[j + 1] end
  local parts = {}
  for c = 0, tonumber(meta.chunks) - 1 do
    local part = redis.call('GET', base .. ':blob:' .. meta.digest .. ':' .. c)
    if not part then fail('EDIGEST', 'model ' .. name .. ' version ' .. version .. ' is missing chunk ' .. c) end
    parts[#parts + 1] = part
  end
  out[#out + 1] = 'blob'
  out[#out + 1] = table.concat(parts)
  return meta
end

-- MODELGET name [VERSION v] [META] [BLOB] [VERSIONS]
local function modelget(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local base = model_base(name)
  local v, want_blob, want_list = nil, false, false
  local i = 1
  while i <= #args do
    local u = upper(args[i])
    if u == 'VERSION' then v = args[i + 1]; i = i + 2
    elseif u == 'META' then i = i + 1
    elseif u == 'BLOB' then want_blob = true; i = i + 1
    elseif u == 'VERSIONS' then want_list = true; i = i + 1
    else fail('EARGS', 'MODELGET option ' .. tostring(args[i]) .. ' is unknown') end
  end
  if want_list then
    local versions = redis.call('ZRANGE', base .. ':versions', 0, -1)
    if #versions == 0 then fail('EMODEL', 'model ' .. name .. ' has no versions') end
    return versions
  end
  local version = resolve_version(base, name, v)
  local out = redis.call('HGETALL', base .. ':v:' .. version)
  if want_blob then append_blob(base, name, version, out) end
  return out
end

-- MODELEXPORT name [VERSION v] [BY who]: MODELGET ... BLOB that leaves a 'read'
-- entry in the audit. MODELGET stays no-writes (replicas, read-only roles), so a
-- read through it is not recorded; this is the path admins and exports take.
local function modelexport(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local base = model_base(name)
  local v, by = nil, ''
  local i = 1
  while i <= #args do
    local u = upper(args[i])
    if u == 'VERSION' then v = args[i + 1]; i = i + 2
    elseif u == 'BY' then by = check_by(args[i + 1]); i = i + 2
    else fail('EARGS', 'MODELEXPORT option ' .. tostring(args[i]) .. ' is unknown') end
  end
  may_audit(base)
  local version = resolve_version(base, name, v)
  local out = redis.call('HGETALL', base .. ':v:' .. version)
  local meta = append_blob(base, name, version, out)
  record(base, {'event', 'read', 'version', version, 'digest', meta.digest, 'by', by})
  return out
end

-- Another version with this content (two regions stored the same file at once:
-- two numbers, one blob), which keeps the blob.
local function shared_by(base, digest, version)
  for _, other in ipairs(redis.call('ZRANGE', base .. ':versions', 0, -1)) do
    if other ~= tostring(version) and redis.call('HGET', base .. ':v:' .. other, 'digest') == digest then
      return other
    end
  end
  return nil
end

local function delete_version(base, version)
  local meta = base .. ':v:' .. version
  local digest = redis.call('HGET', meta, 'digest')
  local chunks = tonumber(redis.call('HGET', meta, 'chunks') or '0')
  local twin = shared_by(base, digest, version)
  if not twin then
    for c = 0, chunks - 1 do redis.call('DEL', base .. ':blob:' .. digest .. ':' .. c) end
  end
  redis.call('DEL', meta)
  redis.call('ZREM', base .. ':versions', version)
  if twin then redis.call('HSET', base .. ':digests', digest, twin)
  else redis.call('HDEL', base .. ':digests', digest) end
end

-- An alias that routes to (or shadows) a version keeps it: re-point it first.
local function check_unused(base, name, version)
  for _, alias in ipairs(redis.call('SMEMBERS', base .. ':alias_names')) do
    local record = alias_get(base, alias) or {}
    local a = {record.spec, record.pending, record.shadow}
    for _, text in ipairs({a[1] or '', a[2] or ''}) do
      for v in string.gmatch(text, '(%d+)=') do
        if v == tostring(version) then
          fail('EARGS', 'version ' .. version .. ' of ' .. name .. ' is in alias ' .. alias .. '; re-point it first')
        end
      end
    end
    if a[3] == tostring(version) then
      fail('EARGS', 'version ' .. version .. ' of ' .. name .. ' is the shadow of alias ' .. alias)
    end
  end
end

local function audit_delete(base, version, by)
  local digest = redis.call('HGET', base .. ':v:' .. version, 'digest') or ''
  record(base, {'event', 'delete', 'version', version, 'digest', digest, 'by', by})
end

-- MODELDEL name [VERSION v] [BY who]: one version, or every version of the name.
-- Version numbers are never reused, so a number always means one content.
local function modeldel(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local base = model_base(name)
  local v, by = nil, ''
  local i = 1
  while i <= #args do
    local u = upper(args[i])
    if u == 'VERSION' then v = args[i + 1] or ''; i = i + 2
    elseif u == 'BY' then by = check_by(args[i + 1]); i = i + 2
    else fail('EARGS', 'MODELDEL takes only VERSION v and BY who') end
  end
  may('delete the blob and metadata', 'DEL', base .. ':v:1')
  may('unindex the digest', 'HDEL', base .. ':digests', 'f')
  may('index the digest', 'HSET', base .. ':digests', 'f', 'v')
  may('unlist the version', 'ZREM', base .. ':versions', '1')
  may('drop its aliases', 'DEL', base .. ':alias:x')
  may('publish the notice', 'PUBLISH', MODELS_CHANNEL, name)
  may_audit(base)
  local deleted = 0
  if v ~= nil then
    local version = resolve_version(base, name, v)
    check_unused(base, name, version)
    audit_delete(base, version, by)
    delete_version(base, version)
    deleted = 1
  else
    local versions = redis.call('ZRANGE', base .. ':versions', 0, -1)
    if #versions == 0 then fail('EMODEL', 'model ' .. name .. ' has no versions') end
    for _, version in ipairs(versions) do
      audit_delete(base, version, by)
      delete_version(base, version)
    end
    -- the whole model goes, and its aliases with it; the audit and the
    -- per-version history stay (they explain what was there)
    for _, alias in ipairs(redis.call('SMEMBERS', base .. ':alias_names')) do
      local a, epoch = alias_get(base, alias)
      record(base, {'alias', alias, 'event', 'delete', 'from', a and a.spec or '', 'to', '',
                    'by', by, 'epoch', epoch + 1, 'why', 'model deleted'})
      redis.call('DEL', base .. ':alias:' .. alias)
    end
    redis.call('DEL', base .. ':alias_names')
    deleted = #versions
  end
  if not latest_version(base) then redis.call('DEL', base .. ':stats') end
  redis.call('PUBLISH', MODELS_CHANNEL, name)
  return deleted
end

---------------------------------------------------------------------------
-- lifecycle: aliases (one version, or a split over versions by weight, with an
-- optional shadow), warm hot swaps, the audit stream, canary guards, the
-- prediction log and feedback. Keys under inferis:{<name>} (docs/PROTOCOL.md §15).
--   :alias:<alias>  hash: "<epoch>.<region>" -> JSON {spec, pending, pending_ms, shadow,
--                   guard_*, state, by, ms} (or {deleted}); the highest decision is the alias
--   :alias_names    set of the model's aliases (committed, pending or deleted)
--   :shadow:<p>:<s> hash: compared, agreed, max_diff; :shadow_pairs set of 'p:s' 
--   :audit          stream of every alias change
--   :workers        hash: consumer -> last ms it said it serves this model
--   :warm:<v>       hash: consumer -> ms it had version v loaded and warmed
--   :p:<rid>        hash: v, kind, pred[, proba][, fb] (the prediction log; expires)
--   :quality:<v>    hash of counters joined from feedback
--   :feedback       hash: joined, repeated, unknown
--   :stats:<v>      hash: requests, errors, run_us, queue_us (per version)

local WEIGHT_TOTAL = 10000      -- split weights are parts of 10000 (0.01%)
local LIVE_WORKER_MS = 10000    -- a worker silent this long no longer holds up a swap
local DEFAULT_LOG_TTL_MS = 24 * 3600 * 1000

-- Every alias of the model, committed or pending (a set, so no Function scans keys).
local function alias_names(base) return redis.call('SMEMBERS', base .. ':alias_names') end

local function check_alias(alias)
  if type(alias) ~= 'string' or #alias == 0 or #alias > 64 or not string.match(alias, '^[%a_][%w_.%-]*$')
      or string.lower(alias) == 'latest' then
    fail('EARGS', 'alias must be 1-64 characters of letters, digits, _ . - starting with a letter, not latest (got '
      .. tostring(alias) .. ')')
  end
end

-- "3" or "3=9000,4=1000": versions that exist, weights that add up to 10000.
-- Returns the arms in order ({version, weight}...) and the canonical text.
local function parse_arms(base, name, spec)
  if type(spec) ~= 'string' or spec == '' then fail('EARGS', 'alias spec is empty') end
  local arms, total, seen = {}, 0, {}
  for part in string.gmatch(spec, '[^,]+') do
    local v, w = string.match(part, '^(%d+)=(%d+)$')
    if not v then v, w = string.match(part, '^(%d+)$'), tostring(WEIGHT_TOTAL) end
    if not v then fail('EARGS', 'alias spec ' .. spec .. ' must be VERSION or VERSION=WEIGHT,... (weights of 10000)') end
    v = tostring(to_int(v, 'version', 1))
    w = to_int(w, 'weight', 0, WEIGHT_TOTAL)
    if seen[v] then fail('EARGS', 'version ' .. v .. ' appears twice in ' .. spec) end
    seen[v] = true
    if redis.call('EXISTS', base .. ':v:' .. v) == 0 then
      fail('EMODEL', 'model ' .. name .. ' has no version ' .. v)
    end
    arms[#arms + 1] = {v, w}
    total = total + w
  end
  if total ~= WEIGHT_TOTAL then fail('EARGS', 'weights in ' .. spec .. ' add up to ' .. total .. ', not 10000') end
  local text = {}
  for _, arm in ipairs(arms) do text[#text + 1] = arm[1] .. '=' .. arm[2] end
  return arms, table.concat(text, ',')
end

local function arms_of(text)
  local arms = {}
  for v, w in string.gmatch(text or '', '(%d+)=(%d+)') do arms[#arms + 1] = {v, tonumber(w)} end
  return arms
end

local function hgetall_map(key)
  local flat = redis.call('HGETALL', key)
  local m = {}
  for j = 1, #flat, 2 do m[flat[j]] = flat[j + 1] end
  return m
end

local function audit(base, alias, event, from, to, by, epoch, why)
  record(base, {'alias', alias, 'event', event, 'from', from or '', 'to', to or '', 'by', by or '',
                'epoch', epoch, 'why', why or ''})
end

-- Versions every live worker of the model has warmed (and that they are
-- warm since the change was asked for).
local function all_warm(base, arms, since)
  local now = now_ms()
  local workers = hgetall_map(base .. ':workers')
  for consumer, seen in pairs(workers) do
    if now - tonumber(seen) <= LIVE_WORKER_MS then
      for _, arm in ipairs(arms) do
        if arm[2] > 0 then
          local warmed = redis.call('HGET', base .. ':warm:' .. arm[1], consumer)
          if not warmed or tonumber(warmed) < since then return false end
        end
      end
    end
  end
  return true
end

local function stats_of(base, version)
  local s = hgetall_map(base .. ':stats:' .. version)
  return tonumber(s.requests or '0'), tonumber(s.errors or '0'), tonumber(s.run_us or '0')
end

-- Make the pending spec the alias's spec (one new decision); the guard's
-- baseline starts now.
local function commit(base, name, alias, a, by, region)
  local from, to = a.spec or '', a.pending
  by = by or a.pending_by or ''
  local arms = arms_of(to)
  a.spec, a.ms, a.by = to, now_ms(), by
  a.pending, a.pending_ms, a.pending_by = nil, nil, nil
  if a.guard_max_error_ppm and #arms > 1 then
    local req, err, run = stats_of(base, arms[#arms][1])
    local c_req, c_err = stats_of(base, arms[1][1])
    a.state, a.guard_since_ms = 'baking', now_ms()
    a.guard_base, a.guard_control_base = req .. ',' .. err .. ',' .. run, c_req .. ',' .. c_err
  else
    a.state = 'active'
  end
  local epoch = alias_put(base, alias, a, region)
  audit(base, alias, 'commit', from, to, by, epoch, '')
  redis.call('PUBLISH', MODELS_CHANNEL, name)
  return epoch
end

local function try_commit(base, name, alias, region)
  local a = alias_get(base, alias)
  if not a or not a.pending then return false end
  if not all_warm(base, arms_of(a.pending), tonumber(a.pending_ms)) then return false end
  commit(base, name, alias, a, nil, region)
  return true
end

local function alias_writes(base, name, alias)
  may('write the alias', 'HSET', alias_key(base, alias), 'f', 'v')
  may('prune its old decisions', 'HDEL', alias_key(base, alias), 'f')
  may('list the alias', 'SADD', base .. ':alias_names', 'f')
  may('audit the change', 'XADD', base .. ':audit', '*', 'f', 'v')
  may('publish the notice', 'PUBLISH', MODELS_CHANNEL, name)
end

-- MODELALIAS name SET alias spec [SHADOW version share_ppm] [GUARD max_error_ppm
--   min_requests window_ms] [LOGTTL ms] [BY who] [NOWARM] [REGION n]
-- MODELALIAS name DEL alias [BY who] [REGION n]
-- MODELALIAS name COMMIT alias [REGION n]  (commit a pending change if it is warm now)
-- SET takes effect once every live worker of the model has the versions loaded
-- and warmed (reply {'pending', epoch}), or at once when none is live, with
-- NOWARM, or when only the shadow or guard changes ({'active', epoch}).
local function modelalias(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local base = model_base(name)
  local op, alias = upper(args[1]), args[2]
  check_alias(alias)
  alias_writes(base, name, alias)
  if op == 'SET' then
    local arms, text = parse_arms(base, name, args[3])
    local set = {pending = text, pending_ms = now_ms()}
    local by, nowarm, region = '', false, 0
    local i = 4
    while i <= #args do
      local u = upper(args[i])
      if u == 'SHADOW' then
        local v = tostring(to_int(args[i + 1], 'SHADOW version', 0))
        local share = to_int(args[i + 2], 'SHADOW share (parts per million)', 0, 1000000)
        if v ~= '0' and redis.call('EXISTS', base .. ':v:' .. v) == 0 then
          fail('EMODEL', 'model ' .. name .. ' has no version ' .. v)
        end
        set.shadow, set.shadow_ppm = v, share
        i = i + 3
      elseif u == 'GUARD' then
        set.guard_max_error_ppm = to_int(args[i + 1], 'GUARD max error rate (ppm)', 0, 1000000)
        set.guard_min_requests = to_int(args[i + 2], 'GUARD min requests', 1)
        set.guard_window_ms = to_int(args[i + 3], 'GUARD window ms', 1)
        i = i + 4
      elseif u == 'LOGTTL' then set.log_ttl_ms = to_int(args[i + 1], 'LOGTTL', 0, MAX_TTL_MS); i = i + 2
      elseif u == 'BY' then by = check_by(args[i + 1] or ''); i = i + 2
      elseif u == 'NOWARM' then nowarm = true; i = i + 1
      elseif u == 'REGION' then region = region_index(args[i + 1]); i = i + 2
      else fail('EARGS', 'MODELALIAS SET option ' .. tostring(args[i]) .. ' is unknown') end
    end
    set.pending_by = by
    local before, before_epoch = alias_get(base, alias)
    local a = {}
    for k, v in pairs(before or {}) do a[k] = v end
    for k, v in pairs(set) do a[k] = v end
    redis.call('SADD', base .. ':alias_names', alias)
    audit(base, alias, 'set', before and before.spec, text, by, before_epoch, nowarm and 'nowarm' or '')
    if (before and before.spec == text) or nowarm or all_warm(base, arms, set.pending_ms) then
      return {'active', commit(base, name, alias, a, by, region)}
    end
    local epoch = alias_put(base, alias, a, region)
    redis.call('PUBLISH', MODELS_CHANNEL, name)  -- workers warm what it names
    return {'pending', epoch}
  end
  local by, region = '', 0
  local i = 3
  while i <= #args do
    local u = upper(args[i])
    if u == 'BY' and op == 'DEL' then by = check_by(args[i + 1] or ''); i = i + 2
    elseif u == 'REGION' then region = region_index(args[i + 1]); i = i + 2
    else fail('EARGS', 'MODELALIAS ' .. op .. ' option ' .. tostring(args[i]) .. ' is unknown') end
  end
  if op == 'COMMIT' then
    local a, epoch = alias_get(base, alias)
    if not a then fail('EMODEL', 'model ' .. name .. ' has no alias ' .. alias) end
    if a.pending and try_commit(base, name, alias, region) then
      a, epoch = alias_get(base, alias)
    end
    return {a.pending and 'pending' or 'active', epoch}
  elseif op == 'DEL' then
    local a, epoch = alias_get(base, alias)
    if not a then fail('EMODEL', 'model ' .. name .. ' has no alias ' .. alias) end
    -- a tombstone decision, so a concurrent older decision elsewhere cannot revive it
    epoch = alias_put(base, alias, {deleted = 1, by = by, ms = now_ms()}, region)
    audit(base, alias, 'delete', a.spec, '', by, epoch, '')
    redis.call('PUBLISH', MODELS_CHANNEL, name)
    return 1
  end
  fail('EARGS', 'MODELALIAS takes SET, COMMIT or DEL')
end

-- The alias entries of the audit, newest first: the stream also holds store,
-- delete, read and load entries, which HISTORY skips (looking at most at
-- AUDIT_MAXLEN entries, so no call holds Redis for long).
local function alias_history(base, count)
  local out, from, seen = {}, '+', 0
  while #out < count and seen < AUDIT_MAXLEN do
    local page = redis.call('XREVRANGE', base .. ':audit', from, '-', 'COUNT', 256)
    for _, entry in ipairs(page) do
      if entry[2][1] == 'alias' and #out < count then out[#out + 1] = entry end
    end
    seen = seen + #page
    if #page < 256 then break end
    from = '(' .. page[#page][1]
  end
  return out
end

-- MODELAUDIT name [COUNT n]: the model's audit, every event, newest first.
local function modelaudit(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local count = 100
  if args[1] ~= nil then
    if upper(args[1]) ~= 'COUNT' or #args ~= 2 then fail('EARGS', 'MODELAUDIT takes only COUNT n') end
    count = to_int(args[2], 'COUNT', 1, AUDIT_MAXLEN)
  end
  return redis.call('XREVRANGE', model_base(name) .. ':audit', '+', '-', 'COUNT', count)
end

-- MODELALIASGET name [alias] | name HISTORY [count]: one alias's record (a flat
-- field/value list), every alias (alias, record, ...), or the audit, newest first.
-- An alias record as the field/value list the SDK reads (client/protocol/aliases.py).
local function flat_record(a)
  local flat = {}
  for k, v in pairs(a) do
    flat[#flat + 1] = k
    flat[#flat + 1] = tostring(v)
  end
  return flat
end

local function modelaliasget(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local base = model_base(name)
  if upper(args[1]) == 'HISTORY' then
    local count = args[2] and to_int(args[2], 'count', 1, AUDIT_MAXLEN) or 100
    return alias_history(base, count)
  end
  if args[1] then
    check_alias(args[1])
    local a = alias_get(base, args[1])
    if not a then fail('EMODEL', 'model ' .. name .. ' has no alias ' .. args[1]) end
    return flat_record(a)
  end
  local out = {}
  for _, alias in ipairs(alias_names(base)) do
    local a = alias_get(base, alias)
    if a then
      out[#out + 1] = alias
      out[#out + 1] = flat_record(a)
    end
  end
  return out
end

-- A guard whose canary (the last arm) breached its error bound is rolled back
-- to the control (the first arm); past the window without a breach it is baked.
local function check_guard(base, name, alias, a, now, region)
  if not a or a.state ~= 'baking' or not a.spec then return end
  local arms = arms_of(a.spec)
  if #arms < 2 then return end
  local canary, control = arms[#arms][1], arms[1][1]
  local req, err = stats_of(base, canary)
  local b_req, b_err = string.match(a.guard_base or '0,0', '^(%d+),(%d+)')
  req, err = req - tonumber(b_req), err - tonumber(b_err)
  local bound = tonumber(a.guard_max_error_ppm)
  if req >= tonumber(a.guard_min_requests) and err * 1000000 > bound * req then
    local from = a.spec
    a.spec, a.state, a.ms, a.by = control .. '=' .. WEIGHT_TOTAL, 'rolled back', now, 'canary guard'
    local epoch = alias_put(base, alias, a, region)
    audit(base, alias, 'rollback', from, a.spec, 'canary guard', epoch,
      string.format('version %s: %d errors in %d requests, above %d ppm', canary, err, req, bound))
    redis.call('PUBLISH', MODELS_CHANNEL, name)
  elseif now - tonumber(a.guard_since_ms) >= tonumber(a.guard_window_ms) then
    a.state = 'baked'
    local epoch = alias_put(base, alias, a, region)
    audit(base, alias, 'baked', a.spec, a.spec, 'canary guard', epoch,
      string.format('version %s: %d errors in %d requests', canary, err, req))
  end
end

local STATS_FIELDS = {'requests', 'errors', 'run_us', 'queue_us'}
-- What one worker flush may add to a counter: far more than 2 s of serving can
-- count (run_us and queue_us included), and small enough to stay exact integers.
local MAX_FLUSH_COUNT = 1e15

local function check_consumer(consumer)
  if type(consumer) ~= 'string' or #consumer == 0 or #consumer > 256 then
    fail('EARGS', 'the consumer name must be 1-256 bytes, got ' .. tostring(consumer))
  end
end

local function add_stats(key, counts, now)
  for j, field in ipairs(STATS_FIELDS) do redis.call('HINCRBY', key, field, string.format('%d', counts[j])) end
  redis.call('HSET', key, 'last_ms', now)
end

-- _INFERIS_STATS name consumer region [version requests errors run_us queue_us]...:
-- a worker's counters since its last flush (per version and per model), its
-- heartbeat for the model, then the model's canary guards and pending swaps.
local function workerstats(keys, args)
  local name, consumer = model_name(keys[1]), args[1]
  check_name(name)
  check_consumer(consumer)
  local base = model_base(name)
  local region = region_index(args[2])
  -- every row is read before anything is written
  local rows, total = {}, {0, 0, 0, 0}
  local i = 3
  while i + 4 <= #args do
    local counts = {}
    for j = 1, 4 do counts[j] = to_int(args[i + j], 'count', 0, MAX_FLUSH_COUNT) end
    rows[#rows + 1] = {tostring(to_int(args[i], 'version', 1)), counts}
    for j = 1, 4 do total[j] = total[j] + counts[j] end
    i = i + 5
  end
  local now = now_ms()
  redis.call('HSET', base .. ':workers', consumer, now)
  for _, row in ipairs(rows) do add_stats(base .. ':stats:' .. row[1], row[2], now) end
  if total[1] > 0 then add_stats(base .. ':stats', total, now) end
  for _, alias in ipairs(alias_names(base)) do
    check_guard(base, name, alias, alias_get(base, alias), now, region)
  end
  return 1
end

-- _INFERIS_WARMED name consumer region version...: this worker has them loaded and
-- warmed; commits every pending change of the model that is warm everywhere now.
local function warmed(keys, args)
  local name, consumer = model_name(keys[1]), args[1]
  check_name(name)
  check_consumer(consumer)
  local base = model_base(name)
  local region = region_index(args[2])
  local now = now_ms()
  redis.call('HSET', base .. ':workers', consumer, now)
  for j = 3, #args do redis.call('HSET', base .. ':warm:' .. args[j], consumer, now) end
  local committed = 0
  for _, alias in ipairs(alias_names(base)) do
    if try_commit(base, name, alias, region) then committed = committed + 1 end
  end
  return committed
end

-- _INFERIS_LOADED name by [version digest]...: a worker (by: its ACL user and
-- consumer name) loaded these versions; one 'load' entry each in the audit.
local function loaded(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local base = model_base(name)
  local by = check_by(args[1] or '')
  local i = 2
  while args[i + 1] ~= nil do
    record(base, {'event', 'load', 'version', tostring(to_int(args[i], 'version', 1)),
                  'digest', args[i + 1], 'by', by})
    i = i + 2
  end
  return 1
end

-- A number feedback can count with: tonumber also takes nan and inf.
local function finite(s)
  local n = tonumber(s)
  if n and n == n and n ~= math.huge and n ~= -math.huge then return n end
  return nil
end

local LOG_KINDS = {classification = true, regression = true}

local function finite_list(text)
  for x in string.gmatch(text, '[^,]+') do
    if not finite(x) then return false end
  end
  return true
end

-- _INFERIS_LOG name ttl_ms [rid version kind pred proba]...: the prediction log
-- feedback joins to (proba: the probabilities as text, or ''). A row feedback
-- could not score (a prediction that is not a finite number: a NaN output) is
-- not logged, and probabilities that are not all finite are left out.
local function predlog(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local base = model_base(name)
  local ttl = to_int(args[1], 'ttl', 1, MAX_TTL_MS)
  local i = 2
  while i + 4 <= #args + 1 and args[i + 4] ~= nil do
    local rid, v, kind, pred, proba = args[i], args[i + 1], args[i + 2], args[i + 3], args[i + 4]
    local key = base .. ':p:' .. rid
    if #rid > 0 and #rid <= 128 and #v <= 16 and string.match(v, '^[1-9]%d*$') and LOG_KINDS[kind]
        and finite(pred) and redis.call('EXISTS', key) == 0 then
      if not finite_list(proba) then proba = '' end
      redis.call('HSET', key, 'v', v, 'kind', kind, 'pred', pred, 'proba', proba)
      redis.call('PEXPIRE', key, ttl)
    end
    i = i + 5
  end
  return 1
end

-- What a quality counter may reach (below 2^63, Redis's limit, with room for
-- the precision a double loses there).
local MAX_COUNTER = 2 ^ 62

-- MODELFEEDBACK name rid truth: join the ground truth of one request to what
-- answered it. Returns {status, version}: joined, repeated (nothing changes),
-- or unknown (not in the log: never logged, or expired).
local function modelfeedback(keys, args)
  local name, rid, truth = model_name(keys[1]), args[1], tonumber(args[2])
  check_name(name)
  if type(rid) ~= 'string' or #rid == 0 or #rid > 128 then fail('EARGS', 'MODELFEEDBACK needs a request id') end
  if not truth or truth ~= truth or truth == math.huge or truth == -math.huge then
    fail('EARGS', 'truth must be a finite number, got ' .. tostring(args[2]))
  end
  local base = model_base(name)
  may('count the feedback', 'HINCRBY', base .. ':feedback', 'f', '1')
  may('join it', 'HINCRBY', base .. ':quality:1', 'f', '1')
  local key = base .. ':p:' .. rid
  local p = hgetall_map(key)
  if not p.v then
    redis.call('HINCRBY', base .. ':feedback', 'unknown', 1)
    return {'unknown', 0}
  end
  if p.fb then
    redis.call('HINCRBY', base .. ':feedback', 'repeated', 1)
    return {'repeated', tonumber(p.v)}
  end
  local q = base .. ':quality:' .. p.v
  local pred = finite(p.pred)
  -- The counters are Redis integers. Each addition is worked out and checked
  -- first: HINCRBY refuses a number Lua would send as a float (1e+17), and a
  -- refusal half way would leave the join counted in part.
  local adds = {{'n', 1}}
  if p.kind == 'classification' then
    if pred == truth then adds[#adds + 1] = {'correct', 1} end
    if p.proba and p.proba ~= '' then
      local probs = {}
      for x in string.gmatch(p.proba, '[^,]+') do probs[#probs + 1] = finite(x) or false end
      local pt = probs[math.floor(truth) + 1]
      if pt then
        adds[#adds + 1] = {'logloss_e6', math.floor(-math.log(math.max(pt, 1e-15)) * 1000000 + 0.5)}
        adds[#adds + 1] = {'logloss_n', 1}
      end
    end
  else
    local e = (pred or 0 / 0) - truth
    adds[#adds + 1] = {'abs_err_e6', math.floor(math.abs(e) * 1000000 + 0.5)}
    adds[#adds + 1] = {'sq_err_e6', math.floor(e * e * 1000000 + 0.5)}
  end
  for _, add in ipairs(adds) do
    local sum = (tonumber(redis.call('HGET', q, add[1]) or '0') or 0) + add[2]
    if not (math.abs(add[2]) <= MAX_COUNTER and math.abs(sum) <= MAX_COUNTER) then
      fail('EARGS', 'truth ' .. args[2] .. ' for request ' .. rid .. ' (prediction ' .. tostring(p.pred)
        .. ') would take ' .. add[1] .. ' of version ' .. p.v .. ' past what a counter holds; nothing was written')
    end
  end
  redis.call('HSET', key, 'fb', args[2])
  for _, add in ipairs(adds) do redis.call('HINCRBY', q, add[1], string.format('%d', add[2])) end
  redis.call('HSET', q, 'kind', p.kind or '')
  redis.call('HINCRBY', base .. ':feedback', 'joined', 1)
  return {'joined', tonumber(p.v)}
end

-- MODELQUALITY name: per version (version, quality counters, stats counters,
-- ...), the feedback counts, and shadow agreement per pair ('primary:shadow',
-- counters, ...), for ranking (client/quality.py).
local function modelquality(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local base = model_base(name)
  local out = {}
  for _, v in ipairs(redis.call('ZRANGE', base .. ':versions', 0, -1)) do
    out[#out + 1] = v
    out[#out + 1] = redis.call('HGETALL', base .. ':quality:' .. v)
    out[#out + 1] = redis.call('HGETALL', base .. ':stats:' .. v)
  end
  local pairs_out = {}
  for _, pair in ipairs(redis.call('SMEMBERS', base .. ':shadow_pairs')) do
    pairs_out[#pairs_out + 1] = pair
    pairs_out[#pairs_out + 1] = redis.call('HGETALL', base .. ':shadow:' .. pair)
  end
  return {out, redis.call('HGETALL', base .. ':feedback'), pairs_out}
end

-- _INFERIS_SHADOW name primary shadow compared agreed max_diff: agreement of a
-- shadow version with the primary, per pair (max_diff: the largest absolute
-- difference of their outputs).
local function shadowed(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local pair = tostring(to_int(args[1], 'primary', 1)) .. ':' .. tostring(to_int(args[2], 'shadow', 1))
  local key = model_base(name) .. ':shadow:' .. pair
  local compared = to_int(args[3], 'compared', 0, MAX_FLUSH_COUNT)
  local agreed = to_int(args[4], 'agreed', 0, MAX_FLUSH_COUNT)
  redis.call('SADD', model_base(name) .. ':shadow_pairs', pair)
  redis.call('HINCRBY', key, 'compared', string.format('%d', compared))
  redis.call('HINCRBY', key, 'agreed', string.format('%d', agreed))
  local diff = tonumber(args[5]) or 0
  if diff > tonumber(redis.call('HGET', key, 'max_diff') or '-1') then
    redis.call('HSET', key, 'max_diff', string.format('%.9g', diff))
  end
  return 1
end

-- drift: histograms per version, column and time window (client/drift.py)
--   :drift:<v>:edges   hash: column -> "lo,hi" (fixed the first time, HSETNX)
--   :drift:<v>:w:<id>  hash: "column:bin" -> count, for window <id> (expires)
--   :drift:<v>:windows sorted set of window ids; :drift:<v>:ref the reference id

-- _INFERIS_EDGES name version [column lo hi]...: propose edges; returns the
-- edges that hold (the first proposal of each column wins, on every worker).
local function driftedges(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local key = model_base(name) .. ':drift:' .. tostring(to_int(args[1], 'version', 1)) .. ':edges'
  local i = 2
  while args[i + 2] ~= nil do
    redis.call('HSETNX', key, args[i], args[i + 1] .. ',' .. args[i + 2])
    i = i + 3
  end
  return redis.call('HGETALL', key)
end

-- _INFERIS_DRIFT name version window ttl_ms keep_from [column counts_csv]...:
-- add a worker's counts to a window; the first window of a version is its
-- reference; windows before keep_from are forgotten.
local function driftcounts(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local v = tostring(to_int(args[1], 'version', 1))
  local window = to_int(args[2], 'window', 0)
  local ttl = to_int(args[3], 'ttl', 1, MAX_TTL_MS)
  local keep_from = to_int(args[4], 'keep_from', 0)
  local base = model_base(name) .. ':drift:' .. v
  local key = base .. ':w:' .. window
  local adds = {}  -- every count is read before anything is written
  local i = 5
  while args[i + 1] ~= nil do
    local bin = 0
    for count in string.gmatch(args[i + 1], '[^,]+') do
      if count ~= '0' then adds[#adds + 1] = {args[i] .. ':' .. bin, to_int(count, 'count', 0, MAX_FLUSH_COUNT)} end
      bin = bin + 1
    end
    i = i + 2
  end
  for _, add in ipairs(adds) do redis.call('HINCRBY', key, add[1], string.format('%d', add[2])) end
  redis.call('PEXPIRE', key, ttl)
  redis.call('ZADD', base .. ':windows', window, window)
  redis.call('ZREMRANGEBYSCORE', base .. ':windows', '-inf', '(' .. keep_from)
  redis.call('SETNX', base .. ':ref', window)
  return 1
end

-- MODELDRIFT name version [REF window] [CUR window]: the edges, the reference
-- and current window ids (default: the version's first and its latest), their
-- counts, and the window ids kept.
local function modeldrift(keys, args)
  local name = model_name(keys[1])
  check_name(name)
  local base = model_base(name) .. ':drift:' .. tostring(to_int(args[1], 'version', 1))
  local ref = redis.call('GET', base .. ':ref')
  local latest = redis.call('ZRANGE', base .. ':windows', -1, -1)
  local cur = latest[1]
  local i = 2
  while args[i] ~= nil do
    local u = upper(args[i])
    if u == 'REF' then ref = tostring(to_int(args[i + 1], 'REF window', 0))
    elseif u == 'CUR' then cur = tostring(to_int(args[i + 1], 'CUR window', 0))
    else fail('EARGS', 'MODELDRIFT option ' .. tostring(args[i]) .. ' is unknown') end
    i = i + 2
  end
  if not ref or not cur then return {{}, '', '', {}, {}, {}} end
  return {redis.call('HGETALL', base .. ':edges'), ref, cur, redis.call('HGETALL', base .. ':w:' .. ref),
          redis.call('HGETALL', base .. ':w:' .. cur), redis.call('ZRANGE', base .. ':windows', 0, -1)}
end

---------------------------------------------------------------------------
-- runs: both forms write one stream entry (docs/PROTOCOL.md §5)
--   t0, reply, n, q (msgpack array of request records), @<key> per input passed by key

local function check_stream(stream)
  local t = redis.call('TYPE', stream)['ok']
  if t ~= 'none' and t ~= 'stream' then
    fail('EARGS', stream .. ' holds a ' .. t .. ', not a request stream')
  end
end

local function check_reply(reply, base, stream)
  if reply == '' then return end
  local t = redis.call('TYPE', reply)['ok']
  if t ~= 'none' and t ~= 'stream' then
    fail('EARGS', 'REPLYTO ' .. reply .. ' holds a ' .. t .. ', not a stream')
  end
  if request_base(reply) ~= base then
    fail('EARGS', 'REPLYTO ' .. reply .. ' must share the hash tag of ' .. stream)
  end
end

-- The caller a reply stream names: {T}:replies:<client id>, where a client id
-- is <caller>-<random hex> (the SDK's caller=) or just random (each client its
-- own caller). An ACL pattern on reply streams (~{inferis:*}:replies:app-*)
-- makes the name the user's own. nil: no reply stream, no per-caller count.
local function caller_of(reply)
  local id = string.match(reply or '', ':replies:(.+)$')
  if not id then return nil end
  return string.match(id, '^(.+)%-%x+$') or id
end

-- Back-pressure and the count of requests queued or running, per partition and
-- per caller: refuse at once rather than let latency grow without bound.
-- Per-caller counts are fields c:<caller> of :config (a declared key).
local function admit(stream, config, n, caller)
  may('count the queue', 'HINCRBY', config, 'queued', '1')
  may('enqueue', 'XADD', stream, '*', 'f', 'v')
  local cfg = redis.call('HMGET', config, 'max_queue', 'queued')
  -- The bounds live in :limits, which callers may read but only operators write
  -- (callers must be able to write :config, for the counts); :config's own
  -- max_queue is still honoured where :limits has none.
  -- pcall: :limits is not among the call's KEYS, and while its slot migrates a key
  -- absent here cannot be read; the call goes on with :config's bound then.
  local limits = redis.pcall('HMGET', request_base(stream) .. ':limits', 'max_queue',
                             'max_queue_per_caller')
  if type(limits) ~= 'table' or limits.err then limits = {} end
  local max_queue = tonumber(limits[1] or cfg[1] or '0') or 0
  local per_caller = tonumber(limits[2] or '0') or 0
  local queued = tonumber(cfg[2] or '0') or 0
  if queued ~= 0 and redis.call('XLEN', stream) == 0 then
    queued = 0  -- nothing is left in the stream: whatever the counts say, nothing is queued
    redis.call('HSET', config, 'queued', 0)
    for _, field in ipairs(redis.call('HKEYS', config)) do
      if string.sub(field, 1, 2) == 'c:' then redis.call('HDEL', config, field) end
    end
  end
  if max_queue > 0 and queued >= max_queue then
    fail('EBUSY', 'queue ' .. stream .. ' holds ' .. queued .. ' requests (max_queue '
      .. max_queue .. '); retry later')
  end
  if caller then
    local mine = tonumber(redis.call('HGET', config, 'c:' .. caller) or '0') or 0
    if per_caller > 0 and mine + n > per_caller then
      fail('EBUSY', 'caller ' .. caller .. ' has ' .. mine .. ' requests queued on ' .. stream
        .. ' (max_queue_per_caller ' .. per_caller .. '); retry later')
    end
    redis.call('HINCRBY', config, 'c:' .. caller, n)
  end
  redis.call('HINCRBY', config, 'queued', n)
end

-- An input passed by key, read as the caller: its value when small, a marker otherwise.
local function read_ref(key)
  local ok, n = pcall(redis.call, 'STRLEN', key)
  if not ok then return REF_NOT_STRING end
  if n == 0 then return REF_MISSING end
  if n > INLINE_LIMIT then return REF_LARGE end
  return redis.call('GET', key)
end

local function append_entry(stream, reply, n, records, refs)
  local fields = {'t0', now_ms(), 'reply', reply, 'n', n, 'q', records}
  for key, value in pairs(refs) do
    fields[#fields + 1] = '@' .. key
    fields[#fields + 1] = value
  end
  return redis.call('XADD', stream, '*', unpack(fields))
end

-- MODELRUN stream inkey... outkey... MODEL name [VERSION v] INPUTS n [OUTPUTS m]
--   [INNAMES name...] [OUTNAMES name...] [DATA i encoded]... [TIMEOUT ms] [TTL ms]
--   [REPLYTO stream] [ID rid] [EPHEMERAL] [UNIT key]
-- One request, validated in full before anything is written; the form redis-cli
-- users type. Returns {rid, entry id, reply key, output key or output key prefix...}.
local function modelrun(keys, args)
  local stream = keys[1]
  if not stream then fail('EARGS', 'MODELRUN needs the request stream as its first key') end
  local r = {version = '', n_in = nil, n_out = 0, innames = {}, outnames = {}, data = {},
             timeout = DEFAULT_TIMEOUT_MS, ttl = DEFAULT_TTL_MS, reply = '', rid = nil}
  local i = 1
  while i <= #args do
    local u = upper(args[i])
    if u == 'MODEL' then r.model = args[i + 1]; i = i + 2
    elseif u == 'VERSION' then r.version = args[i + 1] or ''; i = i + 2
    elseif u == 'INPUTS' then r.n_in = to_int(args[i + 1], 'INPUTS', 0, 1000); i = i + 2
    elseif u == 'OUTPUTS' then r.n_out = to_int(args[i + 1], 'OUTPUTS', 0, 1000); i = i + 2
    elseif u == 'INNAMES' or u == 'OUTNAMES' then
      if not r.n_in then fail('EARGS', u .. ' must follow INPUTS and OUTPUTS') end
      local n = (u == 'INNAMES') and r.n_in or r.n_out
      local list = (u == 'INNAMES') and r.innames or r.outnames
      for j = 1, n do
        if args[i + j] == nil then fail('EARGS', u .. ' needs ' .. n .. ' names') end
        list[j] = args[i + j]
      end
      i = i + n + 1
    elseif u == 'DATA' then
      local idx = to_int(args[i + 1], 'DATA index', 1, 1000)
      if args[i + 2] == nil then fail('EARGS', 'DATA takes index value') end
      r.data[idx] = args[i + 2]; i = i + 3
    elseif u == 'TIMEOUT' then r.timeout = to_int(args[i + 1], 'TIMEOUT', 1, MAX_TIMEOUT_MS); i = i + 2
    elseif u == 'TTL' then r.ttl = to_int(args[i + 1], 'TTL', 0, MAX_TTL_MS); i = i + 2
    elseif u == 'REPLYTO' then r.reply = args[i + 1] or ''; i = i + 2
    elseif u == 'ID' then r.rid = args[i + 1]; i = i + 2
    elseif u == 'EPHEMERAL' then r.ephemeral = true; i = i + 1
    elseif u == 'UNIT' then r.unit = args[i + 1]; i = i + 2
    else fail('EARGS', 'MODELRUN option ' .. tostring(args[i]) .. ' is unknown') end
  end
  check_name(r.model)
  if not r.n_in then fail('EARGS', 'MODELRUN needs INPUTS n') end
  if #keys ~= 1 + r.n_in + r.n_out then
    fail('EARGS', 'MODELRUN declares ' .. (#keys - 1) .. ' tensor keys but INPUTS + OUTPUTS is ' .. (r.n_in + r.n_out))
  end
  for idx, _ in pairs(r.data) do
    if idx > r.n_in then fail('EARGS', 'DATA index ' .. idx .. ' is beyond INPUTS ' .. r.n_in) end
  end
  if r.rid ~= nil and (#r.rid == 0 or #r.rid > 64 or not string.match(r.rid, '^[%w_.%-]+$')) then
    fail('EARGS', 'ID must be 1-64 characters of letters, digits, _ . -')
  end
  check_stream(stream)
  local base = request_base(stream)
  check_reply(r.reply, base, stream)
  if r.reply ~= '' then  -- a caller answers to its own reply stream (ACL patterns pin it)
    may('read answers on ' .. r.reply, 'XREAD', 'STREAMS', r.reply, '0')
  end

  -- One request lives in one slot: Cluster enforces it, and so do we everywhere.
  for j = 2, #keys do
    if request_base(keys[j]) ~= base then
      fail('EARGS', 'key ' .. keys[j] .. ' must share the hash tag ' .. base .. ' of ' .. stream)
    end
  end
  for j = 1, r.n_out do check_writable(keys[1 + r.n_in + j]) end

  -- Validate every input before writing anything.
  local refs, ins = {}, {}
  for j = 1, r.n_in do
    local key = keys[1 + j]
    local what = 'input ' .. j .. ' (' .. key .. ')'
    local name = r.innames[j] or ''
    if r.data[j] then
      parse_tensor(r.data[j], what)
      check_writable(key)
      if #r.data[j] <= INLINE_LIMIT then ins[j] = {name, key, r.data[j]}
      else ins[j] = {name, key}; refs[key] = REF_LARGE end
    else
      local value = read_ref(key)
      if value == REF_NOT_STRING then fail('EINPUT', what .. ' is not a string key holding a tensor') end
      if value == REF_MISSING then fail('EINPUT', what .. ' does not exist') end
      if value ~= REF_LARGE then parse_tensor(value, what) end
      ins[j] = {name, key}
      refs[key] = value
    end
  end
  for j = 1, r.n_in do
    if r.data[j] and not (r.ephemeral and #r.data[j] <= INLINE_LIMIT) then
      may('keep the input', 'SET', keys[1 + j], 'x')
    end
  end
  admit(stream, base .. ':config', 1, caller_of(r.reply))

  for j = 1, r.n_in do
    -- EPHEMERAL: an input that travels inside the entry is not also kept as a key.
    local value = r.data[j]
    if value and not (r.ephemeral and #value <= INLINE_LIMIT) then
      if r.ttl > 0 then redis.call('SET', keys[1 + j], value, 'PX', r.ttl)
      else redis.call('SET', keys[1 + j], value) end
    end
  end
  local outs = {}
  for j = 1, r.n_out do outs[j] = {r.outnames[j] or '', keys[1 + r.n_in + j]} end
  -- The id is known before XADD only when the caller gave one; otherwise it is
  -- the entry id, which the worker reads from the entry.
  local record = {id = r.rid or '', model = r.model, ver = r.version, timeout = r.timeout,
                  ttl = r.ttl, eph = r.ephemeral == true, ['in'] = ins, out = outs}
  if r.unit ~= nil then
    if #r.unit == 0 or #r.unit > 256 then fail('EARGS', 'UNIT must be 1-256 bytes') end
    record.unit = r.unit
  end
  local id = append_entry(stream, r.reply, 1, cmsgpack.pack({record}), refs)
  local rid = r.rid or id
  local reply_key = r.reply
  if reply_key == '' then reply_key = base .. ':r:' .. rid .. ':done' end
  local out = {rid, id, reply_key}
  if r.n_out == 0 then
    out[4] = base .. ':r:' .. rid .. ':out:'
  else
    for j = 1, r.n_out do out[#out + 1] = keys[1 + r.n_in + j] end
  end
  return out
end

-- MODELRUNMANY stream config reply refkey... | n records
-- Many requests of one caller in one entry (the SDK's path). The records are
-- the caller's, checked by the worker, which answers each bad one with its own
-- error; here only what the whole call shares is checked, and the inputs passed
-- by key are read as the caller. Returns the entry id.
local function modelrunmany(keys, args)
  local stream, config, reply = keys[1], keys[2], keys[3]
  if not reply then fail('EARGS', 'MODELRUNMANY needs the stream, its config and a reply stream as keys') end
  local n = to_int(args[1], 'MODELRUNMANY count', 1, MAX_CALL_REQUESTS)
  local records = args[2]
  if type(records) ~= 'string' or #records == 0 or #args ~= 2 then
    fail('EARGS', 'MODELRUNMANY takes a count and the packed request records')
  end
  check_stream(stream)
  local base = request_base(stream)
  if config ~= base .. ':config' then fail('EARGS', 'MODELRUNMANY config key must be ' .. base .. ':config') end
  if reply == '' then fail('EARGS', 'MODELRUNMANY needs a reply stream') end
  check_reply(reply, base, stream)
  local refs = {}
  for j = 4, #keys do
    if request_base(keys[j]) ~= base then
      fail('EARGS', 'key ' .. keys[j] .. ' must share the hash tag ' .. base .. ' of ' .. stream)
    end
    refs[keys[j]] = read_ref(keys[j])
  end
  admit(stream, config, n, caller_of(reply))
  return append_entry(stream, reply, n, records, refs)
end

---------------------------------------------------------------------------
-- worker side

local WRITABLE = {X = 'stream', L = 'list', S = 'string'}

-- A deployment bounds dead letters per partition with HSET {inferis:N}:limits
-- deadletter_maxlen <n>. pcall: :limits is not among the call's KEYS (as in admit).
local function deadletter_maxlen(stream)
  local n = redis.pcall('HGET', request_base(stream) .. ':limits', 'deadletter_maxlen')
  n = type(n) == 'string' and tonumber(n) or nil
  if n and n >= 1 then return math.floor(n) end
  return DEADLETTER_MAXLEN
end

-- Keep the original entry (fields prefixed req.) so it can be inspected and replayed.
local function deadletter(stream, dlq, entry_id, reason, deliveries)
  local fields = {'entry', entry_id, 'reason', reason, 'deliveries', deliveries}
  local original = redis.call('XRANGE', stream, entry_id, entry_id)
  if original[1] then
    local f = original[1][2]
    for j = 1, #f, 2 do
      fields[#fields + 1] = 'req.' .. f[j]
      fields[#fields + 1] = f[j + 1]
    end
  end
  redis.call('XADD', dlq, 'MAXLEN', '~', deadletter_maxlen(stream), '*', unpack(fields))
end

-- _INFERIS_COMPLETE stream deadletter config key... |
--   count (entry_id requests reason deliveries n_writes (op ttl value)...)...
-- Settles a whole batch in one call. Each entry is acknowledged first: if that
-- acknowledges nothing (another worker answered it, or it was dead-lettered),
-- nothing is written for it, so a request run twice is answered once. A reason
-- dead-letters the entry. Writes never abort the batch: a key holding another
-- type is skipped. Returns 1/0 per entry.
-- A settled entry's requests leave its caller's count (the entry names its reply
-- stream, hence its caller).
local function uncount_caller(stream, config, entry_id, requests)
  local entry = redis.call('XRANGE', stream, entry_id, entry_id)[1]
  if not entry then return end
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'reply' then
      local caller = caller_of(fields[j + 1])
      -- '%d': Lua sends -0 as "-0", which HINCRBY refuses
      if caller and redis.call('HINCRBY', config, 'c:' .. caller, string.format('%d', -requests)) <= 0 then
        redis.call('HDEL', config, 'c:' .. caller)
      end
      return
    end
  end
end

-- A stream entry id as XACK takes it: ms-seq, each part below 2^64.
local function is_entry_id(id)
  return type(id) == 'string' and (string.match(id, '^%d+%-%d+$') or string.match(id, '^%d+$'))
    and not string.match(id, '%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d')
end

local function key_of_type(key, want, what)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then fail('EARGS', what .. ' ' .. key .. ' holds a ' .. t .. ', not a ' .. want) end
end

-- The shape of the call is checked whole before the first XACK: a call that
-- stopped half way would leave entries acknowledged and never answered.
local function check_complete(keys, args)
  if #keys < 3 then fail('EARGS', '_INFERIS_COMPLETE needs the stream, its dead-letter stream and its config as keys') end
  key_of_type(keys[2], 'stream', 'the dead-letter stream')
  key_of_type(keys[3], 'hash', 'the config')
  local count = to_int(args[1], 'count', 0, #args)
  local k, a = 4, 2
  for _ = 1, count do
    if not is_entry_id(args[a]) then fail('EARGS', 'entry id ' .. tostring(args[a]) .. ' is not a stream entry id') end
    if args[a + 3] == nil then fail('EARGS', 'each entry takes id, requests, reason, deliveries and a write count') end
    local n_writes = to_int(args[a + 4], 'write count', 0, #keys - k + 1)
    a = a + 5
    for _ = 1, n_writes do
      if not WRITABLE[args[a]] then fail('EARGS', 'write op must be X, L or S, got ' .. tostring(args[a])) end
      to_int(args[a + 1], 'write ttl', 0, MAX_TTL_MS)
      if args[a + 2] == nil then fail('EARGS', 'a write takes op, ttl and value') end
      k, a = k + 1, a + 3
    end
  end
  return count
end

-- The requests an entry raised the queue count by: at most MAX_CALL_REQUESTS
-- at enqueue. An entry appended by hand may claim anything; it must not stop
-- the batch it is settled in.
local function entry_requests(text)
  local n = tonumber(text)
  if not n or n ~= n or n < 0 then return 0 end
  return math.min(math.floor(n), MAX_CALL_REQUESTS)
end

local function complete(keys, args)
  local stream, dlq, config = keys[1], keys[2], keys[3]
  local count = check_complete(keys, args)
  local k, a = 4, 2
  local done, answered, settled = {}, {}, 0
  for e = 1, count do
    local entry_id, requests, reason = args[a], entry_requests(args[a + 1]), args[a + 2]
    local deliveries, n_writes = args[a + 3], tonumber(args[a + 4])
    a = a + 5
    local acked = redis.call('XACK', stream, GROUP, entry_id) == 1
    if acked and reason ~= '' then deadletter(stream, dlq, entry_id, reason, deliveries) end
    for _ = 1, n_writes do
      local key, op, ttl, value = keys[k], args[a], tonumber(args[a + 1]), args[a + 2]
      k, a = k + 1, a + 3
      if acked then
        local t = redis.call('TYPE', key)['ok']
        if t == 'none' or t == WRITABLE[op] then
          if op == 'S' then
            if ttl > 0 then redis.call('SET', key, value, 'PX', ttl) else redis.call('SET', key, value) end
          else
            if op == 'X' then redis.call('XADD', key, '*', 'd', value) else redis.call('RPUSH', key, value) end
            if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
          end
        end
      end
    end
    if acked then
      done[#done + 1] = entry_id
      settled = settled + requests
      answered[e] = 1
      uncount_caller(stream, config, entry_id, requests)
    else
      answered[e] = 0
    end
  end
  if #done > 0 then
    redis.call('XDEL', stream, unpack(done))
    if redis.call('HINCRBY', config, 'queued', string.format('%d', -settled)) < 0 then
      redis.call('HSET', config, 'queued', 0)
    end
  end
  return answered
end

-- _INFERIS_PRUNE stream | min_idle_ms live_name...: forget consumers that own
-- nothing, have been silent at least min_idle_ms and are not among the live
-- names (connected workers): workers that died. Atomic, so an entry can never be
-- handed to a consumer between the look and the delete: deleting a consumer
-- that owns entries would make them unclaimable. Returns the names.
local function prune(keys, args)
  local stream = keys[1]
  if type(stream) ~= 'string' then fail('EARGS', '_INFERIS_PRUNE needs the request stream as its key') end
  local min_idle = to_int(args[1], 'min_idle_ms', 0)
  local live = {}
  for j = 2, #args do live[args[j]] = true end
  local gone = {}
  if redis.call('EXISTS', stream) == 0 then return gone end
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', stream, GROUP)
  if not ok then return gone end
  for _, c in ipairs(consumers) do
    local f = {}
    for j = 1, #c, 2 do f[c[j]] = c[j + 1] end
    if tonumber(f.pending) == 0 and tonumber(f.idle) >= min_idle and not live[f.name] then
      redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, f.name)
      gone[#gone + 1] = f.name
    end
  end
  return gone
end

local function version(keys, args) return LIB_VERSION end

redis.register_function{function_name = 'TENSORSET', callback = guarded(tensorset)}
redis.register_function{function_name = 'TENSORGET', callback = guarded(tensorget), flags = {'no-writes'}}
redis.register_function{function_name = 'MODELCHUNK', callback = guarded(modelchunk)}
redis.register_function{function_name = 'MODELSTORE', callback = guarded(modelstore)}
redis.register_function{function_name = 'MODELGET', callback = guarded(modelget), flags = {'no-writes'}}
redis.register_function{function_name = 'MODELDEL', callback = guarded(modeldel)}
redis.register_function{function_name = 'MODELEXPORT', callback = guarded(modelexport)}
redis.register_function{function_name = 'MODELAUDIT', callback = guarded(modelaudit), flags = {'no-writes'}}
redis.register_function{function_name = '_INFERIS_LOADED', callback = guarded(loaded)}
redis.register_function{function_name = 'MODELRUN', callback = guarded(modelrun)}
redis.register_function{function_name = 'MODELRUNMANY', callback = guarded(modelrunmany)}
redis.register_function{function_name = '_INFERIS_COMPLETE', callback = guarded(complete)}
redis.register_function{function_name = '_INFERIS_PRUNE', callback = guarded(prune)}
redis.register_function{function_name = 'INFERIS_VERSION', callback = version, flags = {'no-writes'}}
redis.register_function{function_name = 'MODELALIAS', callback = guarded(modelalias)}
redis.register_function{function_name = 'MODELALIASGET', callback = guarded(modelaliasget), flags = {'no-writes'}}
redis.register_function{function_name = 'MODELFEEDBACK', callback = guarded(modelfeedback)}
redis.register_function{function_name = 'MODELQUALITY', callback = guarded(modelquality), flags = {'no-writes'}}
redis.register_function{function_name = '_INFERIS_STATS', callback = guarded(workerstats)}
redis.register_function{function_name = '_INFERIS_WARMED', callback = guarded(warmed)}
redis.register_function{function_name = '_INFERIS_LOG', callback = guarded(predlog)}
redis.register_function{function_name = '_INFERIS_SHADOW', callback = guarded(shadowed)}
redis.register_function{function_name = '_INFERIS_EDGES', callback = guarded(driftedges)}
redis.register_function{function_name = '_INFERIS_DRIFT', callback = guarded(driftcounts)}
redis.register_function{function_name = 'MODELDRIFT', callback = guarded(modeldrift), flags = {'no-writes'}}
