"""The alert rules under deploy/ (drift, anomaly-rate jump, a silent line) are valid Prometheus
rules, fire on the cases in tests/alerts.promtool.yaml and stay quiet on the others (promtool,
from Debian's `prometheus` package, which .ci/run installs), and name only metrics the worker
exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from worker.metrics import WorkerMetrics

RULE = REPO / "deploy" / "k8s" / "components" / "alerts" / "prometheusrule.yaml"
CASES = REPO / "tests" / "alerts.promtool.yaml"
ALERTS = {"GradScoreDrift", "GradAnomalyRateJump", "GradLineSilent"}


def rules_file(tmp: Path) -> Path:
    """The PrometheusRule's spec as a plain rules file (what a Prometheus without the operator
    loads), beside a copy of the cases."""
    spec = yaml.safe_load(RULE.read_text())["spec"]
    (tmp / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(CASES, tmp / "cases.yaml")
    return tmp / "rules.yaml"


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run installs it)")
    return tool


def test_the_rules_are_valid_and_their_cases_pass(tmp_path: Path) -> None:
    tool = promtool()
    rules = rules_file(tmp_path)
    check = subprocess.run([tool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        [tool, "test", "rules", "cases.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_is_there_and_reads_only_what_the_worker_exports() -> None:
    spec = yaml.safe_load(RULE.read_text())["spec"]
    rules = [r for g in spec["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules if "alert" in r} == ALERTS
    recorded = {r["record"] for r in rules if "record" in r}
    exported = set()
    for family in WorkerMetrics().registry.collect():
        # A labelled family has no samples until it is used: its names come from its type.
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        exported |= {family.name + x for x in suffixes.get(family.type, ("",))}
    for r in rules:
        for name in re.findall(r"\b(grad[a-z0-9_:]*)", r["expr"]):
            assert name in exported or name in recorded, (name, r.get("alert") or r["record"])
    cases = yaml.safe_load(CASES.read_text())["tests"]
    tested = {t["alertname"] for c in cases for t in c["alert_rule_test"]}
    assert tested == ALERTS
