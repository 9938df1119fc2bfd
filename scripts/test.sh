#!/usr/bin/env bash
# The whole test suite: installs what the tests need (real PostgreSQL, sshd, nginx,
# HAProxy, minisign, sqlite3, Prometheus, Chromium for the web UI) when missing, then runs every test (the tidy test checks crate edges).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v minisign >/dev/null || need+=(minisign)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v wrk >/dev/null || need+=(wrk)
command -v prometheus >/dev/null || need+=(prometheus)
command -v rpmbuild >/dev/null || need+=(rpm)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v wixl >/dev/null || need+=(wixl)
command -v msiinfo >/dev/null || need+=(msitools)
command -v git >/dev/null || need+=(git)
command -v chromium >/dev/null || need+=(chromium)
command -v openssl >/dev/null || need+=(openssl)
command -v npm >/dev/null || need+=(npm)
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
# Container services (container_cli): rootful podman with runc; skopeo reads the images
# `slipway package image` builds.
command -v podman >/dev/null || need+=(podman)
[ -x /usr/sbin/runc ] || need+=(runc)
command -v skopeo >/dev/null || need+=(skopeo)
command -v docker-registry >/dev/null || need+=(docker-registry)
# The crash test that fills a store's file system mounts a small tmpfs (as root).
command -v mount >/dev/null || need+=(mount)
command -v pg_dump >/dev/null || ls /usr/lib/postgresql/*/bin/pg_dump >/dev/null 2>&1 || need+=(postgresql-client)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test dependencies: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# A real SMTP server for the notification tests.
python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install -q aiosmtpd >/dev/null
# squawk, the PostgreSQL migration linter the lock classification is cross-checked against.
command -v squawk >/dev/null || python3 -m pip install -q squawk-cli >/dev/null

# Reference implementations the judgement cross-checks compare against (issue 18):
# scipy's Mann-Whitney U, croniter for deployment windows, check-jsonschema for the schema;
# each cross-check fails in CI (CI set) when its tool is missing, and is skipped loudly elsewhere.
python3 -c 'import scipy.stats' 2>/dev/null || python3 -m pip install -q scipy >/dev/null
python3 -c 'import croniter' 2>/dev/null || python3 -m pip install -q croniter >/dev/null
python3 -c 'import check_jsonschema' 2>/dev/null || python3 -m pip install -q check-jsonschema >/dev/null
# openapi-diff for the OpenAPI differ's cross-check (oasdiff has no PyPI/npm build).
[ -f "$(npm root -g)/openapi-diff/package.json" ] || npm install -g -q openapi-diff@0.24.1 >/dev/null
# playwright-core drives the apt Chromium through the web UI's sign-in form (serve_cli); it
# never downloads a browser of its own.
[ -f "$(npm root -g)/playwright-core/package.json" ] || npm install -g -q playwright-core@1.65.2 >/dev/null

# bench.py computes what BENCHMARKS.md claims (goal verdicts, empty blocks): its own tests.
python3 -m unittest discover -q -s scripts -p 'test_*.py'
cargo test --workspace --all-targets --no-fail-fast "$@"
