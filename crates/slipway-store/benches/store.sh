#!/usr/bin/env bash
# The store's benchmarks side by side, one run (issue 20 parts 3 and 4; not part of CI):
#  1. bench_durable on SQLite and on PostgreSQL, same build, same disk, same arguments;
#  2. audit verification of a store of ENTRIES chained records (bench_verify) on SQLite and
#     on PostgreSQL, the release `slipway audit verify` on the same SQLite store, and
#     `openssl speed sha256` at the same entry size, in the same run.
# Starts its own PostgreSQL 15 (as TESTING.md shows; fsync=on, synchronous_commit=on, data
# on the same disk as the SQLite files) and stops it at the end.
# Usage: crates/slipway-store/benches/store.sh [ENTRIES] [STEPS] [PARALLELISM...]
set -euo pipefail
ENTRIES=${1:-1000000}
STEPS=${2:-2000}
shift 2 2>/dev/null || true
PARS=("$@")
[ ${#PARS[@]} -eq 0 ] && PARS=(256 1)
cd "$(dirname "$0")/../../.."
WORK=$(mktemp -d -p "$PWD/target")
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
D=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chown postgres: "$D"
runuser -u postgres -- "$PGBIN/initdb" -D "$D/data" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$D/data" -l "$D/pg.log" -w -t 30 \
  -o "-p $PORT -k $D -c listen_addresses=127.0.0.1" start >/dev/null
trap 'runuser -u postgres -- "$PGBIN/pg_ctl" -D "$D/data" -m fast -w stop >/dev/null; rm -rf "$D" "$WORK"' EXIT
PSQL=("$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -q)
db() { "${PSQL[@]}" -c "CREATE DATABASE $1"; echo "postgres://postgres@127.0.0.1:$PORT/$1"; }

cargo build --release -q -p slipway-store --example bench_durable --example bench_verify
cargo build --release -q -p slipway-cli
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit: $(git rev-parse --short HEAD), PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}')"

echo "== bench_durable ($STEPS steps)"
# At parallelism 1 one service of STEPS steps (the sequential case); above, STEPS/4
# services of 4 ordered steps each (the group-commit case: a service's steps run in order).
for p in "${PARS[@]}"; do
  if [ "$p" -gt 1 ]; then shape=(4 "$p" "$WORK" $((STEPS / 4))); else shape=("$STEPS" 1 "$WORK" 1); fi
  echo "-- parallelism $p, SQLite"
  target/release/examples/bench_durable "${shape[@]}"
  echo "-- parallelism $p, PostgreSQL"
  SLIPWAY_BENCH_STORE=$(db "durable_$p") target/release/examples/bench_durable "${shape[@]}"
done

echo "== audit verify ($ENTRIES entries)"
echo "-- SQLite"
OUT=$(SLIPWAY_BENCH_KEEP=1 target/release/examples/bench_verify "$ENTRIES" "$WORK")
echo "$OUT"
DBFILE=$(echo "$OUT" | sed -n 's/^kept: //p')
BYTES=$(echo "$OUT" | sed -n 's/.*hashed bytes per entry: \([0-9]*\).*/\1/p')
echo "-- the release binary: slipway audit verify --store sqlite://$DBFILE (3 runs)"
for r in 1 2 3; do
  /usr/bin/time -f "%e s wall, %U s user, %S s sys" target/release/slipway audit verify --store "sqlite://$DBFILE" --output json 2>&1 \
    | tr '\n' ' ' | sed 's/$/\n/'
done
echo "-- openssl speed sha256 at $BYTES bytes (one core)"
openssl speed -seconds 3 -bytes "$BYTES" sha256 2>/dev/null | tail -1
echo "-- PostgreSQL"
SLIPWAY_BENCH_STORE=$(db verify) target/release/examples/bench_verify "$ENTRIES" "$WORK"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
