-- One Global quota counter: KEYS[1] holds the usage of one (quota, key, period).
-- ARGV[1] mode: 'check' charges ARGV[2] only if it fits the limit ARGV[3] (a request counts at
-- least 1 for the check, so a used-up budget refuses everything); 'add' charges ARGV[2]
-- unconditionally (bytes counted after the response); 'read' charges nothing.
-- ARGV[4]: when the counter expires, Unix milliseconds (the period's end plus slack).
-- Returns {admitted (1/0), used before, used after}.
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local mode = ARGV[1]
if mode == 'read' then
  return {1, used, used}
end
local cost = tonumber(ARGV[2])
if mode == 'check' and used + math.max(cost, 1) > tonumber(ARGV[3]) then
  return {0, used, used}
end
if cost > 0 then
  local after = redis.call('INCRBY', KEYS[1], cost)
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
  return {1, used, after}
end
return {1, used, used}
