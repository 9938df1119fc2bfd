#!/usr/bin/env bash
# Proxy overhead (issue 4, benchmark b): wrk against demo-app directly, through the
# Slipway proxy, through nginx and through HAProxy, in one run, and a table of
# requests/s, the ratio to direct, p50/p99 and the latency each proxy adds.
#
# Usage: crates/slipway-proxy/benches/proxy_overhead.sh
#   DURATION=10s CONNECTIONS="64 1" WARMUP=2s ROUNDS=1   (environment overrides)
#
# ROUNDS=N (N > 1) then repeats the first CONNECTIONS pass N more times, the four targets
# back to back in each round, and prints each round's ratios and their median: on a
# shared machine one run's ratio moves by 10-20 %, a median of paired rounds much less.
#
# Two passes by default: 64 connections (saturation: throughput, with queueing in the
# latencies) and 1 connection (no queueing: the latency a proxy adds to one request).
#
# Equivalence: every server gets one worker (demo-app and Slipway: a current-thread tokio
# runtime; nginx: worker_processes 1; HAProxy: nbthread 1), keep-alive towards the client
# and towards the upstream, X-Forwarded-For added, no access log. The machine has two
# cores: wrk (one thread) is pinned to CPU 0, the backend and the proxy under test share
# CPU 1, so every proxy competes with the same backend for the same core.
# Loopback only; everything started here is stopped by PID on exit.
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-1}
CONNECTIONS=${CONNECTIONS:-64 1}
WARMUP=${WARMUP:-2s}
WRK_CPU=${WRK_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
for tool in wrk nginx haproxy taskset; do
  command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx haproxy" >&2; exit 1; }
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

# Starts a server pinned to SERVER_CPU that prints "listening on ADDR". Runs in this
# shell (not in $(...)) so its PID is recorded for cleanup.
start_server() {
  local name=$1; shift
  taskset -c "$SERVER_CPU" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PIDS+=($!)
}

# Echoes the address a started server printed, waiting for it.
listening_addr() {
  local name=$1
  for _ in $(seq 1 200); do
    if grep -q '^listening on ' "$WORK/$name.out" 2>/dev/null; then
      sed -n 's/^listening on //p' "$WORK/$name.out" | head -1
      return
    fi
    sleep 0.05
  done
  echo "$name did not start: $(cat "$WORK/$name.err")" >&2
  exit 1
}

start_server demo "$DEMO" --port 0 --version 1.0.0 --threads 1
BACKEND=$(listening_addr demo)
start_server slipway "$PROXY" --listen 127.0.0.1:0 --stable "$BACKEND" --threads 1
SLIPWAY=$(listening_addr slipway)

NGINX_PORT=$(free_port)
nginx_conf "$NGINX_PORT" "$WORK/nginx"
taskset -c "$SERVER_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
PIDS+=($!)

HAPROXY_PORT=$(free_port)
haproxy_conf "$HAPROXY_PORT" "$WORK/haproxy.cfg"
taskset -c "$SERVER_CPU" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.out" 2>&1 &
PIDS+=($!)

wait_port "$BACKEND"
wait_port "$SLIPWAY"
wait_port "127.0.0.1:$NGINX_PORT"
wait_port "127.0.0.1:$HAPROXY_PORT"

# wrk prints latencies as 812.00us / 1.23ms / 1.01s; convert to microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n
  }'
}

declare -A RPS P50 P99 NON2XX
run() {
  local name=$1 url=$2 conns=$3
  taskset -c "$WRK_CPU" wrk -t1 -c"$conns" -d"$WARMUP" "$url" >/dev/null
  taskset -c "$WRK_CPU" wrk -t1 -c"$conns" -d"$DURATION" --latency "$url" >"$WORK/wrk-$name.txt"
  RPS[$name]=$(awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk-$name.txt")
  P50[$name]=$(to_us "$(awk '$1 == "50%" {print $2}' "$WORK/wrk-$name.txt")")
  P99[$name]=$(to_us "$(awk '$1 == "99%" {print $2}' "$WORK/wrk-$name.txt")")
  NON2XX[$name]=$(awk '/Non-2xx or 3xx responses:/ {print $5} /Socket errors/ {print "sock:" $0}' "$WORK/wrk-$name.txt" | tr '\n' ' ')
}

echo
echo "$(nproc) CPUs, $(uname -r), $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -1 | awk '{print $1, $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
for conns in $CONNECTIONS; do
  run direct "http://$BACKEND/" "$conns"
  run slipway "http://$SLIPWAY/" "$conns"
  run nginx "http://127.0.0.1:$NGINX_PORT/" "$conns"
  run haproxy "http://127.0.0.1:$HAPROXY_PORT/" "$conns"

  echo
  echo "wrk -t1 -c$conns -d$DURATION --latency (after a $WARMUP warmup); wrk on CPU $WRK_CPU, backend + proxy on CPU $SERVER_CPU"
  echo
  echo "| target | req/s | vs direct | p50 | p99 | added p50 | added p99 | non-2xx/errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  for name in direct slipway nginx haproxy; do
    awk -v n="$name" -v r="${RPS[$name]}" -v d="${RPS[direct]}" -v p50="${P50[$name]}" -v p99="${P99[$name]}" \
        -v d50="${P50[direct]}" -v d99="${P99[direct]}" -v e="${NON2XX[$name]:-}" 'BEGIN {
      added50 = (n == "direct") ? "–" : sprintf("%+.3f ms", (p50 - d50) / 1000)
      added99 = (n == "direct") ? "–" : sprintf("%+.3f ms", (p99 - d99) / 1000)
      printf "| %s | %.0f | %.2f | %.3f ms | %.3f ms | %s | %s | %s |\n", n, r, r / d, p50 / 1000, p99 / 1000, added50, added99, (e == "" ? "0" : e)
    }'
  done
done

if [ "$ROUNDS" -gt 1 ]; then
  conns=${CONNECTIONS%% *}
  echo
  echo "$ROUNDS paired rounds: wrk -t1 -c$conns -d$DURATION per target, the four back to back in each round"
  echo
  echo "| round | direct | slipway | nginx | haproxy | slipway / nginx | slipway / haproxy |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  : >"$WORK/ratios"
  for round in $(seq 1 "$ROUNDS"); do
    for name in direct slipway nginx haproxy; do
      case $name in
        direct) url="http://$BACKEND/" ;;
        slipway) url="http://$SLIPWAY/" ;;
        nginx) url="http://127.0.0.1:$NGINX_PORT/" ;;
        haproxy) url="http://127.0.0.1:$HAPROXY_PORT/" ;;
      esac
      run "$name" "$url" "$conns"
    done
    awk -v r="$round" -v d="${RPS[direct]}" -v s="${RPS[slipway]}" -v n="${RPS[nginx]}" -v h="${RPS[haproxy]}" \
      'BEGIN { printf "| %d | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f |\n", r, d, s, n, h, s / n, s / h }'
    awk -v s="${RPS[slipway]}" -v n="${RPS[nginx]}" -v h="${RPS[haproxy]}" \
      'BEGIN { printf "%.4f %.4f\n", s / n, s / h }' >>"$WORK/ratios"
  done
  median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
  echo
  echo "median slipway / nginx: $(awk '{print $1}' "$WORK/ratios" | median), slipway / haproxy: $(awk '{print $2}' "$WORK/ratios" | median)"
fi
