-- The load for every row of bench/run.sh (wrk -t1 -c32 -s bench/wrk/bench.lua URL).
--
-- Every request carries the header x-api-key, alternating "free" and "paid", in every scenario
-- and for every target, so the load is identical everywhere; only scenario c's policies look
-- at the header. The two requests are built once, so the per-request Lua cost is a counter.
--
-- done() prints one machine-readable line for run.sh:
--   BENCH requests=… duration_us=… rps=… p50_us=… p99_us=… p999_us=… non2xx=…
--         connect_errors=… read_errors=… write_errors=… timeouts=…
-- non2xx counts every response whose status is not 2xx/3xx (here: the 429s of the limits).
-- With BENCH_HOST set (scenario f), every request carries that Host instead of the target's.
-- Latency is wrk's per-request latency (send to full response), in microseconds.

local reqs = {}
local n = 0

function init(args)
   local host = os.getenv("BENCH_HOST")
   if host == "" then host = nil end
   reqs[0] = wrk.format("GET", "/", { ["x-api-key"] = "free", ["Host"] = host })
   reqs[1] = wrk.format("GET", "/", { ["x-api-key"] = "paid", ["Host"] = host })
end

function request()
   n = n + 1
   return reqs[n % 2]
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
