#!/usr/bin/env bash
# Install what `make test` needs, each only when missing. Safe to run again.
set -euo pipefail

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# promtool checks /metrics in nexus-bin/tests/metrics.rs (Debian's prometheus package ships it).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# Shared rate limits are tested against a real redis-server started on a free port.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)

if ((${#need_apt[@]})); then
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  echo "install-test-deps: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  # --no-install-recommends: only promtool is needed, not a running Prometheus.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's package starts a service where systemd runs; nothing here needs it.
  if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now prometheus redis-server >/dev/null 2>&1 || true
  fi
fi
