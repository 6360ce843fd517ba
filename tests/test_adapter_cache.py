"""The engine's adapter cache under load: eviction, hot replacement and client disconnects."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.decoding import SamplingParams
from adapters.engine import GenerationOutput, LocalEngine
from adapters.registry import AdapterVersion
from tests.test_routing import save_random_lora

PROMPT = "Please describe the small red mug with the chipped handle."


@pytest.fixture()
def engine(tiny_model_path: str) -> Iterator[LocalEngine]:
    running = LocalEngine(model_name="tiny", model_path_loader=lambda: tiny_model_path, max_loaded_adapters=2)
    running.load()
    yield running
    running.shutdown()


def make_adapter(tiny_model_path: str, tmp_path: Path, partner: str, version: int, seed: int) -> AdapterVersion:
    folder = tmp_path / partner / str(version)
    save_random_lora(tiny_model_path, folder, seed=seed)
    return AdapterVersion(partner_id=partner, version=version, base_model="tiny", path=str(folder), created_at=0)


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0)


async def complete(engine: LocalEngine, adapter: AdapterVersion | None, max_tokens: int = 8) -> str:
    prompt = engine.text_prompt_ids(PROMPT)
    return (await engine.generate(prompt, greedy(max_tokens), adapter)).text


def test_least_recently_used_unloaded(engine: LocalEngine, tiny_model_path: str, tmp_path: Path) -> None:
    adapters = [make_adapter(tiny_model_path, tmp_path, name, 1, seed) for seed, name in enumerate("abc")]

    async def scenario() -> list[str]:
        for adapter in adapters:
            await complete(engine, adapter)
        await complete(engine, adapters[1])
        return engine.loaded_adapters()

    assert asyncio.run(scenario()) == ["c/1", "b/1"]


def test_adapter_in_use_never_unloaded(engine: LocalEngine, tiny_model_path: str, tmp_path: Path) -> None:
    busy, *others = [make_adapter(tiny_model_path, tmp_path, name, 1, seed) for seed, name in enumerate("xyzw")]
    alone = asyncio.run(complete(engine, busy, max_tokens=40))

    async def scenario() -> tuple[str, list[str], list[str]]:
        long_request = asyncio.create_task(complete(engine, busy, max_tokens=40))
        while "x/1" not in engine.loaded_adapters():  # noqa: ASYNC110 - the engine offers no event to wait on
            await asyncio.sleep(0.001)
        for adapter in others:
            await complete(engine, adapter, max_tokens=2)
        during = engine.loaded_adapters()
        text = await long_request
        await complete(engine, others[0], max_tokens=2)
        return text, during, engine.loaded_adapters()

    text, during, after = asyncio.run(scenario())

    assert text == alone, "the running request kept its adapter"
    assert "x/1" in during
    assert "x/1" not in after


def test_new_version_replaces_old_for_new_requests(engine: LocalEngine, tiny_model_path: str, tmp_path: Path) -> None:
    old = make_adapter(tiny_model_path, tmp_path, "p", 1, seed=10)
    new = make_adapter(tiny_model_path, tmp_path, "p", 2, seed=11)
    old_alone = asyncio.run(complete(engine, old, max_tokens=30))
    new_alone = asyncio.run(complete(engine, new, max_tokens=6))

    async def scenario() -> tuple[str, str]:
        running = asyncio.create_task(complete(engine, old, max_tokens=30))
        await asyncio.sleep(0.05)
        replaced = await complete(engine, new, max_tokens=6)
        return await running, replaced

    running_text, new_text = asyncio.run(scenario())

    assert old_alone != new_alone
    assert running_text == old_alone
    assert new_text == new_alone


def test_closed_stream_leaves_batch(engine: LocalEngine) -> None:
    async def scenario() -> tuple[int, int]:
        stream = engine.stream(engine.text_prompt_ids(PROMPT), greedy(500), None)
        received = 0
        async for item in stream:
            assert not isinstance(item, GenerationOutput)
            received += 1
            if received == 2:
                break
        await stream.aclose()
        deadline = time.monotonic() + 10
        while engine._scheduler.running and time.monotonic() < deadline:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)
        return engine._scheduler.running, engine.pending_requests

    running, pending = asyncio.run(scenario())

    assert running == 0
    assert pending == 0


def test_failed_adapter_load_unpins(engine: LocalEngine, tmp_path: Path) -> None:
    missing = AdapterVersion(partner_id="q", version=1, base_model="tiny", path=str(tmp_path / "nowhere"), created_at=0)

    with pytest.raises(ValueError, match="nowhere"):
        asyncio.run(complete(engine, missing))

    assert engine.loaded_adapters() == []
    assert engine.pending_requests == 0


class CountingModel:
    """Stands in for MultiLoraModel: loading a name twice raises, as the real one does."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.loads = 0

    def load_adapter(self, name: str, path: str) -> None:
        self.loads += 1
        if name in self.loaded:
            raise ValueError(f"adapter {name!r} is already loaded")
        self.loaded.add(name)

    def unload_adapter(self, name: str) -> None:
        self.loaded.discard(name)


class ManualExecutor(concurrent.futures.Executor):
    """Runs each submitted job only when the test calls ``run_next``."""

    def __init__(self) -> None:
        self.jobs: list[tuple[concurrent.futures.Future, Any, tuple]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.append((future, fn, args))
        return future

    def run_next(self) -> None:
        future, fn, args = self.jobs.pop(0)
        future.set_result(fn(*args))


def test_request_right_after_load_reuses_it() -> None:
    from adapters.adapter_cache import AdapterCache

    model = CountingModel()
    cache = AdapterCache(model, max_loaded=4)  # type: ignore[arg-type]
    loader = ManualExecutor()
    adapter = AdapterVersion(partner_id="p", version=1, base_model="tiny", path="/unused", created_at=0)

    async def scenario() -> list[object]:
        first = asyncio.create_task(cache.acquire(adapter, loader))
        await asyncio.sleep(0)
        loader.run_next()
        second = asyncio.create_task(cache.acquire(adapter, loader))
        return await asyncio.gather(first, second, return_exceptions=True)

    results = asyncio.run(scenario())

    assert results == ["p/1", "p/1"]
    assert model.loads == 1
    assert cache.pins("p/1") == 2
