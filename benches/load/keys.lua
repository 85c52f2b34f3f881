-- wrk script for the limiter-memory part: request n carries X-Client: n (cycling through
-- $KEYS values), so the first $KEYS requests each create a bucket in the rate limiter and
-- later ones revisit them (still far under the policy's 100 per hour: never a 429).
local n = 0
local keys = tonumber(os.getenv("KEYS") or "1000000")
request = function()
    n = n % keys + 1
    return wrk.format("GET", nil, { ["X-Client"] = tostring(n) })
end
