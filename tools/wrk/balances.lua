-- wrk script: GET /v1/balances/{subject}/{item} over the subjects and items
-- of `tally workload --subjects 10000` (s0..s9999, i0..i99), keep-alive.
--   wrk -t2 -c64 -d10s --latency -s tools/wrk/balances.lua http://127.0.0.1:7421
local counter = 0

function request()
  counter = counter + 1
  return wrk.format("GET", "/v1/balances/s" .. (counter % 10000) .. "/i" .. (counter % 100))
end
