-- wrk script: POST /admin/loyalty/points/adjust, each request on a customer drawn at random
-- from a list (a list of one id puts every connection on one hot customer).
--
--   wrk ... -s adjust.lua http://127.0.0.1:PORT -- TOKEN_FILE IDS_FILE [history]
--
-- TOKEN_FILE holds one bearer token, IDS_FILE one customer id per line (both written by
-- runner.py); `history` adds ?include_history=true. Every delta is +1 point, so no request can
-- be refused for an insufficient balance: any non-2xx is a failure of the service.
--
-- wrk counts only some non-2xx statuses and keeps them per thread, so each thread counts
-- its own in `response` and `done` adds them up and prints one BENCH_RESULT line.

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

function init(args)
   local token = read_lines(args[1])[1]
   local ids = read_lines(args[2])
   local path = "/admin/loyalty/points/adjust"
   if args[3] == "history" then
      path = path .. "?include_history=true"
   end
   prepared = {}
   for i, id in ipairs(ids) do
      local body = string.format('{"customer_id":"%s","delta":1,"reason":"bench"}', id)
      local headers = {
         ["Authorization"] = "Bearer " .. token,
         ["Content-Type"] = "application/json",
      }
      prepared[i] = wrk.format("POST", path, headers, body)
   end
   prepared_count = #prepared
   non2xx = 0
   seed_random()
end

function request()
   return prepared[math.random(prepared_count)]
end

function response(status, headers, body)
   count_status(status)
end
