"""An OpenAI-compatible upstream that responds instantly, for measuring what sits in front of it.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) to respond to ``POST .../chat/completions``
with a fixed chat completion, so that its own cost is small next to the proxies being measured.
Run: ``python -m bench.fake_upstream --port 9100``.
"""

from __future__ import annotations

import argparse
import asyncio
import json

COMPLETION = {
    "id": "chatcmpl-fake",
    "object": "chat.completion",
    "created": 0,
    "model": "fake-upstream-model",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "OK."}, "logprobs": None, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}
BODY = json.dumps(COMPLETION).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode()
    + b"\r\nconnection: keep-alive\r\n\r\n"
    + BODY
)
MODELS = json.dumps({"object": "list", "data": [{"id": "fake-upstream-model", "object": "model"}]}).encode()
MODELS_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(MODELS)).encode()
    + b"\r\n\r\n"
    + MODELS
)


class FakeUpstream(asyncio.Protocol):
    """Responds to every request on a connection with the fixed completion (or the model list for GET)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                length = int(head[marker + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(MODELS_RESPONSE if head.startswith(b"get") else RESPONSE)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeUpstream, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    arguments = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(arguments.host, arguments.port))


if __name__ == "__main__":
    main()
