#!/usr/bin/env bash
# Install what `make test` needs, each only when missing. Safe to run again.
set -euo pipefail

need_apt=()
# curl is used by the smoke checks; the suite itself needs only cargo today.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)

if ((${#need_apt[@]})); then
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  echo "install-test-deps: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
