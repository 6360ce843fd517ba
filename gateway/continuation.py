"""vLLM's ``continue_final_message`` and ``add_generation_prompt`` chat extensions: request checks and session ids.

With ``continue_final_message`` the request's last message is a partial assistant reply, and the response
contains only the text that continues it. The stored turn keeps the partial message among its request messages
and the continuation as its response, so the conversation a client resends next has the two joined. Such a turn
is stored as not trainable, because the client wrote the start of the reply: it shows neither the model's nor
the partner's own wording, and probes that force reply prefixes must not feed the partner's adapter training.
"""

from __future__ import annotations

from gateway.errors import APIError
from gateway.schemas import ChatCompletionRequest

PARAM = "continue_final_message"


def check_continuation(body: ChatCompletionRequest) -> None:
    """Rejects the flag combinations vLLM rejects, with a 400 that names ``continue_final_message``."""
    if not body.continue_final_message:
        return

    if body.add_generation_prompt and "add_generation_prompt" in body.model_fields_set:
        raise APIError(
            400,
            "continue_final_message and add_generation_prompt cannot both be true; "
            "set add_generation_prompt to false or leave it out",
            param=PARAM,
            code="invalid_value",
        )
    last_role = body.messages[-1].role
    if last_role != "assistant":
        raise APIError(
            400,
            f"continue_final_message requires the last message to be an assistant message, but its role is "
            f"{last_role!r}; append the partial assistant reply to continue, or set continue_final_message to false",
            param=PARAM,
            code="invalid_value",
        )


def history_messages(messages: list[dict[str, str]], *, continue_final_message: bool) -> list[dict[str, str]]:
    """Returns the messages that identify the session: without the partial reply when one is continued."""
    return messages[:-1] if continue_final_message else messages
