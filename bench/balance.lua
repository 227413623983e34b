-- wrk script: GET /admin/loyalty/points/{customer_id}, on a customer drawn at random from
-- a list.
--
--   wrk ... -s balance.lua http://127.0.0.1:PORT -- TOKEN_FILE IDS_FILE [QUERY]
--
-- QUERY, when given, is the request's query string (S7: as_of=2026-11-30T02:00:00.500Z).
-- Non-2xx responses are counted per thread and added up in `done` (see adjust.lua).

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

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
   seed_random()
end

function request()
   return prepared[math.random(prepared_count)]
end

function response(status, headers, body)
   count_status(status)
end
