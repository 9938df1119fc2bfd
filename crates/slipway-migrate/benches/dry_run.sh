#!/usr/bin/env bash
# Dry run of 50 migrations on a PostgreSQL database of at least 100 MB (issue 6).
# Starts its own PostgreSQL (as TESTING.md shows), loads the data, writes the migrations,
# runs examples/bench_dry_run.rs RUNS times (default 3) and stops the server.
# Usage: crates/slipway-migrate/benches/dry_run.sh [ROWS] [RUNS]
set -euo pipefail
ROWS=${1:-1200000}
RUNS=${2:-3}
cd "$(dirname "$0")/../../.."
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
D=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chown postgres: "$D"
runuser -u postgres -- "$PGBIN/initdb" -D "$D/data" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$D/data" -l "$D/pg.log" -w -t 30 \
  -o "-p $PORT -k $D -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
PGPID=$(head -1 "$D/data/postmaster.pid")
trap 'runuser -u postgres -- "$PGBIN/pg_ctl" -D "$D/data" -m fast -w stop >/dev/null; rm -rf "$D"' EXIT
PSQL=("$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -q)
"${PSQL[@]}" -c 'CREATE DATABASE bench'
"${PSQL[@]}" -d bench <<SQL
CREATE TABLE big (id BIGINT PRIMARY KEY, payload TEXT NOT NULL, n INTEGER NOT NULL);
INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text), g % 1000 FROM generate_series(1, $ROWS) g;
CREATE TABLE small (id INTEGER PRIMARY KEY, name TEXT);
INSERT INTO small SELECT g, 'n' || g FROM generate_series(1, 1000) g;
VACUUM ANALYZE;
SQL
SIZE=$("${PSQL[@]}" -d bench -At -c "SELECT pg_size_pretty(pg_database_size('bench'))")
echo "database size: $SIZE ($ROWS rows in big), PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), server pid $PGPID"
M="$D/migrations"; mkdir -p "$M"
for i in $(seq 1 50); do
  case $((i % 10)) in
    0) # every 10th: an index over the whole 100 MB table
       echo "CREATE INDEX big_n_$i ON big (n, id);" >"$M/V${i}__index_$i.sql"
       echo "DROP INDEX big_n_$i;" >"$M/U${i}__index_$i.sql" ;;
    5) # a data migration touching 1000 rows
       echo "UPDATE small SET name = name || '_$i';" >"$M/V${i}__rename_$i.sql"
       echo "UPDATE small SET name = left(name, length(name) - length('_$i'));" >"$M/U${i}__rename_$i.sql" ;;
    *) echo "CREATE TABLE t$i (id BIGSERIAL PRIMARY KEY, big_id BIGINT REFERENCES big (id), note TEXT DEFAULT 'x' NOT NULL);
ALTER TABLE small ADD COLUMN c$i INTEGER;" >"$M/V${i}__table_$i.sql"
       echo "ALTER TABLE small DROP COLUMN c$i;
DROP TABLE t$i;" >"$M/U${i}__table_$i.sql" ;;
  esac
done
cargo build --release -q -p slipway-migrate --example bench_dry_run
for r in $(seq 1 "$RUNS"); do
  target/release/examples/bench_dry_run "postgres://postgres@127.0.0.1:$PORT/bench" "$M"
done
