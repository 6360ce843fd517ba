"""One command that compares the bare model, the convention adapter and a partner's adapter on the reference game
and the re-mention probe."""

from clients.compare.runner import CompareConfig, run_compare

__all__ = ["CompareConfig", "run_compare"]
