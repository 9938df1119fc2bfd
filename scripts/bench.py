#!/usr/bin/env python3
"""Slipway's benchmarks: one entry point that runs each and keeps its result, and the
generator of BENCHMARKS.md's figures from those results (issue 20 part 1).

    scripts/bench.sh list                  the benchmarks, their commands, their results
    scripts/bench.sh run NAME...           run them; each writes bench/results/NAME.json
    scripts/bench.sh render [--check]      regenerate BENCHMARKS.md's generated blocks

A result is JSON: the benchmark, the exact command, the commit and whether the tree was
clean, the git tree ids of the code it measures (the workspace crates its package depends
on, from `cargo metadata`), machine facts, the load average before and after, the whole
output and what was parsed from it (every table row, every JSON line: the samples).

BENCHMARKS.md keeps its prose; each figure lives between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->` and is rewritten by `render` from bench/results/NAME.json, with
its command, commit, date and load. A figure whose measured code differs from HEAD's is
marked stale, naming what changed; `render --check` fails while any is stale, missing or
renders empty. Each block ends with the goals the issues set for it, judged here on that
result (`goals`), so the prose around the blocks needs no figure of its own.
Not part of CI: the numbers need a machine, not a test.
"""

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "BENCHMARKS.md"


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, cwd=ROOT, text=True, capture_output=True, **kw)


