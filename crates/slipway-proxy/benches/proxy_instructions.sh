#!/usr/bin/env bash
# Proxy overhead (issue 4, benchmark b), the noise-free half: user-space instructions per
# proxied request for Slipway, nginx and HAProxy, each run under valgrind's callgrind
# with the same wrk load. Unlike requests/s (proxy_overhead.sh), the count hardly moves
# with machine load, so it shows a 2 % change that a busy 2-core machine hides in noise.
# Kernel time is not in it (per-request kernel time of the three is alike; see
# docs/benchmarks-history.md 4b), nor is the backend's work.
#
# Usage: crates/slipway-proxy/benches/proxy_instructions.sh
#   DURATION=10s CONNECTIONS=64 ROUNDS=2   (environment overrides)
#
# Start-up and shutdown are taken out by subtracting an idle run of the same proxy.
# Equivalence as in proxy_overhead.sh: one
# worker each, keep-alive both sides, X-Forwarded-For added, no access log.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-2}

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
PATH=$PATH:/usr/sbin
for tool in wrk nginx haproxy valgrind; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx haproxy valgrind" >&2; exit 1; }
done

cargo build --release --quiet -p demo-app -p slipway-proxy --bin demo-app --example bench_proxy
TARGET=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
DEMO=$TARGET/release/demo-app
PROXY=$TARGET/release/examples/bench_proxy

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=peers.sh
. "$ROOT/crates/slipway-proxy/benches/peers.sh"

"$DEMO" --port 0 --version 1.0.0 --threads 1 >"$WORK/demo.out" 2>"$WORK/demo.err" &
PIDS+=($!)
for _ in $(seq 1 200); do grep -q '^listening on ' "$WORK/demo.out" 2>/dev/null && break; sleep 0.05; done
BACKEND=$(sed -n 's/^listening on //p' "$WORK/demo.out" | head -1)
[ -n "$BACKEND" ] || { echo "demo-app did not start: $(cat "$WORK/demo.err")" >&2; exit 1; }

# Runs one proxy under callgrind, with load (wrk) or without (one request), and prints
# the requests served and the instructions executed.
run_once() {
  local name=$1 tag=$2 load=$3 port
  port=$(free_port)
  local out="$WORK/cg-$name-$tag.out"
  local cmd
  case $name in
    slipway) cmd=("$PROXY" --listen "127.0.0.1:$port" --stable "$BACKEND" --threads 1) ;;
    nginx) nginx_conf "$port" "$WORK/nginx-$tag" "master_process off;"; cmd=(nginx -p "$WORK/nginx-$tag" -c "$WORK/nginx-$tag/nginx.conf") ;;
    haproxy) haproxy_conf "$port" "$WORK/haproxy-$tag.cfg"; cmd=(haproxy -f "$WORK/haproxy-$tag.cfg" -db) ;;
  esac
  valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" >"$WORK/$name-$tag.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_port "127.0.0.1:$port"
  local requests=1
  if [ "$load" = yes ]; then
    wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$port/" >"$WORK/wrk-$name-$tag.txt"
    requests=$(( $(awk '/requests in/ {print $1}' "$WORK/wrk-$name-$tag.txt") + 1 ))
  fi
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "$requests $(grep -h '^summary:' "$out"* | awk '{s += $2} END {print s}')"
}

# Instructions per request: a loaded run minus an idle run (one request), so start-up,
# configuration parsing and shutdown cancel out.
measure() {
  local name=$1 round=$2 idle_req idle_ir requests ir
  read -r idle_req idle_ir < <(run_once "$name" "$round-idle" no)
  read -r requests ir < <(run_once "$name" "$round" yes)
  echo "$name $round $((requests - idle_req)) $((ir - idle_ir))"
}

echo
echo "$(nproc) CPUs, $(uname -r), $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -1 | awk '{print $1, $3}'), $(valgrind --version)"
echo "wrk -t1 -c$CONNECTIONS -d$DURATION against each proxy under callgrind, $ROUNDS rounds"
echo
echo "| proxy | round | requests | instructions | instructions/request | vs nginx |"
echo "|---|---:|---:|---:|---:|---:|"
for round in $(seq 1 "$ROUNDS"); do
  declare -A PER=()
  for name in nginx slipway haproxy; do
    read -r n r requests ir < <(measure "$name" "$round")
    PER[$name]=$((ir / requests))
    awk -v n="$n" -v r="$r" -v q="$requests" -v i="$ir" -v p="${PER[$name]}" -v ng="${PER[nginx]}" \
      'BEGIN { printf "| %s | %s | %d | %d | %d | %.2f |\n", n, r, q, i, p, p / ng }'
  done
done
