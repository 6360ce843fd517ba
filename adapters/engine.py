"""The local inference engine: one base model and many partners' LoRA adapters, served in one batch.

Requests join the running batch at the next decoding step (adapters.batching), each row with its own adapter
(adapters.multilora). Adapters are loaded on a separate thread the first time a request needs them, and the least
recently used ones that no running request uses are unloaded beyond ``max_loaded_adapters``
(adapters.adapter_cache).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from adapters.adapter_cache import AdapterCache
from adapters.batching import BatchScheduler, SequenceRequest
from adapters.decoding import SamplingParams, TokenLogprob
from adapters.planning import PLANNING_TOKEN, PlanningTokenFilter
from adapters.registry import AdapterVersion

__all__ = [
    "ContextLengthError",
    "EngineNotReadyError",
    "GenerationOutput",
    "LocalEngine",
    "SamplingParams",
    "TextDelta",
]

logger = logging.getLogger(__name__)

_STREAM_END = object()


class ContextLengthError(ValueError):
    """The prompt plus the requested completion does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, max_tokens: int, limit: int) -> None:
        super().__init__(
            f"this model's maximum context length is {limit} tokens, but the request needs {prompt_tokens} "
            f"prompt tokens plus {max_tokens} completion tokens; shorten the messages or lower max_tokens"
        )


class EngineOverloadedError(RuntimeError):
    """Too many requests are already waiting for the generation thread."""


class EngineNotReadyError(RuntimeError):
    """The base model is still loading."""


@dataclass
class TextDelta:
    """New completion text and the logprobs of the tokens that produced it (when requested)."""

    text: str
    logprobs: list[TokenLogprob]


