"""The re-mention completion probe: does a model re-mention a thing briefly, and keep first mentions full?

Each item forces the start of an assistant reply up to the point where the thing is mentioned, lets the model
continue it greedily (``continue_final_message``), and scores the mention it produces.
"""

from clients.probe.config import ModelSpec, ProbeConfig, parse_model
from clients.probe.data import DEFAULT_DIALOGUES_PATH, ProbeDataError, ProbeItem, load_items
from clients.probe.runner import ProbeResults, run_probe

__all__ = [
    "DEFAULT_DIALOGUES_PATH",
    "ModelSpec",
    "ProbeConfig",
    "ProbeDataError",
    "ProbeItem",
    "ProbeResults",
    "load_items",
    "parse_model",
    "run_probe",
]
