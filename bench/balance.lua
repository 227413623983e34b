-- wrk script: GET /admin/loyalty/points/{customer_id}, on a customer drawn at random from
-- a list.
--
--   wrk ... -s balance.lua http://127.0.0.1:PORT -- TOKEN_FILE IDS_FILE [QUERY]
--
-- QUERY, when given, is the request's query string (S7: as_of=2026-11-30T02:00:00.500Z).
-- Non-2xx responses are counted per thread and added up in `done` (see adjust.lua).

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
   local query = ""
   if args[3] ~= nil and args[3] ~= "" then
      query = "?" .. args[3]
   end
   prepared = {}
   for i, id in ipairs(ids) do
      local headers = { ["Authorization"] = "Bearer " .. token }
      prepared[i] = wrk.format("GET", "/admin/loyalty/points/" .. id .. query, headers)
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
