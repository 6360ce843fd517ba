"""The engine's cache of loaded adapters: least recently used first out, never one that a request is using."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from concurrent.futures import Executor

from adapters.multilora import AdapterInUseError, MultiLoraModel
from adapters.registry import AdapterVersion

logger = logging.getLogger(__name__)


class AdapterCache:
    """Loads adapter versions on demand and unloads the least recently used unpinned ones beyond ``max_loaded``.

    A request pins its adapter from ``acquire`` until ``release``, so a running sequence never loses its
    adapter. A new version has a new name (``<partner>/<version>``), so it is loaded beside the old one: new
    requests use it while running ones finish on the old version, which is then evicted like any other.
    Call ``acquire`` and ``release`` from the event loop thread only.
    """

    def __init__(self, model: MultiLoraModel, max_loaded: int) -> None:
        self.model = model
        self.max_loaded = max_loaded
        self._order: OrderedDict[str, None] = OrderedDict()
        self._pins: Counter[str] = Counter()
        self._loading: dict[str, asyncio.Future[None]] = {}
        # The largest over-limit size already logged, so a busy gateway logs each new high once.
        self._warned_size = 0

    def loaded(self) -> list[str]:
        """Returns the loaded adapters' names, least recently used first."""
        return list(self._order)

    def pins(self, name: str) -> int:
        """Returns how many requests use adapter ``name`` now."""
        return self._pins[name]

    async def acquire(self, adapter: AdapterVersion, loader: Executor) -> str:
        """Pins ``adapter``, loading it on ``loader`` first if needed; returns its name for row selection."""
        name = adapter.name
        self._pins[name] += 1
        try:
            if name not in self._order:
                await self._load(adapter, loader)
        except BaseException:
            self._unpin(name)
            raise
        self._order.move_to_end(name)
        self._evict()
        return name

    def release(self, name: str) -> None:
        """Unpins an adapter after its request ended, then unloads adapters beyond the limit."""
        self._unpin(name)
        self._evict()

    async def _load(self, adapter: AdapterVersion, loader: Executor) -> None:
        name = adapter.name
        pending = self._loading.get(name)
        if pending is None and name in self._order:
            return
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = asyncio.ensure_future(loop.run_in_executor(loader, self.model.load_adapter, name, adapter.path))
            self._loading[name] = pending
            pending.add_done_callback(lambda done: self._finish_load(name, adapter.path, done))
        # Several requests may wait for the same load; a cancelled request must not cancel it for the others.
        await asyncio.shield(pending)
        # Awaiting a future that is already done does not wait for its callbacks, so record the load here too.
        self._finish_load(name, adapter.path, pending)

    def _finish_load(self, name: str, path: str, done: asyncio.Future[None]) -> None:
        # One callback moves the adapter from loading to loaded, so a request arriving in between never starts
        # a second load of it.
        self._loading.pop(name, None)
        if done.cancelled() or done.exception() is not None or name in self._order:
            return
        self._order[name] = None
        logger.info("Engine: adapter %s loaded from %s", name, path)

    def _unpin(self, name: str) -> None:
        self._pins[name] -= 1
        if self._pins[name] <= 0:
            del self._pins[name]

    def _evict(self) -> None:
        for name in list(self._order):
            if len(self._order) <= self.max_loaded:
                return
            if self._pins[name] > 0:
                continue
            try:
                self.model.unload_adapter(name)
            except AdapterInUseError:
                continue
            del self._order[name]
            logger.info("Engine: adapter %s unloaded (least recently used)", name)
        if len(self._order) > max(self.max_loaded, self._warned_size):
            self._warned_size = len(self._order)
            logger.warning(
                "Engine: %d adapters loaded, above max_loaded_adapters=%d, because running requests use them",
                len(self._order),
                self.max_loaded,
            )
