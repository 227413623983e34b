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

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_number", #threads)
end

local function read_lines(path)
   local lines = {}
   for line in io.lines(path) do
      if line ~= "" then
         table.insert(lines, line)
      end
   end
   return lines
end

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
   math.randomseed(os.time() * 1000 + (thread_number or 0))
end

function request()
   return prepared[math.random(prepared_count)]
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local bad = 0
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non2xx") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"non2xx":%d,"connect_errors":%d,'
         .. '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d}\n',
      summary.requests, summary.duration, bad, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(99)))
end