def generated_spec(services, edges):
    """The spec of crates/slipway-model/benches/plan.rs (`generated_spec`), line for line,
    so `slipway plan` plans what criterion measures."""
    out = [
        "apiVersion: slipway/v1",
        "kind: Release",
        "metadata: { name: big, version: 1.0.0, type: feature }",
        "services:",
    ]
    layers = 20
    per_layer = services // layers
    with_deps = services - per_layer
    remaining = edges
    for i in range(services):
        layer = i // per_layer
        deps = []
        if layer > 0:
            left = with_deps - (i - per_layer)
            want = min(-(-remaining // left), i)
            for k in range(want):
                d = (i * 7919 + k * 104_729) % (layer * per_layer)
                if d not in deps:
                    deps.append(d)
            remaining -= min(len(deps), remaining)
        names = ", ".join(f"s{d}" for d in deps)
        out.append(
            f'  s{i}: {{ depends_on: [{names}], steps: [ {{ name: install, run: "echo {i}", undo: "echo undo {i}" }} ] }}'
        )
    out.append(
        "environments:\n  prod: { production: true, target: { exec: {} }, approvals: { required: 2 } }"
    )
    return "\n".join(out) + "\n"


def plan_cli_command():
    """hyperfine of `slipway plan` on the 2,000-service spec, in a directory of its own."""
    d = Path(tempfile.mkdtemp(prefix="bench-plan-cli-", dir=ROOT / "target"))
    (d / "release.yaml").write_text(generated_spec(2000, 10000))
    return (
        "cargo build --release -q -p slipway-cli --bin slipway && "
        f"cd {d} && git init -q && git add -A && git -c user.email=b@b -c user.name=b commit -qm spec && "
        # The generated prod plan carries blocking findings (`canary-required`,
        # `checks-missing`: the release type's policy), so `plan` exits 3 after planning
        # everything; any other code is a failure of the benchmark.
        f"{{ {ROOT}/target/release/slipway plan -f release.yaml --env prod --output json > /dev/null; "
        'rc=$?; [ $rc -eq 0 ] || [ $rc -eq 3 ]; } && '
        "hyperfine -N -i --warmup 3 --runs 30 --export-json hyperfine.json "
        f"'{ROOT}/target/release/slipway plan -f release.yaml --env prod --output json' && cat hyperfine.json"
    )


# name: (title, package whose code it measures, command, setup). Commands run from the
# repository root with bash; CARGO_TARGET_DIR is honoured by every script.
BENCHES = {
    "plan": (
        "Planning 2,000 services / 10,000 edges (criterion)",
        ["slipway-model"],
        "cargo bench -q -p slipway-model --bench plan -- --noplot",
    ),
    "plan-cli": (
        "`slipway plan` of 2,000 services end to end (hyperfine)",
        ["slipway-cli"],
        None,  # plan_cli_command()
    ),
    "durable": (
        "Durable engine: sequential and group commit beside the fsync rate",
        ["slipway-store"],
        "cargo build --release -q -p slipway-store --example bench_durable && "
        "for r in 1 2 3; do "
        "${CARGO_TARGET_DIR:-target}/release/examples/bench_durable 1000 4 target 1; "
        "${CARGO_TARGET_DIR:-target}/release/examples/bench_durable 4 256 target 1000; "
        "done",
    ),
    "store": (
        "Stores: PostgreSQL beside SQLite, audit verify",
        ["slipway-store", "slipway-cli"],
        "crates/slipway-store/benches/store.sh 1000000 2000",
    ),
    "detection": (
        "Detection: a canary that breaks under 1,000 req/s",
        ["slipway-providers", "demo-app"],
        "cargo build --release -q -p demo-app && "
        "cargo run --release -q -p slipway-providers --example detection -- 10 1000 100 0.01",
    ),
    "proxy": (
        "Proxy overhead beside nginx and HAProxy",
        ["slipway-proxy", "demo-app"],
        "ROUNDS=5 DURATION=5s crates/slipway-proxy/benches/proxy_overhead.sh",
    ),
    "proxy-instructions": (
        "Proxy instructions per request (callgrind)",
        ["slipway-proxy"],
        "ROUNDS=1 DURATION=5s crates/slipway-proxy/benches/proxy_instructions.sh",
    ),
    "fleet": (
        "Fleet deploy over SSH beside pyinfra and ansible-core",
        ["slipway-cli"],
        "HOSTS=20 crates/slipway-cli/benches/fleet_deploy.sh && "
        "HOSTS=50 PAR2= crates/slipway-cli/benches/fleet_deploy.sh && "
        # Five reps at 200 hosts: the goal is judged there, and pyinfra's wall time moves
        # from run to run on a 2-core machine running 200 sshd.
        'HOSTS=200 REPS=9 TOOLS="slipway pyinfra" PAR2= crates/slipway-cli/benches/fleet_deploy.sh',
    ),
    "dry-run": (
        "Migration dry run of 50 migrations on 158 MB",
        ["slipway-migrate"],
        "crates/slipway-migrate/benches/dry_run.sh",
    ),
    "readiness-gate": (
        "Pre-deploy readiness gate on 10 and 50 sshd hosts",
        ["slipway-cli"],
        "cargo test -q -p slipway-cli --test runner readiness_gate_bench -- --ignored --nocapture",
    ),
    "fleet-canary": (
        "Fleet canary on 10 and 50 sshd hosts: detection behind HAProxy and nginx, a rolling release beside ansible-core",
        ["slipway-cli"],
        # ansible-core comes from pip when missing (never from the test suite); its real
        # path, not a pyenv shim, so the shim's start-up is not timed. Without it the
        # benchmark's ansible row says so. Slipway is measured as its release binary (as
        # the `fleet` benchmark does), which every instance of both tools also runs.
        "{ command -v ansible-playbook >/dev/null || pip install -q ansible-core "
        "|| echo 'pip install ansible-core failed' >&2; } && "
        "cargo build --release -q -p slipway-cli --bin slipway && "
        "ANSIBLE_PLAYBOOK=$( { pyenv which ansible-playbook || command -v ansible-playbook; } 2>/dev/null ) "
        "SLIPWAY_BIN=$(cargo metadata --format-version 1 --no-deps "
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"target_directory\"])')/release/slipway "
        "cargo test -q -p slipway-cli --test runner fleet_canary_bench -- --ignored --nocapture",
    ),
    "server-api": (
        "Server API on PostgreSQL: status and approve at 50 clients, runs started/s, takeover after kill -9",
        ["slipway-cli", "slipway-server"],
        "crates/slipway-server/benches/api.sh",
    ),
    "crash": (
        "Crash recovery, long tier (500 SIGKILLs)",
        ["slipway-cli"],
        "SLIPWAY_CRASH_ROUNDS=500 cargo test -q -p slipway-cli --test runner crash_long -- --ignored --nocapture",
    ),
}


def command_of(name):
    cmd = BENCHES[name][2]
    return cmd if cmd is not None else plan_cli_command()


def shown_command(name):
    """The command as BENCHMARKS.md shows it (the plan-cli one builds a temp dir)."""
    if name == "plan-cli":
        return (
            "slipway plan -f release.yaml --env prod --output json  # hyperfine -N --warmup 3 --runs 30, "
            "in a git repo holding the spec of benches/plan.rs"
        )
    return BENCHES[name][2]


def workspace_paths(packages):
    """Directories of the workspace crates `packages` depend on (normal, dev and build
    dependencies, transitively), plus Cargo.lock: the code a figure measures."""
    meta = json.loads(sh("cargo metadata --format-version 1 --offline").stdout)
    members = set(meta["workspace_members"])
    by_id = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    todo = [pid for pid in members if by_id[pid]["name"] in packages]
    seen = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(d["pkg"] for d in nodes[pid]["deps"] if d["pkg"] in members)
    dirs = sorted(
        str(Path(by_id[p]["manifest_path"]).parent.relative_to(ROOT)) for p in seen
    )
    return dirs + ["Cargo.lock"]


def trees(paths, rev="HEAD"):
    out = {}
    for p in paths:
        r = sh(f"git rev-parse {rev}:{p}")
        out[p] = r.stdout.strip() if r.returncode == 0 else None
    return out


def machine():
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "mem_gib": round(int(mem) / 1024 / 1024, 1),
    }


def loadavg():
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def parse_tables(text):
    """Every markdown table in the output, with the last non-empty line before it."""
    tables, caption, cur = [], "", None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("{") and cur is not None:
            # A JSON record between rows (parse_json_lines keeps it) does not end a table.
            continue
        if s.startswith("|") and s.endswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if cur is None:
                cur = {"caption": caption, "columns": cells, "rows": []}
                tables.append(cur)
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                cur["rows"].append(cells)
        else:
            cur = None
            if s:
                caption = s
    return tables


def parse_json_lines(text):
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("{") and s.endswith("}"):
            try:
                out.append(json.loads(s))
            except json.JSONDecodeError:
                pass
    return out


def parse_extra(name, text):
    """Samples the generic parsers do not see."""
    if name == "plan":
        base = ROOT / "target" / "criterion" / "plan-2000-services-10000-edges"
        if "CARGO_TARGET_DIR" in os.environ:
            base = Path(os.environ["CARGO_TARGET_DIR"]) / "criterion" / base.name
        out = {}
        for bench in ["validate", "plan", "validate+plan"]:
            d = base / bench / "new"
            est = json.loads((d / "estimates.json").read_text())
            sample = json.loads((d / "sample.json").read_text())
            out[bench] = {
                "mean_ns": est["mean"]["point_estimate"],
                "mean_low_ns": est["mean"]["confidence_interval"]["lower_bound"],
                "mean_high_ns": est["mean"]["confidence_interval"]["upper_bound"],
                "median_ns": est["median"]["point_estimate"],
                "samples_ns_per_iter": [
                    t / i for t, i in zip(sample["times"], sample["iters"])
                ],
            }
        return {"criterion": out}
    if name == "plan-cli":
        start = text.find('{\n  "results"')
        if start >= 0:
            return {"hyperfine": json.loads(text[start:])}
    if name == "server-api":
        return parse_server_api(text)
    if name == "crash":
        m = re.findall(r"crash tier: .*", text)
        return {"summary": m}
    if name == "store":
        verify = [
            {"round": int(r), "entries": int(e), "seconds": float(s), "entries_per_s": float(v)}
            for r, e, s, v in re.findall(
                r"round (\d+): verified (\d+) entries, .* in ([\d.]+) s: (\d+) entries/s", text
            )
        ]
        wall = re.findall(r"([\d.]+) s wall, ([\d.]+) s user, ([\d.]+) s sys", text)
        ossl = re.findall(r"^sha256\s+(.*)$", text, re.M)
        built = re.findall(r"hashed bytes per entry: (\d+)", text)
        return {
            "verify": verify,
            "cli_verify_wall_s": [float(w[0]) for w in wall],
            "openssl_sha256": ossl,
            "bytes_per_entry": built,
        }
    return {}


def wrk_ms(v):
    """A wrk duration (`812.00us`, `8.01ms`, `1.20s`) in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    if not m:
        return None
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def parse_server_api(text):
    """The wrk runs (one per `== METHOD route, N clients` header) and the takeover times."""
    wrk = []
    for part in re.split(r"^== ", text, flags=re.M)[1:]:
        head = part.splitlines()[0]
        m = re.match(r"(GET|POST) (\S+), (\d+) clients", head)
        if not m:
            continue
        # wrk pads some values with a trailing space (`1.25s `).
        pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", part, re.M))
        reqs = re.search(r"(\d+) requests in ([\d.]+\w+)", part)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", part)
        errors = re.search(r"Socket errors: (.*)", part)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", part)
        wrk.append({
            "route": f"{m.group(1)} {m.group(2)}",
            "clients": int(m.group(3)),
            "p50_ms": wrk_ms(pct.get("50", "")),
            "p90_ms": wrk_ms(pct.get("90", "")),
            "p99_ms": wrk_ms(pct.get("99", "")),
            "requests": int(reqs.group(1)) if reqs else None,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else None,
            "requests_per_s": float(rps.group(1)) if rps else None,
        })
    takeover = [int(x) for x in re.findall(r"takeover after kill -9: (\d+) ms", text)]
    return {"wrk": wrk, "takeover_ms": takeover}


def render_server_api(r):
    out = []
    for t in r["tables"]:
        out.append("Runs started through `POST /api/v1/runs` (planned, journaled, stopped at their approvals gate):")
        out.append(md_table(t["columns"], t["rows"]))
    rows = [[f"`{w['route']}`", w["clients"], f"{w['requests']:,}" if w["requests"] else "?",
             w["non_2xx"], w["socket_errors"] or "none",
             f"{w['requests_per_s']:,.0f}" if w["requests_per_s"] else "?",
             f"**{w['p50_ms']:.1f} ms**" if w["p50_ms"] is not None else "?",
             f"{w['p90_ms']:.1f} ms" if w["p90_ms"] is not None else "?",
             f"**{w['p99_ms']:.1f} ms**" if w["p99_ms"] is not None else "?"]
            for w in r["extra"].get("wrk", [])]
    if rows:
        out.append(md_table(["route", "clients", "requests", "non-2xx", "socket errors", "req/s", "p50", "p90", "p99"], rows))
    t = r["extra"].get("takeover_ms", [])
    if t:
        out.append(f"Takeover after kill -9 (the other server drives the canary; lease claim freed by the "
                   f"dead process, `--takeover-interval 200ms`): {', '.join(f'{x} ms' for x in t)}"
                   f" (median {median(t):.0f} ms).")
    return "\n\n".join(out)


def run(name):
    if name not in BENCHES:
        sys.exit(f"unknown benchmark {name}: scripts/bench.sh list")
    title, packages, _ = BENCHES[name]
    cmd = command_of(name)
    head = sh("git rev-parse HEAD").stdout.strip()
    # Results and the rendered file are this script's outputs, not the measured code: a
    # run after another one left its result uncommitted is still a clean measurement.
    dirty = (
        sh(
            "git status --porcelain --untracked-files=no -- . "
            "':(exclude)bench/results' ':(exclude)BENCHMARKS.md'"
        ).stdout.strip()
        != ""
    )
    paths = workspace_paths(packages)
    started = datetime.datetime.now(datetime.timezone.utc)
    before = loadavg()
    print(f"== {name}: {cmd}", file=sys.stderr)
    proc = subprocess.Popen(
        ["bash", "-c", cmd], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        lines.append(line)
    rc = proc.wait()
    after = loadavg()
    text = "".join(lines)
    result = {
        "name": name,
        "title": title,
        "command": shown_command(name),
        "ran": cmd,
        "exit": rc,
        "commit": head,
        "dirty": dirty,
        "trees": trees(paths),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(
            (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1
        ),
        "machine": machine(),
        "load_before": before,
        "load_after": after,
        "tables": parse_tables(text),
        "records": parse_json_lines(text),
        "extra": parse_extra(name, text),
        "output": text,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"== {name}: exit {rc}, written bench/results/{name}.json", file=sys.stderr)
    return rc


# ---------------------------------------------------------------------------------------
# Rendering


def md_table(columns, rows):
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def ms(ns):
    return f"{ns / 1e6:.1f} ms"


def render_plan(r):
    rows = []
    for b, e in r["extra"]["criterion"].items():
        rows.append(
            [b, f"{ms(e['mean_low_ns'])} / **{ms(e['mean_ns'])}** / {ms(e['mean_high_ns'])}",
             ms(e["median_ns"]), len(e["samples_ns_per_iter"])]
        )
    return md_table(["step", "mean [low **mean** high]", "median", "samples"], rows)


def render_plan_cli(r):
    res = r["extra"]["hyperfine"]["results"][0]
    t = sorted(res["times"])
    return md_table(
        ["command", "runs", "mean", "median", "min", "max"],
        [[f"`{res['command'].split('/')[-1]}`", len(t), f"{res['mean'] * 1e3:.1f} ms",
          f"{res['median'] * 1e3:.1f} ms", f"{t[0] * 1e3:.1f} ms", f"{t[-1] * 1e3:.1f} ms"]],
    )


def render_durable(r):
    rows = []
    recs = [x for x in r["records"] if "steps_per_s" in x]
    for i, rec in enumerate(recs):
        shape = (
            f"1 service × {rec['steps']} steps (sequential)"
            if rec["services"] == 1
            else f"{rec['services']} services × {rec['steps'] // rec['services']} steps"
        )
        rows.append([
            i // 2 + 1, shape, rec["parallelism"], f"{rec['steps_per_s']:,.0f}",
            f"{rec['fsync_per_s']:,.0f}", f"**{rec['ratio_to_fsync']:.2f}×**",
            f"{rec['overwrite_fsync_per_s']:,.0f}", f"{rec['ratio_to_overwrite_fsync']:.2f}×",
        ])
    out = md_table(
        ["round", "shape", "parallelism", "durable steps/s", "fsync/s appending",
         "÷ appending", "fsync/s in place", "÷ in place"], rows)
    for seq in (True, False):
        pick = [x for x in recs if (x["services"] == 1) == seq]
        if pick:
            out += (f"\n\nMedian {'sequential' if seq else 'group commit'} ({len(pick)} rounds): "
                    f"**{median([x['ratio_to_fsync'] for x in pick]):.2f}× the appending fsync rate**, "
                    f"{median([x['ratio_to_overwrite_fsync'] for x in pick]):.2f}× the in-place one")
    return out


def render_store(r):
    out = []
    rows = [[
        rec["store"], f"{rec['services']} × {rec['steps'] // rec['services']}", rec["parallelism"],
        f"{rec['steps_per_s']:,.0f}", f"{rec['fsync_per_s']:,.0f}", f"{rec['ratio_to_fsync']:.2f}×",
    ] for rec in r["records"] if "steps_per_s" in rec]
    if rows:
        out.append(md_table(
            ["store", "services × steps", "parallelism", "durable steps/s", "fsync/s", "÷ fsync"], rows))
    v = r["extra"].get("verify", [])
    if v:
        half = len(v) // 2
        rows = [["SQLite" if i < half else "PostgreSQL", x["round"], f"{x['entries']:,}",
                 f"{x['seconds']:.3f} s", f"{x['entries_per_s']:,.0f}"] for i, x in enumerate(v)]
        out.append(md_table(["store", "round", "entries", "verify_store", "entries/s"], rows))
    w = r["extra"].get("cli_verify_wall_s", [])
    if w:
        out.append(f"`slipway audit verify` (release) on the SQLite store: {', '.join(f'{x:.2f} s' for x in w)} wall.")
    o = r["extra"].get("openssl_sha256", [])
    if o:
        out.append(f"`openssl speed sha256` at {r['extra']['bytes_per_entry'][0]} bytes, one core: `{o[0]}` (bytes/s in thousands).")
    return "\n\n".join(out)


def render_crash(r):
    s = r["extra"].get("summary") or ["(no summary line: see the output in the result file)"]
    return "\n".join(f"- {x}" for x in s)


def render_tables(r):
    out = []
    # Parsed again from the output, so a parser fix applies to results already recorded.
    for t in parse_tables(r["output"]):
        if t["caption"]:
            out.append(t["caption"])
        out.append(md_table(t["columns"], t["rows"]))
    tail = [l for l in r["output"].splitlines() if l.startswith("median ")]
    out += tail
    return "\n\n".join(out)


def render_dry_run(r):
    recs = [x for x in r["records"] if "apply_ms" in x]
    rows = [[
        i + 1, x["migrations"], f"{x['clone_ms'] / 1e3:.2f}", f"{x['apply_ms'] / 1e3:.2f}",
        f"{x['undo_ms'] / 1e3:.2f}", f"{x['drop_and_compare_ms'] / 1e3:.2f}",
        f"**{x['total_ms'] / 1e3:.2f}**",
        f"#{x['slowest_apply'][0]} ({x['slowest_apply'][1] / 1e3:.2f} s)",
        "yes" if x["undo_restores_schema"] else "**no**",
        "yes" if x["clone_dropped"] else "**no**",
    ] for i, x in enumerate(recs)]
    # The server's pid is of no use to a reader.
    head = [re.sub(r", server pid \d+", "", l) for l in r["output"].splitlines()
            if l.startswith("database size:")]
    out = head[:1]
    out.append(md_table(
        ["run", "migrations", "clone (s)", "apply (s)", "undo (s)", "drop + compare (s)",
         "total (s)", "slowest apply", "undo restores the schema", "clone dropped"], rows))
    return "\n\n".join(out)


def fleet_samples(text):
    """The per-rep samples the fleet script prints before each size's table
    (`slipway parallelism 200: first 5.22 5.65 7.48; re-run …`, `pyinfra: first …`), with
    the host count of the table that follows them."""
    out, pending = [], []
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?: parallelism (\d+))?: first ([\d. ]+);", line)
        if m:
            pending.append({"tool": m.group(1), "parallelism": int(m.group(2)) if m.group(2) else None,
                            "first": [float(x) for x in m.group(3).split()]})
            continue
        m = re.match(r"^(\d+) sshd on ", line)
        if m:
            for x in pending:
                x["hosts"] = int(m.group(1))
                x["parallelism"] = x["parallelism"] or x["hosts"]
            out += pending
            pending = []
    return out


def verdict(ok):
    return "met" if ok else "**not met**"


def column(t, name):
    i = t["columns"].index(name)
    return [row[i] for row in t["rows"]]


def goals(name, r):
    """Each goal the issues set for this benchmark, judged on this result: computed here so
    the prose around the blocks carries no figure that could go stale."""
    try:
        return _goals(name, r)
    except (KeyError, ValueError, IndexError, ZeroDivisionError, TypeError) as e:
        return [f"Goal: not judged ({type(e).__name__}: {e}): see the output in the result file."]


def _goals(name, r):
    out = []
    if name == "durable":
        recs = [x for x in r["records"] if "steps_per_s" in x]
        seq = median([x["ratio_to_fsync"] for x in recs if x["services"] == 1])
        grp = median([x["ratio_to_fsync"] for x in recs if x["services"] != 1])
        out.append(f"Goals (issue 20 part 2), medians above: sequential ≥ 1.8× the fsync rate — "
                   f"{seq:.2f}×, {verdict(seq >= 1.8)}; group commit ≥ 20× — {grp:.2f}×, {verdict(grp >= 20)}.")
    elif name == "store":
        recs = {(x["store"], x["services"] == 1): x["steps_per_s"] for x in r["records"] if "steps_per_s" in x}
        g = recs[("postgres", False)] / recs[("sqlite", False)]
        s = recs[("postgres", True)] / recs[("sqlite", True)]
        out.append(f"Goal (issue 20 part 3): PostgreSQL ≥ 0.5× SQLite — group commit {g:.2f}×, "
                   f"{verdict(g >= 0.5)}; sequential {s:.2f}×, {verdict(s >= 0.5)}.")
        v, w = r["extra"].get("verify", []), r["extra"].get("cli_verify_wall_s", [])
        if v and w:
            rate = v[0]["entries"] / median(w)
            out.append(f"Goal (issue 20 part 4): audit verify ≥ 1,000,000 entries/s on SQLite — the release CLI "
                       f"{rate:,.0f}/s (median wall), {verdict(rate >= 1e6)}.")
    elif name == "plan":
        m = r["extra"]["criterion"]["validate+plan"]["mean_ns"] / 1e6
        out.append(f"Goal (issue 20 part 5): validate+plan < 70 ms — mean {m:.1f} ms, {verdict(m < 70)}.")
    elif name == "plan-cli":
        res = r["extra"]["hyperfine"]["results"][0]
        m, md = res["mean"] * 1e3, res["median"] * 1e3
        out.append(f"Goal (issue 20 part 5): the CLI < 100 ms — mean {m:.1f} ms, median {md:.1f} ms, "
                   f"{verdict(m < 100 and md < 100)}.")
    elif name == "detection":
        t1, t2 = r["tables"][0], r["tables"][1]
        bad = median([int(x) for x in column(t1, "the failure's 5xx that reached clients (from T)")])
        rounds = sum(int(x) for x in column(t2, "rounds"))
        fr = sum(int(x) for x in column(t2, "false rollbacks"))
        out.append(f"Goals (issue 20 part 7): a hard failure stopped in ≤ 5 bad responses — median {bad:g}, "
                   f"{verdict(bad <= 5)}; 0 false rollbacks in 100 healthy rounds — {fr} in {rounds}, "
                   f"{verdict(fr == 0 and rounds >= 100)}.")
    elif name == "proxy":
        t = [t for t in r["tables"] if "slipway / nginx" in t["columns"]][0]
        n = median([float(x) for x in column(t, "slipway / nginx")])
        h = median([float(x) for x in column(t, "slipway / haproxy")])
        out.append(f"Bar (the brief: the embedded proxy stays on hyper if it is within 10 % of nginx per core "
                   f"and at HAProxy's throughput): median of the paired rounds {n:.2f}× nginx, {h:.2f}× HAProxy.")
    elif name == "fleet":
        s = fleet_samples(r["output"])
        by = {(x["tool"], x["hosts"]): x for x in s if x["parallelism"] == x["hosts"]}
        for hosts in sorted({x["hosts"] for x in s}):
            a, b = by.get(("slipway", hosts)), by.get(("pyinfra", hosts))
            if not (a and b):
                continue
            ratio = median(a["first"]) / median(b["first"])
            paired = [x / y for x, y in zip(a["first"], b["first"])]
            line = (f"{hosts} hosts, first deploy: Slipway ÷ pyinfra {ratio:.2f}× (medians of "
                    f"{len(a['first'])}; rep by rep {', '.join(f'{x:.2f}' for x in paired)})")
            if hosts == 200:
                line = f"Goal (issue 20 part 6): ≤ 0.7× pyinfra at 200 hosts — " + line + f", {verdict(ratio <= 0.7)}."
            out.append(line)
    return out


RENDER = {
    "plan": render_plan,
    "plan-cli": render_plan_cli,
    "durable": render_durable,
    "store": render_store,
    "crash": render_crash,
    "server-api": render_server_api,
    "dry-run": render_dry_run,
}


def short(rev):
    return rev[:9]


def staleness(r):
    """Paths whose tree at HEAD differs from the one measured, in code the benchmark runs.

    A crate's integration tests (`<crate>/tests/`) are built into no binary but their own
    test runner: a change there leaves a figure standing unless the benchmark runs that
    crate's tests (`cargo test -p <its package>`, e.g. the crash tier)."""
    now = trees(list(r["trees"]))
    changed = [p for p, t in r["trees"].items() if now.get(p) != t]
    packages, cmd = BENCHES[r["name"]][1], r.get("ran", "")
    runs_tests_of = {f"crates/{p}" for p in packages} if "cargo test" in cmd else set()
    stale = []
    for p in changed:
        if p in runs_tests_of or p == "Cargo.lock":
            stale.append(p)
            continue
        files = sh(f"git diff --name-only {r['commit']} HEAD -- {p}")
        if files.returncode != 0 or any(
            not f.startswith(f"{p}/tests/") for f in files.stdout.split()
        ):
            stale.append(p)
    return stale


def block(name):
    f = RESULTS / f"{name}.json"
    if not f.exists():
        return f"**Not measured yet**: `scripts/bench.sh run {name}`.", ["missing"]
    r = json.loads(f.read_text())
    changed = staleness(r)
    problems = []
    m = r["machine"]
    head = (
        f"`scripts/bench.sh run {name}` → `{r['command']}`  \n"
        f"commit `{short(r['commit'])}`{' + uncommitted changes' if r['dirty'] else ''}, "
        f"{r['started'].replace('T', ' ').replace('+00:00', ' UTC')}, {r['seconds']:.0f} s; "
        f"{m['cpus']} × {m['cpu']}, Linux {m['kernel']}; load average "
        f"{r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after"
    )
    if r["exit"] != 0:
        head += f"; **exit status {r['exit']}**"
        problems.append("failed")
    if r["dirty"]:
        problems.append("dirty")
    if changed:
        shown = ", ".join(changed[:6]) + (" …" if len(changed) > 6 else "")
        head += f"  \n**Stale**: the code measured changed since ({shown})"
        problems.append("stale")
    body, empty = body_of(name, r)
    problems += empty
    return head + "\n\n" + body, problems


def body_of(name, r):
    """A block's figures and goal verdicts, and `["empty"]` when the renderer found nothing
    in the output: an empty block reads as if the benchmark had nothing to say (the dry
    run's did, unnoticed, for a day)."""
    body = RENDER.get(name, render_tables)(r)
    if not body.strip():
        return ("**Nothing rendered**: the output has no figure this script can read; "
                "see the result file."), ["empty"]
    return "\n\n".join([body] + goals(name, r)), []


def render(check):
    text = DOC.read_text()
    bad = {}

    def sub(m):
        name = m.group(1)
        if name not in BENCHES:
            bad[name] = ["unknown"]
            return m.group(0)
        body, problems = block(name)
        if problems:
            bad[name] = problems
        return f"<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->"

    new = re.sub(r"<!-- bench:([\w-]+) -->\n.*?<!-- /bench:\1 -->", sub, text, flags=re.S)
    listed = set(re.findall(r"<!-- bench:([\w-]+) -->", new))
    for name in BENCHES:
        if name not in listed:
            bad[name] = ["no block in BENCHMARKS.md"]
    if not check:
        DOC.write_text(new)
    for name, problems in sorted(bad.items()):
        print(f"{name}: {', '.join(problems)}", file=sys.stderr)
    if check and (bad or new != text):
        sys.exit(1)


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    if args[0] == "list":
        for name, (title, _, _) in BENCHES.items():
            f = RESULTS / f"{name}.json"
            state = "not measured"
            if f.exists():
                r = json.loads(f.read_text())
                state = f"measured at {short(r['commit'])}" + (" (stale)" if staleness(r) else "")
            print(f"{name:20} {title} — {state}\n{'':20} {shown_command(name)}")
        return
    if args[0] == "run":
        names = list(BENCHES) if args[1:] == ["all"] else args[1:]
        worst = 0
        for n in names:
            worst = max(worst, run(n))
        sys.exit(worst)
    if args[0] == "render":
        render("--check" in args[1:])
        return
    sys.exit(f"unknown command {args[0]}: scripts/bench.sh --help")


if __name__ == "__main__":
    main()
