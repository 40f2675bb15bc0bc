#!/usr/bin/env bash
# Smoke test of a running Nexus, the way an operator checks a fresh deploy.
#
#   GATEWAY_URL=http://127.0.0.1:8080 ADMIN_URL=http://127.0.0.1:9090 scripts/smoke-test.sh
#
# SMOKE_PATH (default /) is a route that must answer 200 through an upstream.
# Exits non-zero at the first failed check.
set -euo pipefail

GATEWAY_URL=${GATEWAY_URL:-http://127.0.0.1:8080}
ADMIN_URL=${ADMIN_URL:-http://127.0.0.1:9090}
SMOKE_PATH=${SMOKE_PATH:-/}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pass=0
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
ok() {
  pass=$((pass + 1))
  echo "ok   $*"
}

# fetch URL -> sets $status, body in $tmp/body, headers in $tmp/headers
fetch() {
  status=$(curl -s -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' --max-time 10 "$@") || status=000
}

header() {
  grep -i "^$1:" "$tmp/headers" | head -1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'
}

fetch "$GATEWAY_URL/healthz"
[[ $status == 200 ]] || fail "GET /healthz answered $status"
grep -q '"status":"alive"' "$tmp/body" || fail "GET /healthz body: $(cat "$tmp/body")"
ok "healthz 200 alive"

fetch "$GATEWAY_URL/readyz"
[[ $status == 200 ]] || fail "GET /readyz answered $status: $(cat "$tmp/body")"
ok "readyz 200 ready"

fetch "$ADMIN_URL/metrics"
[[ $status == 200 ]] || fail "GET $ADMIN_URL/metrics answered $status"
grep -q '^nexus_build_info' "$tmp/body" || fail "/metrics has no nexus_build_info"
ok "metrics 200 with nexus_build_info"

fetch "$ADMIN_URL/admin/config"
[[ $status == 200 ]] || fail "GET /admin/config answered $status"
grep -q '"version"' "$tmp/body" || fail "/admin/config has no version: $(cat "$tmp/body")"
ok "admin/config 200 (version $(sed -n 's/.*"version":"\([0-9a-f]*\)".*/\1/p' "$tmp/body"))"

fetch -H 'X-Request-Id: smoke-test-1' "$GATEWAY_URL/__nexus_smoke_no_such_route__"
[[ $status == 404 ]] || fail "unknown route answered $status, want 404"
[[ $(header content-type) == application/json* ]] || fail "404 content-type is $(header content-type)"
grep -q '"code":"route_not_found"' "$tmp/body" || fail "404 body: $(cat "$tmp/body")"
grep -q '"request_id":"smoke-test-1"' "$tmp/body" || fail "404 body does not carry the request id"
[[ $(header x-request-id) == smoke-test-1 ]] || fail "404 has no X-Request-Id smoke-test-1"
ok "unknown route 404 with the JSON error body and X-Request-Id"

fetch "$GATEWAY_URL$SMOKE_PATH"
[[ $status == 200 ]] || fail "GET $SMOKE_PATH through the gateway answered $status: $(cat "$tmp/body")"
[[ -n $(header x-request-id) ]] || fail "proxied answer has no X-Request-Id"
ok "proxied $SMOKE_PATH 200 with X-Request-Id"

echo "smoke test: $pass checks passed"
