"""Iteration-level batching: sequences join the running batch at the next decoding step and leave when done.

One thread owns the model. Each step it prefills the sequences that arrived, one forward each with that
sequence's adapter, and merges their KV caches into the batch cache with left padding. It then runs one
decoding forward for every running sequence together, each row with its own adapter, sampling parameters and
stop checks. A finished or cancelled sequence leaves the batch at once; the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from adapters.decoding import SamplingParams, TokenLogprob, TokenSampler

logger = logging.getLogger(__name__)

RowSelector = Callable[[list[str | None]], contextlib.AbstractContextManager[None]]


@dataclass
class SequenceRequest:
    """One sequence to generate; the callbacks run on the scheduler thread and must be quick.

    ``on_token`` returns False to stop the sequence (a stop string matched, or the client went away).
    ``on_done`` receives the generated ids (end-of-sequence excluded), whether generation ended by itself
    rather than at ``max_tokens``, and the exception that ended it, if any.
    """

    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None
    on_token: Callable[[int, TokenLogprob | None], bool]
    on_done: Callable[[list[int], bool, BaseException | None], None]
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    request: SequenceRequest
    sampler: TokenSampler
    length: int
    next_token: int
    generated: list[int] = field(default_factory=list)


class BatchScheduler:
    """Runs sequences in one shared decoding batch on a dedicated thread."""

    def __init__(
        self,
        model: Any,
        *,
        eos_token_ids: set[int],
        select_rows: RowSelector,
        max_batch_size: int = 16,
    ) -> None:
        self.model = model
        self.eos_token_ids = eos_token_ids
        self.select_rows = select_rows
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.vocab_size)
        self._incoming: queue.Queue[SequenceRequest | None] = queue.Queue()
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-scheduler", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        """Returns the number of sequences in the decoding batch."""
        return len(self._rows)

    def submit(self, request: SequenceRequest) -> None:
        """Queues ``request``; it joins the batch at the next step."""
        if self._stopped.is_set():
            raise RuntimeError("the batch scheduler is stopped")
        self._incoming.put(request)

    def stop(self) -> None:
        """Stops the thread after the current step; waiting and running sequences end with an error."""
        self._stopped.set()
        self._incoming.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stopped.is_set():
            try:
                self._admit(block=not self._rows)
                if self._rows:
                    self._step()
            except Exception as error:  # noqa: BLE001 - every sequence must hear about the failure
                logger.exception("Batch scheduler: step failed; ending %d sequences", len(self._rows))
                self._fail_all(error)
        self._fail_all(RuntimeError("the batch scheduler stopped"))
        while not self._incoming.empty():
            request = self._incoming.get_nowait()
            if request is not None:
                request.on_done([], True, RuntimeError("the batch scheduler stopped"))

    def _admit(self, *, block: bool) -> None:
        """Prefills the sequences that arrived, up to the batch size; waits for one when the batch is empty."""
        while len(self._rows) < self.max_batch_size:
            try:
                request = self._incoming.get(block=block, timeout=None if block else 0)
            except queue.Empty:
                return
            if request is None:
                return
            block = False
            self._prefill(request)

    def _prefill(self, request: SequenceRequest) -> None:
        if request.cancel.is_set():
            request.on_done([], True, None)
            return
        try:
            sampler = TokenSampler(request.params, self.vocab_size, self.device)
            input_ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=self.device)
            with torch.inference_mode(), self.select_rows([request.adapter]):
                output = self.model(input_ids=input_ids, use_cache=True)
        except Exception as error:  # noqa: BLE001 - reported to the request, the batch goes on
            logger.exception("Batch scheduler: prefill failed")
            request.on_done([], True, error)
            return

        row = _Row(request=request, sampler=sampler, length=len(request.prompt_ids), next_token=-1)
        if self._emit(row, output.logits[0, -1]):
            self._join(row, output.cache)

    def _emit(self, row: _Row, logits: torch.Tensor) -> bool:
        """Samples the row's next token and reports it; returns False when the row is done.

        An exception from the row's sampling or callbacks ends that row only.
        """
        try:
            return self._emit_unguarded(row, logits)
        except Exception as error:  # noqa: BLE001 - reported to the request, the batch goes on
            logger.exception("Batch scheduler: a sequence failed; the others go on")
            row.request.on_done(row.generated, True, error)
            return False

    def _emit_unguarded(self, row: _Row, logits: torch.Tensor) -> bool:
        request = row.request
        token, logprob = row.sampler.sample(logits)
        if token in self.eos_token_ids:
            request.on_done(row.generated, True, None)
            return False
        row.generated.append(token)
        if request.cancel.is_set() or not request.on_token(token, logprob):
            request.on_done(row.generated, True, None)
            return False
        if len(row.generated) >= request.params.max_tokens:
            request.on_done(row.generated, False, None)
            return False
        row.next_token = token
        return True

    def _join(self, row: _Row, cache: Any) -> None:
        """Adds a prefilled row's cache to the batch cache, left-padding whichever is shorter."""
        mask = torch.ones((1, row.length), dtype=torch.long, device=self.device)
        if self._cache is None:
            self._rows, self._cache, self._mask = [row], cache, mask
            return

        batch_length, row_length = self._mask.shape[1], row.length
        width = max(batch_length, row_length)
        for batch_layer, row_layer in zip(self._cache.layers, cache.layers, strict=True):
            batch_layer.keys = torch.cat([_pad_left(batch_layer.keys, width), _pad_left(row_layer.keys, width)])
            batch_layer.values = torch.cat([_pad_left(batch_layer.values, width), _pad_left(row_layer.values, width)])
        self._mask = torch.cat([_pad_mask(self._mask, width), _pad_mask(mask, width)])
        self._rows.append(row)

    def _step(self) -> None:
        """Runs one decoding forward for every row and removes the rows that finished."""
        self._drop_cancelled()
        if not self._rows:
            return
        tokens = torch.tensor([[row.next_token] for row in self._rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[row.length] for row in self._rows], dtype=torch.long, device=self.device)
        assert self._mask is not None
        mask = torch.cat([self._mask, torch.ones((len(self._rows), 1), dtype=torch.long, device=self.device)], 1)
        with torch.inference_mode(), self.select_rows([row.request.adapter for row in self._rows]):
            output = self.model(
                input_ids=tokens, attention_mask=mask, position_ids=positions, cache=self._cache, use_cache=True
            )
        self._cache, self._mask = output.cache, mask

        keep = []
        for index, row in enumerate(self._rows):
            row.length += 1
            if self._emit(row, output.logits[index, -1]):
                keep.append(index)
        self._keep_rows(keep)

    def _drop_cancelled(self) -> None:
        keep = []
        for index, row in enumerate(self._rows):
            if row.request.cancel.is_set():
                row.request.on_done(row.generated, True, None)
            else:
                keep.append(index)
        self._keep_rows(keep)

    def _keep_rows(self, keep: list[int]) -> None:
        """Keeps only the rows at ``keep`` and cuts padding columns that no remaining row needs."""
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        assert self._mask is not None
        indices = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, indices)
        unused = int((mask.sum(dim=0) == 0).int().cumprod(dim=0).sum())
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, indices)[:, :, unused:]
            layer.values = layer.values.index_select(0, indices)[:, :, unused:]
        self._mask = mask[:, unused:]
        self._rows = [self._rows[index] for index in keep]

    def _fail_all(self, error: BaseException) -> None:
        rows, self._rows, self._cache, self._mask = self._rows, [], None, None
        for row in rows:
            row.request.on_done(row.generated, True, error)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pads the sequence dimension (-2) of a [batch, heads, length, dim] cache tensor with zeros."""
    missing = width - tensor.shape[-2]
    if missing <= 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, 0, missing, 0))


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return torch.nn.functional.pad(mask, (missing, 0)) if missing > 0 else mask


@contextlib.contextmanager
def no_adapters(_: list[str | None]) -> Iterator[None]:
    """Row selector for a model without adapters."""
    yield
