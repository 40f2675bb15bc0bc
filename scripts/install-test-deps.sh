#!/usr/bin/env bash
# Install what `make test` needs, each only when missing. Safe to run again.
set -euo pipefail

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# promtool checks /metrics in nexus-bin/tests/metrics.rs (Debian's prometheus package ships it).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# Shared rate limits are tested against a real redis-server started on a free port.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# Delivery checks (scripts/check-deploy.sh): lint, the image build, the Python venv.
command -v yamllint >/dev/null 2>&1 || need_apt+=(yamllint)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v buildah >/dev/null 2>&1 || need_apt+=(buildah)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
# kubectl (with kustomize) comes with the machine; Debian's kubernetes-client conflicts with it.
command -v kubectl >/dev/null 2>&1 || echo "install-test-deps: kubectl is missing; the kustomize checks will fail" >&2

if ((${#need_apt[@]})); then
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  echo "install-test-deps: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  # --no-install-recommends: only the commands are needed (promtool, not a running Prometheus).
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's package starts a service where systemd runs; nothing here needs it.
  if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now prometheus redis-server >/dev/null 2>&1 || true
  fi
fi
