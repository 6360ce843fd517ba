"""Static checks of compose.yaml, since no Docker engine runs on the build machines."""

from __future__ import annotations

from pathlib import Path

import typer.main
import yaml

from adapters.settings import Settings
from clients.cli import app

COMPOSE = yaml.safe_load((Path(__file__).parent.parent / "compose.yaml").read_text())
ENV_PREFIX = "CONVENTION_GATEWAY_"


def cli_commands() -> set[str]:
    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_compose_has_three_services() -> None:
    assert set(COMPOSE["services"]) == {"redis", "gateway", "worker"}


def test_service_commands_exist_in_cli() -> None:
    for name in ("gateway", "worker"):
        command = COMPOSE["services"][name]["command"]

        assert command[0] == "convention-gateway"
        assert command[1] in cli_commands()


def test_service_environment_names_settings() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for name in ("gateway", "worker"):
        for variable in COMPOSE["services"][name]["environment"]:
            if variable == "REDIS_URL":
                continue

            assert variable.startswith(ENV_PREFIX)
            assert variable.removeprefix(ENV_PREFIX) in fields


def test_gateway_and_worker_share_artifacts() -> None:
    gateway = COMPOSE["services"]["gateway"]
    worker = COMPOSE["services"]["worker"]

    assert gateway["volumes"] == worker["volumes"]
    assert (
        gateway["environment"]["CONVENTION_GATEWAY_ARTIFACT_DIR"]
        == worker["environment"]["CONVENTION_GATEWAY_ARTIFACT_DIR"]
    )
