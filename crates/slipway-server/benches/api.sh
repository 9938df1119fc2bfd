#!/usr/bin/env bash
# The server's benchmarks, one run (issue 16 acceptance 4; not part of CI), on a real
# PostgreSQL store and one release `slipway serve`:
#  1. runs started per second through the API: POST /api/v1/runs of an uploaded bundle to
#     ENVS environments (exec target, two approvals required, `no_wait`: each run is
#     created, planned, journaled and stops at its approvals gate), PAR requests at a time;
#  2. API latency at CLIENTS concurrent clients (wrk, keep-alive, DURATION each):
#     GET /api/v1/runs/{id}/status over those runs, and POST /api/v1/runs/{id}/approve
#     (each a journaled, audited approval by bob; two are required and only bob approves,
#     so every run keeps waiting);
#  3. takeover time after kill -9: the test that kills the server driving a canary under
#     live traffic and times until the other server drives it (ROUNDS times).
# Starts its own PostgreSQL (fsync on, as TESTING.md shows) and stops it at the end.
# Usage: crates/slipway-server/benches/api.sh   (ENVS=200 PAR=10 CLIENTS=50 DURATION=10s ROUNDS=3;
# SLIPWAY_BIN=PATH uses that binary instead of building the release one: a quick check of
# the script, never a figure)
set -euo pipefail
ENVS=${ENVS:-200}
PAR=${PAR:-10}
CLIENTS=${CLIENTS:-50}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/../../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d -p "$ROOT/target")
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
D=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port)
chown postgres: "$D"
runuser -u postgres -- "$PGBIN/initdb" -D "$D/data" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$D/data" -l "$D/pg.log" -w -t 30 \
  -o "-p $PGPORT -k $D -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$D/data" -m fast -w stop >/dev/null || true
  rm -rf "$D" "$WORK"
}
trap cleanup EXIT
"$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1 -q -c "CREATE DATABASE api"
export SLIPWAY_STORE="postgres://postgres@127.0.0.1:$PGPORT/api"
unset SLIPWAY_TOKEN SLIPWAY_SERVER

if [ -n "${SLIPWAY_BIN:-}" ]; then
  SLIPWAY=$SLIPWAY_BIN
  echo "binary: $SLIPWAY (not the release build: a check of the script, not a figure)"
else
  cargo build --release -q -p slipway-cli
  SLIPWAY="$TARGET/release/slipway"
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit: $(git rev-parse --short HEAD), PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"

