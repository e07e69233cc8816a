-- wrk script for verdict's ingest benchmark: POSTs a signed SEON delivery with a fresh
-- Request-Id per request, so every request is a new log entry.
-- Environment: BODY (path of the body), SIG (hex HMAC-SHA256 of the body with the secret).
local body = assert(io.open(os.getenv("BODY"), "rb")):read("*a")
local sig = os.getenv("SIG")
local run = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9))
local counter = 0
local thread_id = 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function request()
  counter = counter + 1
  return wrk.format("POST", nil, {
    ["X-Seon-Signature"] = sig,
    ["Request-Id"] = "wrk-" .. run .. "-" .. tostring(tid) .. "-" .. counter,
    ["Content-Type"] = "application/json",
  }, body)
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT requests=%d seconds=%.2f p50_ms=%.2f p99_ms=%.2f p999_ms=%.2f max_ms=%.2f errors=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000, errors))
end
