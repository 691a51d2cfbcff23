"""docker/compose.yml is valid for the compose CLI and has the production shape."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # PyYAML: installed with transformers

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yml"


def compose_cli() -> list[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no compose CLI on this machine (bin/setup test installs Debian's docker-compose)")


def test_the_compose_file_validates_and_runs_every_role_with_health_checks() -> None:
    # when
    result = subprocess.run(
        [*compose_cli(), "-f", str(COMPOSE), "config"], capture_output=True, text=True
    )

    # then
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"web", "worker", "trainer", "beat", "postgres", "redis", "proxy", "setup"} <= set(
        services
    )
    assert services["web"]["deploy"]["replicas"] >= 2
    for name in ("web", "worker", "trainer", "postgres", "redis", "proxy"):
        assert services[name]["healthcheck"]["test"], name
    # every queue a task is routed to has a worker (retraining has its own)
    from django.conf import settings

    queues = {"celery"} | {r["queue"] for r in settings.CELERY_TASK_ROUTES.values()}
    consumed = set()
    for name in ("worker", "trainer"):
        command = services[name]["command"]
        command = command.split() if isinstance(command, str) else command
        consumed |= set(command[command.index("-Q") + 1].split(","))
    assert consumed == queues == {"celery", "training"}
    assert services["trainer"]["volumes"] == services["web"]["volumes"]
    environment = services["web"]["environment"]
    assert environment["REDIS_URL"].startswith("redis://redis:")
    assert environment["DATABASE_URL"].startswith("postgres://")
    assert services["worker"]["volumes"] == services["web"]["volumes"]  # one model store
