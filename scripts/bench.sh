#!/usr/bin/env bash
# The one entry point for Slipway's benchmarks (issue 20 part 1); see scripts/bench.py.
#   scripts/bench.sh list | run NAME... | run all | render [--check]
# Not part of CI. Peers (pyinfra, ansible-core, hyperfine) are installed here on demand,
# never by the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = run ]; then
  command -v hyperfine >/dev/null || apt-get install -y -q hyperfine >/dev/null
fi
exec python3 scripts/bench.py "$@"