@dataclass
class GenerationOutput:
    """The finished completion of one request."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    planning_tokens: int = 0


@dataclass
class _StopTrimmer:
    """Holds back streamed text that could still become a stop string, and cuts the text at the first one."""

    stop: tuple[str, ...]
    text: str = ""
    emitted: int = 0
    stopped: bool = False
    hold: int = field(init=False)

    def __post_init__(self) -> None:
        self.hold = max((len(stop) for stop in self.stop), default=1) - 1

    def feed(self, full_text: str) -> str:
        """Takes the whole text decoded so far; returns the part that is safe to send now."""
        if self.stopped:
            return ""
        self.text = full_text
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            self.text = full_text[:cut]
            return self._release(len(self.text))
        return self._release(max(self.emitted, len(full_text) - self.hold))

    def finish(self) -> str:
        return self._release(len(self.text))

    def _first_stop(self) -> int | None:
        positions = [self.text.find(stop) for stop in self.stop if stop]
        found = [position for position in positions if position >= 0]
        return min(found) if found else None

    def _release(self, upto: int) -> str:
        delta = self.text[self.emitted : upto]
        self.emitted = max(self.emitted, upto)
        return delta


class LocalEngine:
    """Serves completions from one base model and its LoRA adapters, many requests in one batch."""

    def __init__(
        self,
        *,
        model_name: str,
        model_path_loader: Callable[[], str],
        max_loaded_adapters: int,
        max_pending_requests: int = 32,
        max_batch_size: int = 16,
    ) -> None:
        self.model_name = model_name
        self.max_pending_requests = max_pending_requests
        self.max_batch_size = max_batch_size
        self.pending_requests = 0
        self._model_path_loader = model_path_loader
        self.max_loaded_adapters = max_loaded_adapters
        # Adapter files are read on their own thread, so loading one never holds up the batch.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapter-loader")
        self._cache: AdapterCache | None = None
        self._scheduler: BatchScheduler | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.context_length = 0
        self.planning_token_id: int | None = None
        self.ready = False
        self.load_error: str | None = None

    def load(self) -> None:
        """Loads the base model and starts the batch scheduler, blocking; the built-in GGUF model is converted on
        first use."""

        from adapters.base_model import load_model_and_tokenizer
        from adapters.multilora import MultiLoraModel

        path = self._model_path_loader()
        self.model, self.tokenizer = load_model_and_tokenizer(path)
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.planning_token_id = int(self.tokenizer.convert_tokens_to_ids(PLANNING_TOKEN))
        multilora = MultiLoraModel(self.model)
        self._cache = AdapterCache(multilora, self.max_loaded_adapters)
        self._scheduler = BatchScheduler(
            self.model,
            eos_token_ids=self._eos_token_ids(),
            select_rows=multilora.rows_using,
            max_batch_size=self.max_batch_size,
        )
        self.ready = True
        logger.info("Engine: model %s loaded from %s", self.model_name, path)

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()
        self._loader.shutdown(wait=False, cancel_futures=True)

    def loaded_adapters(self) -> list[str]:
        return self._cache.loaded() if self._cache is not None else []

    def chat_prompt_ids(
        self,
        messages: list[dict[str, str]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> list[int]:
        """Returns the token ids of ``messages`` rendered with the model's chat template.

        With ``continue_final_message`` the prompt ends inside the final (assistant) message, without its
        end-of-turn token, so that generation continues that message.
        """
        self._check_ready()
        rendered = self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=True,
        )
        ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
        return [int(token) for token in ids]

    def text_prompt_ids(self, prompt: str) -> list[int]:
        """Returns the token ids of a plain-text prompt (legacy completions)."""
        self._check_ready()
        ids = [int(token) for token in self.tokenizer(prompt)["input_ids"]]
        if ids:
            return ids
        # An empty prompt still needs one token to start from: the beginning-of-sequence token, else end-of-text.
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        return [int(start)]

    def check_context(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raises ContextLengthError when the prompt plus ``max_tokens`` does not fit the context window."""
        if prompt_tokens + max_tokens > self.context_length:
            raise ContextLengthError(prompt_tokens, max_tokens, self.context_length)

    @property
    def vocab_size(self) -> int:
        """Returns the number of logits per step, the valid range of token ids in ``logit_bias``."""
        return int(self.model.config.vocab_size)

    def token_text(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id]))

    async def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        adapter: AdapterVersion | None,
        *,
        cancel: threading.Event | None = None,
    ) -> GenerationOutput:
        """Generates a whole completion; setting ``cancel`` stops it after the current token."""
        stop = cancel or threading.Event()
        async for item in self._run(prompt_ids, params, adapter, stop, streaming=False):
            if isinstance(item, GenerationOutput):
                return item
        raise RuntimeError("generation ended without an output")

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, adapter: AdapterVersion | None
    ) -> AsyncIterator[TextDelta | GenerationOutput]:
        """Yields text deltas, then the final GenerationOutput. Closing the iterator stops generation."""
        async for item in self._run(prompt_ids, params, adapter, threading.Event(), streaming=True):
            yield item

    async def _run(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        adapter: AdapterVersion | None,
        cancel: threading.Event,
        *,
        streaming: bool,
    ) -> AsyncIterator[TextDelta | GenerationOutput]:
        self._admit()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        adapter_name: str | None = None
        try:
            self.check_context(len(prompt_ids), params.max_tokens)
            assert self._cache is not None and self._scheduler is not None
            if adapter is not None:
                adapter_name = await self._cache.acquire(adapter, self._loader)

            def on_delta(delta: TextDelta) -> None:
                loop.call_soon_threadsafe(events.put_nowait, delta)

            def on_done(generated: list[int], ended: bool, error: BaseException | None) -> None:
                loop.call_soon_threadsafe(events.put_nowait, (_STREAM_END, generated, ended, error))

            collector = _DeltaCollector(
                self.tokenizer,
                _StopTrimmer(params.stop),
                on_delta if streaming else None,
                cancel,
                self.planning_token_id,
            )
            self._scheduler.submit(
                SequenceRequest(
                    prompt_ids=prompt_ids,
                    params=params,
                    adapter=adapter_name,
                    on_token=collector.on_token,
                    on_done=on_done,
                    cancel=cancel,
                )
            )
            while True:
                item = await events.get()
                if isinstance(item, TextDelta):
                    yield item
                    continue
                _, generated, ended, error = item
                if error is not None:
                    raise error
                collector.flush()
                # The final deltas were queued before the end marker only if they came from the scheduler thread.
                while not events.empty():
                    pending = events.get_nowait()
                    if isinstance(pending, TextDelta):
                        yield pending
                yield GenerationOutput(
                    text=collector.trimmer.text,
                    finish_reason="stop" if ended else "length",
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=len(generated),
                    logprobs=collector.all_logprobs if params.logprobs else None,
                    planning_tokens=collector.planning_tokens,
                )
                return
        finally:
            cancel.set()
            if adapter_name is not None and self._cache is not None:
                self._cache.release(adapter_name)
            self.pending_requests -= 1

    def _admit(self) -> None:
        """Counts a request in, or raises EngineOverloadedError when the queue is full."""
        self._check_ready()
        if self.pending_requests >= self.max_pending_requests:
            raise EngineOverloadedError(
                f"model {self.model_name} already has {self.pending_requests} requests waiting; retry shortly"
            )
        self.pending_requests += 1

    def _check_ready(self) -> None:
        if not self.ready:
            raise EngineNotReadyError(f"model {self.model_name} is still loading; retry in a few seconds")

    def _eos_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids: set[int] = set()
        if isinstance(eos, list):
            ids.update(eos)
        elif eos is not None:
            ids.add(eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids


class _DeltaCollector:
    """Decodes the growing completion after every token and forwards text that is safe to send."""

    def __init__(
        self,
        tokenizer: Any,
        trimmer: _StopTrimmer,
        on_delta: Callable[[TextDelta], None] | None,
        cancel: threading.Event,
        planning_token_id: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.planning_token_id = planning_token_id
        self.planning_token_ids = 0
        self.trimmer = trimmer
        self.on_delta = on_delta
        self.cancel = cancel
        self.token_ids: list[int] = []
        self.pending_logprobs: list[TokenLogprob] = []
        self.all_logprobs: list[TokenLogprob] = []
        self.planning_tokens = 0

    def on_token(self, token: int, logprob: TokenLogprob | None) -> bool:
        """Takes one generated token; returns False when generation must stop."""
        if self.cancel.is_set():
            return False

        if token == self.planning_token_id:
            # The planning token is counted and dropped: it reaches neither the text nor the logprobs.
            self.planning_token_ids += 1
            return True
        self.token_ids.append(token)
        if logprob is not None:
            if any(alternative == self.planning_token_id for alternative, _ in logprob.top):
                top = tuple(entry for entry in logprob.top if entry[0] != self.planning_token_id)
                logprob = dataclasses.replace(logprob, top=top)
            self.pending_logprobs.append(logprob)
            self.all_logprobs.append(logprob)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        # An incomplete multi-byte character decodes to U+FFFD; wait for the next token to complete it.
        if not text.endswith("\ufffd"):
            # Planning tokens come out first (a partial one is held back), so that no client ever sees one.
            self._send(self.trimmer.feed(PlanningTokenFilter().feed(text)))
        return not self.trimmer.stopped

    def flush(self) -> None:
        """Sends the text the stop trimmer kept back, once generation has ended."""
        planning = PlanningTokenFilter()
        text = planning.strip(self.tokenizer.decode(self.token_ids, skip_special_tokens=True))
        self.planning_tokens = self.planning_token_ids + planning.count
        self._send(self.trimmer.feed(text) + self.trimmer.finish(), final=True)

    def _send(self, text: str, *, final: bool = False) -> None:
        if self.on_delta is None or not (text or (final and self.pending_logprobs)):
            return
        self.on_delta(TextDelta(text=text, logprobs=self.pending_logprobs))
        self.pending_logprobs = []
