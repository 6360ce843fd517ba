"""Wire models of the OpenAI chat completions API, as far as this gateway serves it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

# Fields that OpenAI defines and the local engine cannot honour yet. A request that sets one is rejected with a
# 400 naming it, instead of being served as if the field were absent.
UNSUPPORTED_FIELDS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
)
MAX_CHOICES = 16
# torch seeds random generators with 64-bit integers.
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1


MAX_STOP_SEQUENCES = 4


def check_stop(stop: str | list[str] | None) -> str | list[str] | None:
    if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
    return stop


def stop_tuple(stop: str | list[str] | None) -> tuple[str, ...]:
    """Returns the stop sequences as a tuple without empty strings."""
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    return tuple(sequence for sequence in stops if sequence)


class TextPart(BaseModel):
    """One element of a message's content given as a list of parts."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message of the conversation sent by the client."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """Returns the content as plain text; only text parts are accepted."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationRequest(BaseModel):
    """Fields that chat and legacy completions share, with OpenAI's defaults and limits."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=MIN_SEED, le=MAX_SEED)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        return check_stop(stop)

    def stop_sequences(self) -> tuple[str, ...]:
        return stop_tuple(self.stop)


class ChatCompletionRequest(GenerationRequest):
    """The body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    safety_identifier: str | None = None
    response_format: dict[str, Any] | None = None
    # vLLM's chat template extensions. With continue_final_message the reply continues the final assistant
    # message instead of starting a new one, which lets a client force the start of a reply.
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = False

    def plain_messages(self) -> list[dict[str, str]]:
        """Returns the messages as role/content pairs; ``developer`` messages become ``system`` messages."""
        return [
            {"role": "system" if message.role == "developer" else message.role, "content": message.text()}
            for message in self.messages
        ]


class CompletionRequest(GenerationRequest):
    """The body of the legacy ``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    best_of: int | None = Field(default=None, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
