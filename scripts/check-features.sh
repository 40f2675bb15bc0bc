#!/usr/bin/env bash
# The crates' Cargo features, each combination a user may pick, checked (not built: this
# runs on 2 cores), then the tests that only exist without a feature, and the dependency
# tree a user of the bare Layers gets. `make check-features`; CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

check() {
    echo "== cargo check $*"
    "$CARGO" check --locked --all-targets "$@"
}

check -p nexus-core --no-default-features
check -p nexus-core --no-default-features --features axum
check -p nexus-middleware --no-default-features
check -p nexus-middleware --no-default-features --features jwt
check -p nexus-middleware --no-default-features --features redis
check -p nexus-middleware --no-default-features --features jwks-url
check -p nexus-middleware --no-default-features --features otel
check -p nexus-middleware --features axum
check -p nexus-health --no-default-features
check -p nexus-proxy --no-default-features
check -p nexus-proxy --features axum

# A config that needs a compiled-out feature is an error naming it (these tests only
# exist in builds without `redis` / `jwks-url` / `tls` / `otel`).
echo "== tests without redis and jwks-url"
"$CARGO" test --locked -p nexus-middleware --no-default-features --features jwt --lib from_config
echo "== tests without tls and otel"
"$CARGO" test --locked -p nexus-proxy --no-default-features --lib -- upstream::build::tests spans::tests front::tests

lines=$("$CARGO" tree --locked -p nexus-middleware --no-default-features -e normal | wc -l)
echo "== nexus-middleware --no-default-features: $lines lines of cargo tree"
