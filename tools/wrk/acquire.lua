-- wrk script: POST /v1/acquire of 1 unit, each with a fresh Idempotency-Key
-- (unique per wrk thread and request), keep-alive.
--   wrk -t2 -c64 -d10s --latency -s tools/wrk/acquire.lua http://127.0.0.1:7421
local threads = 0
local counter = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

function request()
  counter = counter + 1
  local body = '{"subject":"s' .. (counter % 10000) .. '","item":"i' .. (counter % 100) .. '","qty":1}'
  local headers = {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "wrk-" .. thread_id .. "-" .. counter,
  }
  return wrk.format("POST", "/v1/acquire", headers, body)
end
