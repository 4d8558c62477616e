"""The alerts of deploy/base/prometheusrule.yaml, checked and unit-tested by Prometheus's own promtool.

The rule file promtool reads is written from the PrometheusRule itself (``rules_file``), and
the cases live beside it (``deploy/base/prometheusrule_test.yaml``), so neither can drift.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy_manifests import DEPLOY, alert_groups
from tests.prometheus import binary, rules_file

CASES = DEPLOY / "base" / "prometheusrule_test.yaml"


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    rules_file(tmp_path)
    shutil.copy(CASES, tmp_path / CASES.name)
    return tmp_path


def promtool(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], check=False, cwd=workdir, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules(workdir):
    checked = promtool(workdir, "check", "rules", "leanserve-rules.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = [rule["alert"] for group in alert_groups() for rule in group["rules"]]
    assert f"SUCCESS: {len(alerts)} rules found" in checked.stdout


def test_promtool_unit_tests_pass(workdir):
    tested = promtool(workdir, "test", "rules", CASES.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    alerts = {rule["alert"] for group in alert_groups() for rule in group["rules"]}
    assert {"LeanserveEngineNotReady", "LeanserveTargetDown", "LeanserveHighErrorRate", "LeanserveTTFTP99AboveSLO",
            "LeanserveQueueBacklog", "LeanserveQueueGrowing"} <= alerts
    cases = [case for test in yaml.safe_load(CASES.read_text())["tests"] for case in test.get("alert_rule_test", [])]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert fires == alerts, f"alerts never shown firing: {sorted(alerts - fires)}"
    assert quiet == alerts, f"alerts never shown quiet: {sorted(alerts - quiet)}"
    # A firing case pins the rendered annotations, so a broken template fails too.
    assert all(expected.get("exp_annotations") for case in cases for expected in case["exp_alerts"])


def test_a_wrong_expectation_fails(workdir):
    """The harness can fail: a case expecting the TTFT alert on the fast model is refused."""
    cases = yaml.safe_load((workdir / CASES.name).read_text())
    firing = next(case for test in cases["tests"] for case in test["alert_rule_test"]
                  if case["alertname"] == "LeanserveTTFTP99AboveSLO" and case["exp_alerts"])
    firing["exp_alerts"][0]["exp_labels"]["model"] = "fast"
    (workdir / "wrong_test.yaml").write_text(yaml.safe_dump(cases))
    tested = promtool(workdir, "test", "rules", "wrong_test.yaml")
    assert tested.returncode != 0 and "FAILED" in tested.stdout + tested.stderr
