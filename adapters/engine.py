"""The local inference engine: one base model, partner LoRA adapters loaded on demand (transformers + peft).

Generation runs on one dedicated thread, so the event loop stays free while a request generates; requests
wait their turn on that thread. Adapters are loaded the first time a partner's request needs them and the
least recently used ones are unloaded beyond ``max_loaded_adapters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from adapters.registry import AdapterVersion

logger = logging.getLogger(__name__)

_STREAM_END = object()


class ContextLengthError(ValueError):
    """The prompt plus the requested completion does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, max_tokens: int, limit: int) -> None:
        super().__init__(
            f"this model's maximum context length is {limit} tokens, but the request needs {prompt_tokens} "
            f"prompt tokens plus {max_tokens} completion tokens; shorten the messages or lower max_tokens"
        )


class EngineNotReadyError(RuntimeError):
    """The base model is still loading."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings in OpenAI's terms."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class GenerationOutput:
    """The finished completion of one request."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


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


def peft_adapter_name(adapter: AdapterVersion) -> str:
    """Returns a module-safe peft adapter name for an adapter version (peft names may not contain dots)."""
    return "adapter_" + hashlib.sha1(adapter.name.encode()).hexdigest()[:16]


class LocalEngine:
    """Serves chat completions from one base model and its LoRA adapters."""

    def __init__(self, *, model_name: str, model_path_loader: Callable[[], str], max_loaded_adapters: int) -> None:
        self.model_name = model_name
        self._model_path_loader = model_path_loader
        self.max_loaded_adapters = max_loaded_adapters
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._loaded: OrderedDict[str, str] = OrderedDict()
        self.model: Any = None
        self.tokenizer: Any = None
        self.context_length = 0
        self.ready = False

    def load(self) -> None:
        """Loads the base model, blocking; the built-in GGUF model is converted on first use."""
        import torch

        from adapters.base_model import load_model_and_tokenizer

        path = self._model_path_loader()
        torch.set_grad_enabled(False)
        self.model, self.tokenizer = load_model_and_tokenizer(path)
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.ready = True
        logger.info("Engine: model %s loaded from %s", self.model_name, path)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def loaded_adapters(self) -> list[str]:
        return list(self._loaded)

    async def generate(
        self, messages: list[dict[str, str]], params: SamplingParams, adapter: AdapterVersion | None
    ) -> GenerationOutput:
        self._check_ready()
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        try:
            return await loop.run_in_executor(self._executor, self._generate, messages, params, adapter, None, cancel)
        finally:
            cancel.set()

    async def stream(
        self, messages: list[dict[str, str]], params: SamplingParams, adapter: AdapterVersion | None
    ) -> AsyncIterator[str | GenerationOutput]:
        """Yields text deltas, then the final GenerationOutput. Closing the iterator stops generation."""
        self._check_ready()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def on_delta(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, text)

        future = loop.run_in_executor(self._executor, self._generate, messages, params, adapter, on_delta, cancel)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, _STREAM_END))
        try:
            while (item := await queue.get()) is not _STREAM_END:
                yield item
            yield await future
        finally:
            cancel.set()

    def check_context(self, messages: list[dict[str, str]], max_tokens: int) -> int:
        """Returns the prompt's token count; raises ContextLengthError when the completion would not fit."""
        self._check_ready()
        prompt_ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompt_tokens = len(prompt_ids["input_ids"] if isinstance(prompt_ids, dict) else prompt_ids)
        if prompt_tokens + max_tokens > self.context_length:
            raise ContextLengthError(prompt_tokens, max_tokens, self.context_length)
        return prompt_tokens

    def _check_ready(self) -> None:
        if not self.ready:
            raise EngineNotReadyError(f"model {self.model_name} is still loading; retry in a few seconds")

    def _generate(
        self,
        messages: list[dict[str, str]],
        params: SamplingParams,
        adapter: AdapterVersion | None,
        on_delta: Callable[[str], None] | None,
        cancel: threading.Event,
    ) -> GenerationOutput:
        import torch

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if prompt_tokens + params.max_tokens > self.context_length:
            raise ContextLengthError(prompt_tokens, params.max_tokens, self.context_length)

        if params.seed is not None:
            torch.manual_seed(params.seed)
        trimmer = _StopTrimmer(params.stop)
        streamer = _DeltaStreamer(self.tokenizer, trimmer, on_delta, cancel)
        with self._adapter_selected(adapter):
            output_ids = self.model.generate(**inputs, **self._generation_kwargs(params, cancel), streamer=streamer)

        generated = output_ids[0][prompt_tokens:]
        tail = trimmer.feed(self._decode(generated)) + trimmer.finish()
        if tail and on_delta is not None:
            on_delta(tail)
        return GenerationOutput(
            text=trimmer.text,
            finish_reason=self._finish_reason(generated, params, trimmer),
            prompt_tokens=prompt_tokens,
            completion_tokens=int(generated.shape[0]),
        )

    def _generation_kwargs(self, params: SamplingParams, cancel: threading.Event) -> dict[str, Any]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Cancelled(StoppingCriteria):  # type: ignore[misc]
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancel.is_set()

        criteria = StoppingCriteriaList([_Cancelled()])
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "stopping_criteria": criteria,
        }
        if params.stop:
            kwargs["stop_strings"] = list(params.stop)
            kwargs["tokenizer"] = self.tokenizer
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _decode(self, token_ids: Any) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    def _finish_reason(self, generated: Any, params: SamplingParams, trimmer: _StopTrimmer) -> str:
        if trimmer.stopped:
            return "stop"
        ended_on_eos = generated.shape[0] > 0 and int(generated[-1]) in self._eos_token_ids()
        if not ended_on_eos and generated.shape[0] >= params.max_tokens:
            return "length"
        return "stop"

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

    @contextlib.contextmanager
    def _adapter_selected(self, adapter: AdapterVersion | None) -> Iterator[None]:
        from peft import PeftModel

        if adapter is None:
            disabled = self.model.disable_adapter() if isinstance(self.model, PeftModel) else contextlib.nullcontext()
            with disabled:
                yield
            return

        # Loading the first adapter wraps the base model in a PeftModel, so look up self.model only afterwards.
        name = self._ensure_loaded(adapter)
        self.model.set_adapter(name)
        yield

    def _ensure_loaded(self, adapter: AdapterVersion) -> str:
        from peft import PeftModel

        name = peft_adapter_name(adapter)
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return name

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(adapter.path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, adapter.path, adapter_name=name)
        self.model.eval()
        self._loaded[name] = adapter.name
        logger.info("Engine: adapter %s loaded from %s", adapter.name, adapter.path)
        self._evict_beyond_limit(keep=name)
        return name

    def _evict_beyond_limit(self, *, keep: str) -> None:
        while len(self._loaded) > self.max_loaded_adapters:
            name = next(iter(self._loaded))
            if name == keep:
                break
            public_name = self._loaded.pop(name)
            self.model.delete_adapter(name)
            logger.info("Engine: adapter %s unloaded (least recently used)", public_name)


class _DeltaStreamer:
    """A transformers streamer that decodes the growing completion and forwards new text."""

    def __init__(
        self,
        tokenizer: Any,
        trimmer: _StopTrimmer,
        on_delta: Callable[[str], None] | None,
        cancel: threading.Event,
    ) -> None:
        self.tokenizer = tokenizer
        self.trimmer = trimmer
        self.on_delta = on_delta
        self.cancel = cancel
        self.token_ids: list[int] = []
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        if self.on_delta is None:
            return

        self.token_ids.extend(int(token) for token in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        # An incomplete multi-byte character decodes to U+FFFD; wait for the next token to complete it.
        if text.endswith("\ufffd"):
            return
        delta = self.trimmer.feed(text)
        if delta:
            self.on_delta(delta)

    def end(self) -> None:
        """Does nothing: the engine sends the text the trimmer kept back after generate() returns."""
