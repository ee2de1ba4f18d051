-- A plain GET / for bench/failover.sh, with Host from BENCH_HOST when set (the sidecar's
-- outbound listener routes by it); done() prints the BENCH line (report.lua).
local req

function init(args)
   local host = os.getenv("BENCH_HOST")
   if host == "" then host = nil end
   req = wrk.format("GET", "/", { ["Host"] = host })
end

function request()
   return req
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "report.lua")
