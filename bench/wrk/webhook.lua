-- The load of bench/webhooks.sh: webhook messages POSTed to the sidecar's admin API.
--   WEBHOOK_BATCH unset or 0: POST /webhooks/v1/messages, one message per request;
--   WEBHOOK_BATCH=N:          POST /webhooks/v1/messages/batch, N messages per request.
-- Each message is {"eventType": "order.created", "payload": {...}} with a 204-byte JSON
-- payload (an order: ids, amount, two items, a note). 64 different bodies are built once, so
-- the per-request Lua cost is a counter. done() prints the BENCH line (report.lua); a request
-- counts once whatever its batch size, so messages = requests × WEBHOOK_BATCH.

local reqs = {}
local n = 0
local COUNT = 64

local function message(i)
   local payload = string.format(
      '{"orderId":"ord_%08d","customer":"cus_%06d","currency":"EUR","amount":%d,' ..
      '"items":[{"sku":"SKU-%04d","qty":%d,"price":1999},{"sku":"SKU-%04d","qty":1,"price":499}],' ..
      '"note":"%s"}',
      i, i * 7 % 1000000, 1000 + i % 9000, i % 10000, 1 + i % 5, (i * 13) % 10000,
      string.rep("x", 24))
   return '{"eventType":"order.created","payload":' .. payload .. '}'
end

function init(args)
   local batch = tonumber(os.getenv("WEBHOOK_BATCH") or "0") or 0
   local headers = { ["Content-Type"] = "application/json" }
   for i = 0, COUNT - 1 do
      if batch > 0 then
         local parts = {}
         for j = 0, batch - 1 do parts[#parts + 1] = message(i * batch + j) end
         reqs[i] = wrk.format("POST", "/webhooks/v1/messages/batch", headers,
            '{"messages":[' .. table.concat(parts, ",") .. ']}')
      else
         reqs[i] = wrk.format("POST", "/webhooks/v1/messages", headers, message(i))
      end
   end
end

function request()
   n = n + 1
   return reqs[n % COUNT]
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "report.lua")
