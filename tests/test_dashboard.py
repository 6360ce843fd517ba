"""The /dashboard page, rendered by headless Chromium against a gateway with real sessions in Redis."""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from adapters.settings import Settings
from gateway import routes_dashboard
from gateway.errors import install_error_handlers
from tests.conftest import TINY_MODEL_NAME, RunningGateway
from tests.test_routing import register_adapter

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 900)
# Virtual time that Chromium grants the page's scripts. Chromium 156 pauses it while a fetch waits for the network.
VIRTUAL_TIME_BUDGET_MS = 15000
CHROMIUM_TIMEOUT_S = 120

PARTNER = "dash-alice"
OTHER_PARTNER = "dash-bob"
# Each session has a long first mention and, in its next turn, a shorter re-mention of the same thing.
CONVERSATIONS = [
    ("Please put the small red ceramic mug with the chipped handle on the top shelf.", "Now move the chipped mug."),
    ("Bring me the tall oak bookshelf catalogue from the window sill.", "Put the oak catalogue back."),
    ("Where is the blue striped umbrella with the curved wooden handle?", "Did you find the striped umbrella?"),
]
MODEL_BLUE = (0x25, 0x63, 0xEB)
PARTNER_AMBER = (0xD9, 0x77, 0x06)


@pytest.fixture(scope="session")
def chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.skip(
        f"no Chromium binary found on PATH (looked for {', '.join(CHROMIUM_NAMES)}); run `make install-browser`"
    )


