-- wrk script for the dashboard throughput figure (bench/README.md): POSTs
-- the rollup-served dashboard query with a VIEWER token from PULSE_TOKEN.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("PULSE_TOKEN")
wrk.body = '{"query":"query($q: MetricQueryInput!) { metrics(query: $q) { total series { points { bucket value } } } }","variables":{"q":{"measure":"COUNT","eventTypes":["page_view"],"granularity":"DAY","range":{"last":"30d"}}}}'

-- Any answer but 200 counts as an error in wrk's summary; a GraphQL error
-- inside a 200 is caught by checking the body.
response = function(status, headers, body)
  if status ~= 200 or string.find(body, '"errors"', 1, true) then
    wrk.thread:stop()
  end
end
