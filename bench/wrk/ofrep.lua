-- The load of bench/flags.sh: OFREP POSTs to the path in OFREP_PATH, each with one of 64
-- contexts (targetingKey user-0 … user-63, an email and a version), built once, so flagd and
-- the sidecar answer exactly the same requests and the per-request Lua cost is a counter.
-- done() is report.lua's, as for bench.lua.

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

-- done(): the BENCH line, shared with the other scripts (report.lua, beside this file).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "report.lua")