def run_chromium(binary: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess[bytes]:
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        *arguments,
    ]
    result = subprocess.run(command, capture_output=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def find_all(self, tag: str, **attrs: str) -> list[Element]:
        """Returns the descendants with ``tag`` whose attributes include ``attrs`` (underscores read as dashes)."""
        expected = {name.replace("_", "-"): value for name, value in attrs.items()}
        found = []
        for child in self.children:
            if isinstance(child, str):
                continue
            if child.tag == tag and all(child.attrs.get(name) == value for name, value in expected.items()):
                found.append(child)
            found.extend(child.find_all(tag, **attrs))
        return found

    def find(self, tag: str, **attrs: str) -> Element:
        matches = self.find_all(tag, **attrs)
        assert len(matches) == 1, f"expected one <{tag} {attrs}>, found {len(matches)}"
        return matches[0]


class TreeBuilder(HTMLParser):
    """Builds an Element tree from the serialised DOM that Chromium's --dump-dom prints."""

    VOID_TAGS = {"meta", "link", "br", "hr", "img", "input", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID_TAGS:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_dom(html: str) -> Element:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def render_dom(binary: str, profile: Path, url: str) -> Element:
    return parse_dom(run_chromium(binary, profile, "--dump-dom", url).stdout.decode())


def paeth(left: int, up: int, up_left: int) -> int:
    estimate = left + up - up_left
    distances = (abs(estimate - left), abs(estimate - up), abs(estimate - up_left))
    return (left, up, up_left)[distances.index(min(distances))]


def unfilter_row(kind: int, row: np.ndarray, previous: np.ndarray, bpp: int) -> np.ndarray:
    """Reverses one PNG scanline filter (None, Sub, Up, Average, Paeth) on 8-bit samples."""
    if kind == 0:
        return row
    if kind == 2:
        return (row.astype(np.uint16) + previous).astype(np.uint8)
    if kind == 1:
        # Sub adds the sample one pixel to the left, so each channel is a running sum modulo 256.
        pixels = row.reshape(-1, bpp).astype(np.uint64)
        return (np.cumsum(pixels, axis=0) % 256).astype(np.uint8).reshape(-1)

    out = bytearray(row.tobytes())
    above = previous.tobytes()
    for index in range(len(out)):
        left = out[index - bpp] if index >= bpp else 0
        up_left = above[index - bpp] if index >= bpp else 0
        predictor = (left + above[index]) // 2 if kind == 3 else paeth(left, above[index], up_left)
        out[index] = (out[index] + predictor) % 256
    return np.frombuffer(bytes(out), dtype=np.uint8)


def decode_png(data: bytes) -> np.ndarray:
    """Decodes a non-interlaced 8-bit RGB or RGBA PNG into a height x width x channels array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    offset, header, compressed = 8, b"", bytearray()
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed += body
        offset += 12 + length

    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), f"unsupported PNG: bit depth {depth}, interlace {interlace}"
    channels = {2: 3, 6: 4}[color_type]
    raw = np.frombuffer(zlib.decompress(bytes(compressed)), dtype=np.uint8)
    stride = width * channels + 1
    rows = []
    previous = np.zeros(width * channels, dtype=np.uint8)
    for y in range(height):
        line = raw[y * stride : (y + 1) * stride]
        previous = unfilter_row(int(line[0]), line[1:], previous, channels)
        rows.append(previous)
    return np.stack(rows).reshape(height, width, channels)


def pixels_near(image: np.ndarray, color: tuple[int, int, int], tolerance: int = 10) -> int:
    difference = np.abs(image[:, :, :3].astype(np.int16) - np.array(color, dtype=np.int16))
    return int(np.all(difference <= tolerance, axis=2).sum())


def format_like_page(value: float, digits: int) -> str:
    """Rounds as JavaScript's toFixed does: the exact binary value, ties away from zero."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def chat(gateway: RunningGateway, partner_id: str, session_id: str, messages: list[dict[str, str]]) -> httpx.Response:
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": TINY_MODEL_NAME, "messages": messages, "max_tokens": 12},
        headers={"X-Partner-ID": partner_id, "X-Session-ID": session_id},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response


def hold_conversation(gateway: RunningGateway, partner_id: str, session_id: str, first: str, later: str) -> str:
    """Sends two turns of one session and returns the X-Adapter header of the second."""
    messages = [{"role": "user", "content": first}]
    reply = chat(gateway, partner_id, session_id, messages).json()["choices"][0]["message"]["content"]
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": later}]
    return chat(gateway, partner_id, session_id, messages).headers["X-Adapter"]


def stored_sessions(gateway: RunningGateway, partner_id: str, turns: int) -> list[dict[str, Any]]:
    """Waits until the partner's turns are written (the gateway stores them off the response path)."""
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(f"{gateway.base_url}/v1/partners/{partner_id}/sessions", timeout=10)
        sessions = response.json()["data"]
        if sum(len(session["turns"]) for session in sessions) == turns:
            return sessions
        assert time.monotonic() < deadline, f"only {len(sessions)} sessions of {partner_id} stored after 30 s"
        time.sleep(0.2)


def start_job(gateway: RunningGateway, partner_id: str) -> str:
    response = httpx.post(f"{gateway.base_url}/v1/partners/{partner_id}/adapters", timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def card_value(dom: Element, metric: str) -> str:
    card = dom.find("div", data_metric=metric)
    return card.find("div", **{"class": "card-value"}).text()


def test_dashboard_renders_partner_sessions(chromium: str, gateway: RunningGateway, tmp_path: Path) -> None:
    session_ids = [f"dash-session-{index}" for index in range(len(CONVERSATIONS))]
    adapter_header = ""
    for session_id, (first, later) in zip(session_ids, CONVERSATIONS, strict=True):
        adapter_header = hold_conversation(gateway, PARTNER, session_id, first, later)
    hold_conversation(gateway, OTHER_PARTNER, "dash-other", *CONVERSATIONS[0])

    sessions = stored_sessions(gateway, PARTNER, turns=2 * len(CONVERSATIONS))
    stored_sessions(gateway, OTHER_PARTNER, turns=2)
    turns = [turn for session in sessions for turn in session["turns"]]
    model_tokens = sum(turn["usage"]["completion_tokens"] for turn in turns) / len(turns)
    own_job = start_job(gateway, PARTNER)
    other_job = start_job(gateway, OTHER_PARTNER)

    url = f"{gateway.base_url}/dashboard?partner={PARTNER}"
    dom = render_dom(chromium, tmp_path / "profile-dom", url)
    screenshot = tmp_path / "dashboard.png"
    run_chromium(chromium, tmp_path / "profile-png", f"--screenshot={screenshot}", url)

    body = dom.find("body")
    assert body.attrs["data-state"] == "ready", dom.find("p", id="status").text()
    assert card_value(dom, "partner") == PARTNER
    assert card_value(dom, "adapter") == adapter_header
    assert card_value(dom, "sessions") == str(len(CONVERSATIONS))
    assert card_value(dom, "turns") == str(len(turns))
    assert card_value(dom, "model-tokens") == format_like_page(model_tokens, 1)

    tokens_chart = dom.find("svg", data_chart="tokens")
    model_points = tokens_chart.find_all("circle", data_series="model")
    assert [point.attrs["data-session-id"] for point in model_points] == session_ids
    assert len(tokens_chart.find_all("path", data_series="model")) == 1
    planning_points = dom.find("svg", data_chart="planning").find_all("circle", data_series="planning")
    assert [point.attrs["data-session-id"] for point in planning_points] == session_ids
    assert len(dom.find_all("svg", data_chart="compression")) == 1

    jobs_table = dom.find("table", data_table="jobs")
    job_ids = [row.find_all("td")[0].text() for row in jobs_table.find("tbody").find_all("tr")]
    assert job_ids == [own_job]
    assert other_job not in dom.find("div", id="jobs").text()
    assert dom.find("div", id="adapters").find("p").attrs["data-kind"] == "empty"

    image = decode_png(screenshot.read_bytes())
    assert image.shape[:2] == (WINDOW[1], WINDOW[0])
    assert float(image[:, :, :3].std()) > 10.0
    assert pixels_near(image, MODEL_BLUE) > 20
    assert pixels_near(image, PARTNER_AMBER) > 20


def test_dashboard_empty_and_error_states(chromium: str, gateway: RunningGateway, tmp_path: Path) -> None:
    empty = render_dom(chromium, tmp_path / "profile-empty", f"{gateway.base_url}/dashboard")

    assert empty.find("body").attrs["data-state"] == "empty"
    assert "No partners yet" in empty.find("p", id="status").text()

    failed = render_dom(chromium, tmp_path / "profile-invalid", f"{gateway.base_url}/dashboard?partner=not%20valid")
    api_error = httpx.get(f"{gateway.base_url}/v1/partners/not%20valid/metrics", timeout=10).json()["error"]

    assert failed.find("body").attrs["data-state"] == "error"
    assert api_error["message"] in failed.find("div", id="cards").text()


def test_dashboard_assets_served() -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(routes_dashboard.router)
    client = TestClient(app)

    page = client.get("/dashboard")
    script = client.get("/dashboard/assets/charts.js")
    missing = client.get("/dashboard/assets/secrets.txt")

    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert script.headers["content-type"].startswith("text/javascript")
    assert missing.status_code == 404
    assert "secrets.txt" in missing.json()["error"]["message"]


def test_partner_without_sessions_not_error(
    chromium: str,
    gateway: RunningGateway,
    tmp_path: Path,
    tiny_settings: Settings,
    tiny_model_path: str,
    redis_client: redis.Redis,
) -> None:
    register_adapter(tiny_settings, tiny_model_path, "dash-nosessions", redis_client)
    dom = render_dom(chromium, tmp_path / "profile-nosessions", f"{gateway.base_url}/dashboard?partner=dash-nosessions")

    assert dom.find("body").attrs["data-state"] == "ready"
    assert "has no sessions yet" in dom.find("div", id="cards").text()
    assert "active" in dom.find("div", id="adapters").text()
