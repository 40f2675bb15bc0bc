-- wrk: every request a POST with a 1 KiB body, so a proxy reads a request body (in Nexus this
-- takes hyper's HTTP/1 path and the head gate in front of it, not the lean path).
-- Used by scripts/peer-bench.sh with WRK_SCRIPT=benches/wrk/post.lua.
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
