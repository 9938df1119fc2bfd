"""Tests of scripts/bench.py's rendering: what BENCHMARKS.md says is computed from the
results, so a wrong verdict or an empty block would be a wrong claim in the documentation.

Run by scripts/test.sh (`python3 -m unittest discover -s scripts -p 'test_*.py'`).
"""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

FLEET_OUTPUT = """slipway parallelism 20: first 0.58 0.64 0.58; re-run 0.52 0.61 0.57
slipway parallelism 5: first 0.69 0.57 0.69; re-run 0.51 0.56 0.62
pyinfra: first 1.74 1.53 1.50; re-run 1.71 1.51 1.51

20 sshd on 127.0.0.1 (OpenSSH 9.2p1), user deploy, 2 cores, Linux 6; median of 3
slipway parallelism 200: first 6.0 7.0 8.0; re-run 4.0 4.0 4.0
pyinfra: first 10.0 9.0 11.0; re-run 9.0 9.0 9.0

200 sshd on 127.0.0.1 (OpenSSH 9.2p1), user deploy, 2 cores, Linux 6; median of 3
"""


def result(name, output="", records=None, tables=None, extra=None):
    return {
        "name": name,
        "output": output,
        "records": records or [],
        "tables": tables if tables is not None else bench.parse_tables(output),
        "extra": extra or {},
    }


class FleetGoal(unittest.TestCase):
    def test_samples_are_grouped_by_the_host_count_that_follows_them(self):
        s = bench.fleet_samples(FLEET_OUTPUT)
        got = {(x["tool"], x["hosts"], x["parallelism"]): x["first"] for x in s}
        self.assertEqual(got[("slipway", 20, 5)], [0.69, 0.57, 0.69])
        self.assertEqual(got[("pyinfra", 200, 200)], [10.0, 9.0, 11.0])
        self.assertEqual(len(s), 5)

    def test_the_200_host_ratio_of_medians_is_judged_against_the_goal(self):
        lines = bench.goals("fleet", result("fleet", FLEET_OUTPUT))
        goal = [l for l in lines if l.startswith("Goal")]
        self.assertEqual(len(goal), 1)
        # medians 7.0 / 10.0: 0.70 is within the goal (≤ 0.7).
        self.assertIn("0.70×", goal[0])
        self.assertIn("rep by rep 0.60, 0.78, 0.73", goal[0])
        self.assertTrue(goal[0].endswith(", met."), goal[0])
        slower = FLEET_OUTPUT.replace("first 6.0 7.0 8.0", "first 6.0 7.5 8.0")
        goal = [l for l in bench.goals("fleet", result("fleet", slower)) if l.startswith("Goal")]
        self.assertIn("**not met**", goal[0])


class StoreGoal(unittest.TestCase):
    def records(self, pg_group):
        return [
            {"store": "sqlite", "services": 500, "steps": 2000, "steps_per_s": 30000.0},
            {"store": "postgres", "services": 500, "steps": 2000, "steps_per_s": pg_group},
            {"store": "sqlite", "services": 1, "steps": 2000, "steps_per_s": 2000.0},
            {"store": "postgres", "services": 1, "steps": 2000, "steps_per_s": 1500.0},
        ]

    def test_postgres_is_judged_on_each_shape(self):
        lines = bench.goals("store", result("store", records=self.records(14000.0)))
        self.assertIn("group commit 0.47×, **not met**; sequential 0.75×, met.", lines[0])
        lines = bench.goals("store", result("store", records=self.records(15000.0)))
        self.assertIn("group commit 0.50×, met", lines[0])

    def test_verify_rate_is_entries_over_the_median_wall_time(self):
        extra = {"verify": [{"entries": 1_000_000}], "cli_verify_wall_s": [2.0, 0.8, 0.9]}
        lines = bench.goals("store", result("store", records=self.records(15000.0), extra=extra))
        self.assertIn("1,111,111/s", lines[1])
        self.assertTrue(lines[1].endswith("met."))


class Durable(unittest.TestCase):
    def test_medians_of_each_shape_are_judged(self):
        recs = [
            {"services": 1, "steps_per_s": 1.0, "ratio_to_fsync": r} for r in (0.4, 0.5, 2.0)
        ] + [{"services": 1000, "steps_per_s": 1.0, "ratio_to_fsync": r} for r in (19.0, 21.0, 22.0)]
        line = bench.goals("durable", result("durable", records=recs))[0]
        self.assertIn("sequential ≥ 1.8× the fsync rate — 0.50×, **not met**", line)
        self.assertIn("group commit ≥ 20× — 21.00×, met", line)


class Detection(unittest.TestCase):
    OUT = """rate 1000 req/s

| round | T → canary gets no traffic | the failure's 5xx that reached clients (from T) | stopped by |
|---|---|---|---|
| 1 | 29 ms | 4 | guard |
| 2 | 30 ms | 7 | guard |
| 3 | 30 ms | 6 | guard |

healthy canaries

| rounds | canary responses judged | of which errors | false rollbacks | paused (inconclusive) |
|---|---|---|---|---|
| 100 | 30011 | 301 | 1 | 0 |
"""

    def test_bad_responses_and_false_rollbacks_are_read_from_the_tables(self):
        line = bench.goals("detection", result("detection", self.OUT))[0]
        self.assertIn("median 6, **not met**", line)
        self.assertIn("1 in 100, **not met**", line)


class Blocks(unittest.TestCase):
    def test_a_result_the_renderer_finds_nothing_in_is_a_problem(self):
        # The dry run's block rendered empty for a day: render --check must fail on it.
        for name in ("readiness-gate", "fleet-canary"):
            body, problems = bench.body_of(name, result(name, "no table here\n"))
            self.assertEqual(problems, ["empty"], name)
            self.assertIn("Nothing rendered", body)
        body, problems = bench.body_of("readiness-gate", result("readiness-gate", Detection.OUT))
        self.assertEqual(problems, [])
        self.assertIn("| 1 | 29 ms | 4 | guard |", body)

    def test_the_dry_run_renders_every_json_line(self):
        out = (
            "database size: 158 MB (1200000 rows in big), PostgreSQL 15.18, server pid 42\n"
            '{"apply_ms":3254,"clone_dropped":true,"clone_ms":5609,"drop_and_compare_ms":102,'
            '"migrations":50,"slowest_apply":[10,653],"total_ms":9110,"undo_ms":145,'
            '"undo_restores_schema":false}\n'
        )
        body = bench.render_dry_run(result("dry-run", out, records=bench.parse_json_lines(out)))
        self.assertIn("| 1 | 50 | 5.61 | 3.25 | 0.14 | 0.10 | **9.11** | #10 (0.65 s) | **no** | yes |", body)
        self.assertNotIn("pid", body)

    def test_a_goal_that_cannot_be_read_says_so_instead_of_failing_the_render(self):
        line = bench.goals("plan-cli", result("plan-cli", extra={}))[0]
        self.assertTrue(line.startswith("Goal: not judged"), line)


if __name__ == "__main__":
    unittest.main()
