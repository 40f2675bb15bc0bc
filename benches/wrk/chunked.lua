-- wrk: every request a POST whose 1 KiB body is sent chunked (`Transfer-Encoding: chunked`, two
-- chunks of 512 bytes), as streaming clients send one. Nexus reads a body of a few plain chunks
-- whole on its lean path and sends it upstream with a `Content-Length`; nginx buffers it and
-- does the same. Used by scripts/peer-bench.sh with WRK_SCRIPT=benches/wrk/chunked.lua.
local half = string.rep("x", 512)
local chunks = string.format("%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n", #half, half, #half, half)
local req

function init(args)
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Transfer-Encoding"] = "chunked"
  req = wrk.format("POST", nil, nil, nil) .. chunks
end

function request()
  return req
end
