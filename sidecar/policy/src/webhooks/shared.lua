-- The shared webhook queue of one endpoint (WebhookEndpoint with scope: Global), on Redis
-- Streams. All keys of an endpoint share a hash tag, so one script runs in one slot (Cluster).
--   KEYS[1] the stream of deliveries ready to attempt (consumer group "delivery")
--   KEYS[2] a sorted set of deliveries waiting for a retry, scored by due time (Unix ms)
--   KEYS[3] the stream of dead letters
--   KEYS[4] the idempotency key of an accept (unused otherwise)
-- ARGV[1] is the operation; entries carry fields id (msg_...), t (event type), p (payload)
-- and n (attempts made).
local op = ARGV[1]
local GROUP = 'delivery'

local function ensure_group()
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('XGROUP', 'CREATE', KEYS[1], GROUP, '0', 'MKSTREAM')
  end
end

-- {stream id, id, t, p, n, reason, dead at} for each entry of an XRANGE/XREADGROUP reply
local function flatten(entries, out)
  for _, entry in ipairs(entries) do
    local fields = {}
    local raw = entry[2]
    if raw then
      for i = 1, #raw, 2 do fields[raw[i]] = raw[i + 1] end
      table.insert(out, {entry[1], fields.id or '', fields.t or '', fields.p or '', fields.n or '0',
        fields.r or '', fields.at or '0'})
    end
  end
  return out
end

if op == 'accept' then
  -- ARGV: id, event type, payload, idempotency TTL ms (0: no key)
  if ARGV[5] ~= '0' then
    local first = redis.call('GET', KEYS[4])
    if first then return {'duplicate', first} end
    redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[5])
  end
  ensure_group()
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[2], 't', ARGV[3], 'p', ARGV[4], 'n', '0')
  return {'new', ARGV[2]}

elseif op == 'take' then
  -- ARGV: consumer, now ms, count, min idle ms. Promotes due retries, then takes entries a
  -- dead consumer left (idle longer than any attempt can last), then new ones.
  ensure_group()
  local consumer, now, count, min_idle = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
  for _, member in ipairs(due) do
    local m = cjson.decode(member)
    redis.call('XADD', KEYS[1], '*', 'id', m.id, 't', m.t, 'p', m.p, 'n', tostring(m.n))
    redis.call('ZREM', KEYS[2], member)
  end
  local out = {}
  local claimed = redis.call('XAUTOCLAIM', KEYS[1], GROUP, consumer, min_idle, '0-0', 'COUNT', count)
  flatten(claimed[2], out)
  if #out < count then
    local read = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', count - #out, 'STREAMS', KEYS[1], '>')
    if read then flatten(read[1][2], out) end
  end
  return out

elseif op == 'settle' then
  -- ARGV: stream id, outcome (delivered|retry|dead), due ms, member JSON, reason, now ms.
  -- Only the consumer that still holds the entry settles it: one whose entry was claimed
  -- by another meanwhile (it took longer than the idle bound) changes nothing.
  local acked = redis.call('XACK', KEYS[1], GROUP, ARGV[2])
  if acked == 0 then return 0 end
  redis.call('XDEL', KEYS[1], ARGV[2])
  local outcome = ARGV[3]
  if outcome == 'retry' then
    redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
  elseif outcome == 'dead' then
    local m = cjson.decode(ARGV[5])
    redis.call('XADD', KEYS[3], '*', 'id', m.id, 't', m.t, 'p', m.p, 'n', tostring(m.n), 'r', ARGV[6], 'at', ARGV[7])
  end
  return 1

elseif op == 'dead' then
  -- ARGV: start (exclusive stream id, or '-'), count
  local start = ARGV[2]
  if start ~= '-' then start = '(' .. start end
  return flatten(redis.call('XRANGE', KEYS[3], start, '+', 'COUNT', tonumber(ARGV[3])), {})

elseif op == 'replay' then
  -- ARGV: a message id to replay, or '' and the smallest id to replay (ids sort by time)
  ensure_group()
  local want, from = ARGV[2], ARGV[3]
  local replayed = {}
  for _, entry in ipairs(flatten(redis.call('XRANGE', KEYS[3], '-', '+'), {})) do
    local id = entry[2]
    if (want ~= '' and id == want) or (want == '' and id >= from) then
      redis.call('XADD', KEYS[1], '*', 'id', id, 't', entry[3], 'p', entry[4], 'n', '0')
      redis.call('XDEL', KEYS[3], entry[1])
      table.insert(replayed, id)
    end
  end
  return replayed

elseif op == 'stats' then
  -- {ready or in flight, waiting for a retry, dead letters, the oldest ready entry's id}
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  local first = ''
  if oldest[1] then first = flatten(oldest, {})[1][2] end
  return {redis.call('XLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('XLEN', KEYS[3]), first}
end
return redis.error_reply('unknown operation ' .. tostring(op))
