-- The load of bench/flags.sh: OFREP POSTs to the path in OFREP_PATH, each with one of 64
-- contexts (targetingKey user-0 … user-63, an email and a version), built once, so flagd and
-- the sidecar answer exactly the same requests and the per-request Lua cost is a counter.
-- done() prints the same BENCH line as bench.lua.

local reqs = {}
local n = 0
local COUNT = 64

function init(args)
   local path = os.getenv("OFREP_PATH")
   for i = 0, COUNT - 1 do
      local body = string.format(
         '{"context":{"targetingKey":"user-%d","email":"u%d@%s","version":"2.%d.0","plan":"%s"}}',
         i, i, (i % 3 == 0) and "example.com" or "corp.io", i % 5, (i % 2 == 0) and "pro" or "free")
      reqs[i] = wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
   end
end

function request()
   n = n + 1
   return reqs[n % COUNT]
end

function done(summary, latency, requests)
   local secs = summary.duration / 1e6
   io.write(string.format(
      "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d non2xx=%d " ..
      "connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
      summary.requests, summary.duration, summary.requests / secs,
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
      summary.errors.status, summary.errors.connect, summary.errors.read,
      summary.errors.write, summary.errors.timeout))
end
