-- wrk script: POST /admin/loyalty/points/bulk-adjust, each request a bulk of ITEMS adjustments
-- (not atomic), each on a customer drawn at random from a list.
--
--   wrk ... -s bulk.lua http://127.0.0.1:PORT -- TOKEN_FILE IDS_FILE ITEMS NONCE
--
-- TOKEN_FILE and IDS_FILE as in adjust.lua. Each item adds 1 point with a reference of its
-- own, `<NONCE>-<thread>-<counter>` (NONCE is new for each wrk run, so no reference is ever
-- used twice: none can be refused as a conflict), so the bulk is built per request.
--
-- A bulk that is not atomic answers 200 with one result per item, so an item's failure
-- shows only in the body: a request counts as non-2xx when its status is outside 2xx, when
-- any result carries an `error` object, or when it has fewer results than items. The
-- failed items themselves are counted too (`item_errors`); `done` prints one BENCH_RESULT line.

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

function init(args)
   local token = read_lines(args[1])[1]
   ids = read_lines(args[2])
   id_count = #ids
   items = tonumber(args[3])
   prefix = string.format("%s-%d-", args[4], thread_number or 0)
   headers = {
      ["Authorization"] = "Bearer " .. token,
      ["Content-Type"] = "application/json",
   }
   counter = 0
   non2xx = 0
   item_errors = 0
   seed_random()
end

function request()
   local parts = {}
   for k = 1, items do
      counter = counter + 1
      parts[k] = string.format(
         '{"customer_id":"%s","delta":1,"reason":"bench","reference":"%s%d"}',
         ids[math.random(id_count)], prefix, counter)
   end
   local body = '{"atomic":false,"adjustments":[' .. table.concat(parts, ",") .. "]}"
   return wrk.format("POST", "/admin/loyalty/points/bulk-adjust", headers, body)
end

function response(status, headers, body)
   if not count_status(status) then
      item_errors = item_errors + items
      return
   end
   local _, results = string.gsub(body, '"index"%s*:', "")
   local _, errors = string.gsub(body, '"error"%s*:%s*{', "")
   local failed = errors + math.max(0, items - results)
   if failed > 0 then
      non2xx = non2xx + 1
      item_errors = item_errors + failed
   end
end
