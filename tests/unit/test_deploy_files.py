"""The deployment files stay true to the code: real settings, real endpoints, enough grace."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from scheduler.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _setting_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(f"SCHEDULER_{name.upper()}")
        if field.alias:
            names.add(field.alias.upper())
    return names


def test_every_scheduler_variable_in_the_deploy_files_is_a_setting():
    known = _setting_names()
    for path in ("Dockerfile", "docker-compose.yml", "deploy/kubernetes.yaml"):
        used = set(re.findall(r"SCHEDULER_[A-Z_]+", (ROOT / path).read_text()))
        assert used, path
        assert used <= known, f"{path}: unknown settings {sorted(used - known)}"


def test_kubernetes_probes_grace_and_user():
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["ports"][0]["containerPort"] == int(env["SCHEDULER_METRICS_PORT"])
    assert spec["terminationGracePeriodSeconds"] > Settings().shutdown_grace_s
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["replicas"] == 3


def test_compose_runs_three_replicas_with_enough_grace():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    scheduler = compose["services"]["scheduler"]
    assert scheduler["deploy"]["replicas"] == 3
    assert int(scheduler["stop_grace_period"].rstrip("s")) > Settings().shutdown_grace_s
    assert scheduler["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER scheduler$", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/healthz" in text
