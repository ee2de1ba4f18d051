-- The load for every row of bench/run.sh (wrk -t1 -c32 -s bench/wrk/bench.lua URL).
--
-- Every request carries the header x-api-key, alternating "free" and "paid", in every scenario
-- and for every target, so the load is identical everywhere; only scenario c's policies look
-- at the header. The two requests are built once, so the per-request Lua cost is a counter.
--
-- done() (report.lua) prints one machine-readable line for run.sh; its non2xx counts here the
-- 429s of the limits.
-- With BENCH_HOST set (scenario f), every request carries that Host instead of the target's.

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

-- done(): the BENCH line, shared with the other scripts (report.lua, beside this file).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "report.lua")
