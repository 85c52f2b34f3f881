-- wrk script for the limiter-memory scenario: every request carries a new client key
-- (X-Client: 1, 2, 3, ...), so each one creates a bucket in the rate limiter. Stops after
-- $KEYS requests (run wrk with -t1 and a duration long enough to get there).
local n = 0
local limit = tonumber(os.getenv("KEYS") or "1000000")
request = function()
    n = n + 1
    return wrk.format("GET", nil, { ["X-Client"] = tostring(n) })
end
response = function(status)
    if n >= limit then
        wrk.thread:stop()
    end
end
