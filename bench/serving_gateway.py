"""A gateway process serving the real default model for a benchmark, and counts of the adapter events it logs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx
import yaml

from adapters.settings import DEFAULT_MODEL_NAME, LOCAL_PROVIDER
from bench.overhead import free_port

READY_TIMEOUT_S = 300.0
SETTINGS_ENV_PREFIX = "CONVENTION_GATEWAY_"
ERROR_EXCERPT_LINES = 40


@dataclass
class LogCounts:
    """Adapter loads, evictions and problems in a stretch of the gateway's log."""

    loads: int = 0
    evictions: int = 0
    over_limit: int = 0
    errors: int = 0
    # The first error line and the lines after it (its traceback), for the report.
    first_error: str = ""

    def __add__(self, other: LogCounts) -> LogCounts:
        return LogCounts(
            self.loads + other.loads,
            self.evictions + other.evictions,
            self.over_limit + other.over_limit,
            self.errors + other.errors,
            self.first_error or other.first_error,
        )


def count_log_lines(text: str) -> LogCounts:
    """Counts the engine's adapter log lines (adapters.adapter_cache) and the error lines in ``text``."""
    counts = LogCounts()
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if "Engine: adapter " in line and " loaded from " in line:
            counts.loads += 1
        elif "unloaded (least recently used)" in line:
            counts.evictions += 1
        elif "above max_loaded_adapters" in line:
            counts.over_limit += 1
        elif " ERROR " in line or line.startswith("ERROR:"):
            counts.errors += 1
            counts.first_error = counts.first_error or "\n".join(lines[index : index + ERROR_EXCERPT_LINES])
    return counts


class GatewayProcess:
    """``convention-gateway serve`` on a free local port with the default model and a benchmark's own settings.

    Only the config file written here sets the gateway's settings, because the CONVENTION_GATEWAY_* variables of
    this environment are left out of the child's environment. REDIS_URL is passed on.
    """

    def __init__(self, folder: Path, *, key_prefix: str, artifact_dir: Path, model_cache_dir: Path, max_loaded: int):
        self.folder = folder
        self.max_loaded = max_loaded
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.chat_url = f"{self.base_url}/v1/chat/completions"
        self.log_path = folder / f"gateway-{self.port}.log"
        self.config = {
            "key_prefix": key_prefix,
            "queue_name": f"training-{key_prefix}",
            "model_list": [
                {
                    "model_name": DEFAULT_MODEL_NAME,
                    "litellm_params": {"model": f"{LOCAL_PROVIDER}/{DEFAULT_MODEL_NAME}"},
                }
            ],
            "model_cache_dir": str(model_cache_dir),
            "artifact_dir": str(artifact_dir),
            "max_loaded_adapters": max_loaded,
            # The benchmark's turns must not start training jobs.
            "training_policy": {"auto_training": False},
        }
        self._child: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __enter__(self) -> GatewayProcess:
        config_path = self.folder / f"gateway-{self.port}.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        command = [sys.executable, "-m", "clients.cli", "serve", "--config", str(config_path), "--port", str(self.port)]
        env = {name: value for name, value in os.environ.items() if not name.startswith(SETTINGS_ENV_PREFIX)}
        with self.log_path.open("wb") as output:
            self._child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._child is None:
            return
        self._child.terminate()
        try:
            self._child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        assert self._child is not None
        while time.monotonic() < deadline:
            if self._child.poll() is not None:
                raise RuntimeError(f"the gateway exited with status {self._child.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the gateway was not ready within {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_counts_since_last_call(self) -> LogCounts:
        """Counts the adapter events logged since the previous call (or since start-up)."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            text = log.read()
        self._log_offset += len(text)
        return count_log_lines(text.decode(errors="replace"))

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
