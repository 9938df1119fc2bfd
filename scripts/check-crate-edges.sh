#!/usr/bin/env bash
# Architecture invariants from ARCHITECTURE.md, checked on the real dependency graph:
# the model and the engine never depend on the server stack, SSH, or process spawning.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for core in slipway-model slipway-engine; do
  cargo metadata --format-version 1 --no-deps >/dev/null
  if ! cargo tree -p "$core" -e normal --prefix none >/dev/null 2>&1; then
    continue # crate does not exist yet
  fi
  deps=$(cargo tree -p "$core" -e normal --prefix none | awk '{print $1}' | sort -u)
  for forbidden in axum hyper tower-http russh openssh sqlx reqwest slipway-providers slipway-server slipway-proxy slipway-store; do
    if echo "$deps" | grep -qx "$forbidden"; then
      echo "crate-edge violation: $core depends on $forbidden"
      cargo tree -p "$core" -e normal -i "$forbidden" | head -20
      fail=1
    fi
  done
done
# The model does no IO at all: no async runtime either.
if cargo tree -p slipway-model -e normal --prefix none | awk '{print $1}' | grep -qx tokio; then
  echo "crate-edge violation: slipway-model depends on tokio"; fail=1
fi
[ $fail -eq 0 ] && echo "crate edges ok"
exit $fail
