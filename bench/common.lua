-- What the wrk scripts share (loaded by adjust.lua, balance.lua and bulk.lua with dofile):
-- numbering the threads, reading the token and id files, counting every status outside
-- 2xx (wrk counts only some, per thread), and the one BENCH_RESULT line `done` prints.
-- Each script sets `non2xx` (and bulk.lua `item_errors`) in its threads.

threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_number", #threads)
end

function read_lines(path)
   local lines = {}
   for line in io.lines(path) do
      if line ~= "" then
         table.insert(lines, line)
      end
   end
   return lines
end

function seed_random()
   math.randomseed(os.time() * 1000 + (thread_number or 0))
end

function count_status(status)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      return false
   end
   return true
end

function done(summary, latency, requests)
   local bad = 0
   local bad_items = 0
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non2xx") or 0)
      bad_items = bad_items + (thread:get("item_errors") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"non2xx":%d,"item_errors":%d,'
         .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
         .. '"p50_us":%d,"p99_us":%d}\n',
      summary.requests, summary.duration, bad, bad_items, e.connect, e.read, e.write,
      e.timeout, latency:percentile(50), latency:percentile(99)))
end
