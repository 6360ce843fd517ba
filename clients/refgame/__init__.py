"""The repeated reference game: a probe of convention formation played against a running gateway.

A speaker model describes one of four items without naming it, a listener picks the item, and the same items come
back for several repetitions. Messages that get shorter while the listener stays right show a convention forming.
"""

from clients.refgame.config import RefGameConfig, SpeakerSpec, parse_speaker
from clients.refgame.runner import run_refgame

__all__ = ["RefGameConfig", "SpeakerSpec", "parse_speaker", "run_refgame"]
