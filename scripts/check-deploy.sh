#!/usr/bin/env bash
# Every delivery artifact, checked as far as this machine allows (no container
# engine, no cluster): YAML lint, shell lint, the alert rules (promtool check +
# unit tests), the Helm chart and kustomize overlays rendered, linted and
# validated (scripts/check_deploy.py), the smoke test against a real
# `nexus demo`, and the FROM-scratch image built with buildah and measured.
# `make test` runs it; scripts/install-test-deps.sh installs the tools.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/deploy-venv
if ! "$venv/bin/python" -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/deploy-requirements.txt
fi

step() { printf '\n== %s\n' "$*"; }

step "yamllint"
yamllint --strict .

step "shellcheck"
shellcheck scripts/*.sh

step "promtool: alert rules"
promtool check rules deployments/helm/nexus/files/nexus-alerts.yaml
(cd deployments/prometheus && promtool test rules alerts_test.yaml)

step "helm chart, kustomize overlays, Argo CD, Rollouts"
cargo build --quiet --locked -p nexus-bin
NEXUS_BIN=target/debug/nexus "$venv/bin/python" scripts/check_deploy.py

step "smoke test against nexus demo"
target/debug/nexus demo >target/smoke-demo.log 2>&1 &
demo=$!
trap 'kill "$demo" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs -o /dev/null http://127.0.0.1:8080/readyz && break
  sleep 0.1
done
GATEWAY_URL=http://127.0.0.1:8080 ADMIN_URL=http://127.0.0.1:9090 scripts/smoke-test.sh
kill "$demo"
wait "$demo" || true
trap - EXIT

step "container image (buildah, FROM scratch)"
scripts/check-image.sh

echo
echo "deployment checks passed"
