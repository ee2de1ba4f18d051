-- The BENCH line every wrk script of bench/ prints when the load ends (loaded with dofile by
-- bench.lua and ofrep.lua, so bench/run.sh and bench/flags.sh parse one format):
--   BENCH requests=… duration_us=… rps=… p50_us=… p99_us=… p999_us=… non2xx=…
--         connect_errors=… read_errors=… write_errors=… timeouts=…
-- non2xx counts every response whose status is not 2xx/3xx. Latency is wrk's per-request
-- latency (send to full response), in microseconds.

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
