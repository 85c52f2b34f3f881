-- wrk script for the cache-miss rows: every request asks a path no request asked before
-- (`?i=<run>-<n>`, the run a random nonce, so a later run misses too): each is a cache miss
-- on a caching route, and the same requests on a route without a cache are its baseline.
local f = io.open("/dev/urandom", "rb")
local run = f:read(6):gsub(".", function(c) return string.format("%02x", c:byte()) end)
f:close()
local n = 0
request = function()
    n = n + 1
    return wrk.format(nil, wrk.path .. "?i=" .. run .. "-" .. n)
end