cd "$WORK"
TOKEN=$("$SLIPWAY" access grant user:alice admin --env '*' --output json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
# The approver (the author may not approve under four eyes).
SLIPWAY_TOKEN=$TOKEN "$SLIPWAY" access grant user:bob approver --env '*' > /dev/null
BOB=$(SLIPWAY_TOKEN=$TOKEN "$SLIPWAY" access token create --user bob --output json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
{
  echo "apiVersion: slipway/v1"
  echo "kind: Release"
  echo "metadata: { name: bench, version: 1.0.0, type: patch }"
  echo "services:"
  echo "  api: { steps: [ { name: install, run: \"true\", undo: \"true\" } ] }"
  echo "environments:"
  for i in $(seq 0 "$ENVS"); do
    echo "  e$i: { target: { exec: {} }, approvals: { required: 2 } }"
  done
} > release.yaml
git init -q && git add -A && git -c user.email=b@b -c user.name=b commit -qm spec

PORT=$(free_port)
"$SLIPWAY" serve --listen "127.0.0.1:$PORT" > serve.log 2>&1 &
SERVER_PID=$!
URL="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.1; done
AUTH="Authorization: Bearer $TOKEN"

# The bundle, uploaded by the first deploy (its digest is on stderr).
SLIPWAY_SERVER=$URL SLIPWAY_TOKEN=$TOKEN "$SLIPWAY" deploy -f release.yaml --env e0 --no-wait > deploy.out 2> deploy.err || true
BUNDLE=$(sed -n 's/^bundle sha256:\([0-9a-f]*\).*/\1/p' deploy.err)
[ -n "$BUNDLE" ] || { cat deploy.err; exit 1; }

echo "== runs started through the API ($ENVS runs, $PAR at a time)"
start=$(date +%s.%N)
seq 1 "$ENVS" | xargs -P "$PAR" -I{} curl -s -o /dev/null -w '%{http_code} %{time_total}\n' \
  -X POST -H "$AUTH" -H 'Content-Type: application/json' \
  -d "{\"bundle\":\"$BUNDLE\",\"environment\":\"e{}\",\"no_wait\":true}" "$URL/api/v1/runs" > starts.txt
end=$(date +%s.%N)
python3 - "$start" "$end" <<'PY'
import sys
start, end = float(sys.argv[1]), float(sys.argv[2])
rows = [l.split() for l in open("starts.txt") if l.strip()]
ok = [float(t) for c, t in rows if c in ("200", "202")]
lat = sorted(ok)
pct = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000 if lat else float("nan")
print(f"| runs started | refused | wall s | runs/s | p50 ms | p99 ms |")
print(f"|---|---|---|---|---|---|")
print(f"| {len(ok)} | {len(rows) - len(ok)} | {end - start:.2f} | {len(ok) / (end - start):.1f} | {pct(50):.0f} | {pct(99):.0f} |")
PY
curl -sf -H "$AUTH" "$URL/api/v1/runs?limit=1000" | python3 -c '
import json,sys
runs=[r["id"] for r in json.load(sys.stdin)["runs"] if r["state"]=="waiting_for_approval"]
open("runs.txt","w").write("\n".join(runs)+"\n")
print(f"{len(runs)} runs waiting for approval")'
FIRST=$(head -1 runs.txt)

# wrk's script: each request takes the next run of the list.
python3 - <<'PY'
runs = [l.strip() for l in open("runs.txt") if l.strip()]
lua = "runs = {" + ",".join(f'"{r}"' for r in runs) + "}\n"
lua += """
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, "/api/v1/runs/" .. runs[(i % #runs) + 1] .. PATH_SUFFIX)
end
"""
open("status.lua", "w").write(lua.replace("PATH_SUFFIX", '"/status"'))
open("approve.lua", "w").write(
    lua.replace("PATH_SUFFIX", '"/approve"')
    + 'wrk.method = "POST"\nwrk.body = "{}"\nwrk.headers["Content-Type"] = "application/json"\n'
)
PY
echo "one approval first: $(curl -s -X POST -H "Authorization: Bearer $BOB" -H 'Content-Type: application/json' -d '{}' "$URL/api/v1/runs/$FIRST/approve")"
# wrk leaves a request slower than its --timeout (2 s by default) out of the latency
# distribution and counts it as a socket timeout: a p99 under load would be censored, so
# the timeout is far above any answer and the timeouts are reported beside it.
echo "== GET /api/v1/runs/{id}/status, $CLIENTS clients, $DURATION"
wrk -t2 -c"$CLIENTS" -d"$DURATION" --timeout 60s --latency -H "$AUTH" -s status.lua "$URL"
echo "== POST /api/v1/runs/{id}/approve, $CLIENTS clients, $DURATION"
wrk -t2 -c"$CLIENTS" -d"$DURATION" --timeout 60s --latency -H "Authorization: Bearer $BOB" -s approve.lua "$URL"
echo "state of $FIRST after the approvals: $(curl -sf -H "$AUTH" "$URL/api/v1/runs/$FIRST" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["state"], len(d["approvals"]), "approvals recorded")')"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=

echo "== takeover after kill -9 ($ROUNDS rounds)"
cd "$ROOT"
for r in $(seq 1 "$ROUNDS"); do
  cargo test -q -p slipway-cli --test runner a_server_killed_mid_canary_is_taken_over_by_another_and_no_request_fails -- --nocapture 2>&1 \
    | grep -E "takeover after kill -9|test result" | sed "s/^/round $r: /"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
