-- Bulwark global rate limit: the algorithms of sidecar/src/ratelimit/algorithm.rs, run
-- atomically inside Redis, in microseconds (Lua numbers are doubles: whole microseconds since
-- the epoch are exact, nanoseconds are not). Read algorithm.rs for the semantics and proofs;
-- the differences are: times are whole microseconds, and TokenBucket keeps its theoretical
-- arrival time as a double (0.25 us resolution at today's dates) and admits within half a
-- microsecond (or half an emission interval, if shorter) of the exact boundary, so a burst of
-- exactly `burst` is never refused by rounding. With whole-microsecond emission intervals
-- every value is an exact integer and the results equal algorithm.rs's (tested).
--
-- KEYS[1]  the counter: one per (rule, key); every rate of the rule lives in it.
-- ARGV[1]  algorithm: T (TokenBucket), S (SlidingWindow) or F (FixedWindow)
-- ARGV[2]  cost
-- ARGV[3]  now in microseconds, or 0 for the Redis server's clock
-- ARGV[4]  1: consume `cost` unconditionally (fast-mode sync); 0: decide all-or-nothing
-- ARGV[5..] limit, window (us), burst: three per rate
--
-- Stored value: six numbers per rate, space-separated, as algorithm.rs's State words
-- [at n0 n1 n2 n3 n4] (TokenBucket: at = TAT in us, possibly fractional).
-- Reply: {allowed, index, remaining, reset_us, retry_us (-1: never), now_us, words...}
-- with the words of every rate after this call (TokenBucket TAT rounded up).

local algorithm = ARGV[1]
local cost = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local force = ARGV[4] == '1'
local SLOTS = 5
local NEVER = -1

local rates = {}
for i = 5, #ARGV, 3 do
  rates[#rates + 1] = { limit = tonumber(ARGV[i]), window = math.max(tonumber(ARGV[i + 1]), 1),
                        burst = tonumber(ARGV[i + 2]) }
end

local states = {}
local stored = redis.call('GET', KEYS[1])
local words = {}
if stored then
  for w in string.gmatch(stored, '%S+') do words[#words + 1] = tonumber(w) end
end
for r = 1, #rates do
  local s = {}
  for j = 1, 6 do s[j] = words[(r - 1) * 6 + j] or 0 end
  states[r] = s
end

local function outcome(allowed, remaining, reset, retry)
  return { allowed = allowed, remaining = math.max(remaining, 0), reset = math.max(reset, 0),
           retry = retry }
end

local function sum(counts, from)
  local total = 0
  for i = from, SLOTS do total = total + counts[i] end
  return total
end

-- Each returns the outcome and the state to store if the caller commits.
local function token_bucket(rate, s)
  local T = rate.window / rate.limit
  local tat = s[1]
  local base = math.max(tat, now)
  local ceiling = now + rate.burst * T
  -- Float rounding of TAT is below half a microsecond; never let it refuse an exact fit.
  local slack = math.min(0.5, T / 2)
  local function available(t) return math.floor((ceiling - t + slack) / T) end
  local function reset(t) return math.ceil(t - now) end
  if cost == 0 then return outcome(true, available(base), reset(base), 0), s end
  if force then
    local next = base + cost * T
    return outcome(true, available(next), reset(next), 0), { next, 0, 0, 0, 0, 0 }
  end
  local next = base + cost * T
  if next <= ceiling + slack then
    return outcome(true, available(next), reset(next), 0), { next, 0, 0, 0, 0, 0 }
  end
  local retry = NEVER
  if cost <= rate.burst then retry = math.max(math.ceil(next - rate.burst * T - slack) - now, 1) end
  return outcome(false, available(base), reset(base), retry), s
end

local function fixed_window(rate, s)
  local index = math.max(math.floor(now / rate.window), s[1])
  local used = 0
  if index == s[1] then used = s[2] end
  local reset = (index + 1) * rate.window - now
  local available = rate.limit - used
  if cost == 0 then return outcome(true, available, reset, 0), s end
  if force then
    return outcome(true, available - cost, reset, 0), { index, used + cost, 0, 0, 0, 0 }
  end
  if cost <= available then
    return outcome(true, available - cost, reset, 0), { index, used + cost, 0, 0, 0, 0 }
  end
  local retry = reset
  if cost > rate.limit then retry = NEVER end
  return outcome(false, available, reset, retry), s
end

local function sliding_window(rate, s)
  local limit = rate.limit
  local bound = limit + math.floor(limit / 4)
  local width = rate.window / 4
  local newest = math.max(math.floor(now / width), s[1])
  local by = newest - s[1]
  local counts = {}
  for i = 1, SLOTS do counts[i] = s[1 + i + by] or 0 end
  if by >= SLOTS then for i = 1, SLOTS do counts[i] = 0 end end
  -- Room under (R), the last four slots, and (A), all five, once `from` slot edges have passed.
  local function room(c, from)
    local recent = from + 2 <= SLOTS and sum(c, from + 2) or 0
    local all = from + 1 <= SLOTS and sum(c, from + 1) or 0
    return math.min(limit - recent, bound - all)
  end
  local function reset(c)
    for i = SLOTS, 1, -1 do
      if c[i] ~= 0 then return math.ceil((newest + i) * width) - now end
    end
    return 0
  end
  local function state(c) return { newest, c[1], c[2], c[3], c[4], c[5] } end
  local available = room(counts, 0)
  if cost == 0 then return outcome(true, available, reset(counts), 0), s end
  if force then
    counts[SLOTS] = counts[SLOTS] + cost
    return outcome(true, available - cost, reset(counts), 0), state(counts)
  end
  if cost <= available then
    counts[SLOTS] = counts[SLOTS] + cost
    return outcome(true, available - cost, reset(counts), 0), state(counts)
  end
  local retry = NEVER
  if cost <= limit then
    local edges = SLOTS
    for d = 1, SLOTS - 1 do
      if cost <= room(counts, d) then edges = d break end
    end
    retry = math.ceil((newest + edges) * width) - now
  end
  return outcome(false, available, reset(counts), retry), s
end

local decide = ({ T = token_bucket, S = sliding_window, F = fixed_window })[algorithm]

-- algorithm.rs's more_restrictive.
local function more_restrictive(a, b)
  if a.allowed ~= b.allowed then return not a.allowed end
  if not a.allowed then
    if b.retry == NEVER then return false end
    return a.retry == NEVER or a.retry > b.retry
  end
  return a.remaining < b.remaining or (a.remaining == b.remaining and a.reset > b.reset)
end

local worst, worst_index
local pending = {}
for r = 1, #rates do
  local o, next
  if rates[r].limit == 0 then
    o, next = outcome(cost == 0 or force, 0, 0, (cost == 0 or force) and 0 or NEVER), states[r]
  else
    o, next = decide(rates[r], states[r])
  end
  pending[r] = next
  if worst == nil or more_restrictive(o, worst) then worst, worst_index = o, r end
end

-- Commit when admitted, with an expiry at the latest instant any rate still remembers.
local idle = now
if worst.allowed then
  local out = {}
  for r = 1, #rates do
    local s = pending[r]
    states[r] = s
    for j = 1, 6 do out[#out + 1] = string.format('%.17g', s[j]) end
    local rate = rates[r]
    if algorithm == 'T' then
      idle = math.max(idle, s[1])
    elseif algorithm == 'F' then
      if s[2] ~= 0 then idle = math.max(idle, (s[1] + 1) * rate.window) end
    else
      for i = SLOTS, 1, -1 do
        if s[1 + i] ~= 0 then idle = math.max(idle, (s[1] + i) * rate.window / 4) break end
      end
    end
  end
  if idle > now then
    redis.call('SET', KEYS[1], table.concat(out, ' '), 'PX', math.ceil((idle - now) / 1000) + 1)
  else
    redis.call('DEL', KEYS[1])
  end
end

local reply = { worst.allowed and 1 or 0, worst_index - 1, worst.remaining, worst.reset, worst.retry, now }
for r = 1, #rates do
  for j = 1, 6 do reply[#reply + 1] = math.ceil(states[r][j]) end
end
return reply
