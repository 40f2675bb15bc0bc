# Nexus: one entry point for humans and CI. `make test` is the test command the
# README gives and .ci/run calls; it installs what it needs when missing.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build release test test-deps check-deploy check-features package lint fmt clippy doc bench bench-router bench-p99 peer-bench grpc-bench fuzz fuzz-ci docker-build demo clean

all: build

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p nexus-bin

## Everything the test suite needs, installed only when missing.
test-deps:
	@./scripts/install-test-deps.sh

## The whole suite: unit, integration (real listeners on 127.0.0.1), doc tests, examples,
## and the delivery checks (chart, overlays, alerts, smoke test, image).
test: test-deps
	$(CARGO) test --workspace --locked
	CARGO_TARGET_DIR=$(CURDIR)/target $(CARGO) test --manifest-path examples/Cargo.toml --locked
	./scripts/check-deploy.sh

## Only the delivery checks.
check-deploy: test-deps
	./scripts/check-deploy.sh

## Every feature combination a user may pick, checked (not built); see scripts/check-features.sh.
check-features:
	./scripts/check-features.sh

## Each published crate packaged as crates.io would take it, and built from the package.
## Cargo verifies a crate against its sibling crates through a temporary registry, and treats what
## comes from a registry as immutable: it unpacks a package under $CARGO_HOME/registry/src/-<hash of
## the path>/ once, and reuses what it built from it. A later run from the same checkout would verify
## against the first run's sources. So the unpacked copies (the `-` prefix: never crates.io's), the
## temporary registry and every build of the nexus-* crates are removed first (they rebuild in
## a minute; their dependencies are kept).
PKG_TARGET = $${CARGO_TARGET_DIR:-target}
package:
	rm -rf "$${CARGO_HOME:-$$HOME/.cargo}"/registry/src/-* "$(PKG_TARGET)"/package/tmp-registry \
		"$(PKG_TARGET)"/debug/.fingerprint/nexus-* "$(PKG_TARGET)"/debug/deps/libnexus_*
	$(CARGO) package --workspace --exclude nexus-benches --allow-dirty

lint: fmt clippy doc

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## API docs without broken or private links (what docs.rs would show).
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --locked

## All criterion micro benches.
bench:
	$(CARGO) bench -p nexus-benches

bench-router:
	$(CARGO) bench -p nexus-benches --bench router

## End-to-end RPS and P50/P95/P99/P99.9 of the nexus binary (see README); BUDGET_MS fails it.
bench-p99:
	$(CARGO) bench -p nexus-benches --bench p99 -- $(if $(BUDGET_MS),--budget-p99-ms $(BUDGET_MS))

## Nexus beside nginx on this machine (needs nginx, wrk; settings at the top of the script).
## NEXUS_B=<another build> pairs two builds per round; CONFIG=benches/peer-bench-full.yaml for the full chain.
peer-bench: release
	./scripts/peer-bench.sh

## Unary gRPC calls through Nexus (h2c upstream) and nginx (grpc_pass) to one echo upstream (needs nginx, h2load).
grpc-bench: release
	$(CARGO) build --release -p nexus-benches --example grpc_echo
	./scripts/grpc-bench.sh

# Every fuzz target briefly (FUZZ_SECONDS each), from fuzz/seeds (attack and regression inputs)
# and the local corpus; installs the nightly toolchain and cargo-fuzz when missing.
FUZZ_SECONDS ?= 30
fuzz:
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $$($(CARGO) +nightly fuzz list); do \
		mkdir -p corpus/$$t; seeds=; [ -d seeds/$$t ] && seeds=seeds/$$t; \
		$(CARGO) +nightly fuzz run -O $$t corpus/$$t $$seeds -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

## The fuzzing gate CI runs: every target for 15 s (a crash fails the run; the input is in fuzz/artifacts).
fuzz-ci:
	$(MAKE) fuzz FUZZ_SECONDS=15

docker-build:
	docker build -t nexus:dev .

demo:
	$(CARGO) run --release -p nexus-bin -- demo

clean:
	$(CARGO) clean
