-- wrk: every request a POST with a 1 KiB body framed by `Content-Length`, so a proxy reads a
-- request body (in Nexus a body of at most 64 KiB is read whole on the lean path).
-- Used by scripts/peer-bench.sh with WRK_SCRIPT=benches/wrk/post.lua.
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
