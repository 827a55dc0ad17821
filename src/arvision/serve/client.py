"""A small client of the web API (standard library): what the tests and the load benchmark use.

    events = generate("http://127.0.0.1:8000/", {"model": "mnist-scale", "classes": [3], "n": 4})
    images = [decode_png(e["png"]) for e in events if e["event"] == "image"]
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image


class APIError(Exception):
    """A refused request: ``status`` and the server's JSON ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body.get('error', body)}")
        self.status, self.body = status, body


def _post(url: str, body: Any, timeout: float) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise APIError(e.code, json.loads(e.read() or b"{}")) from None


def stream(base_url: str, body: Any, *, timeout: float = 120.0) -> Iterator[dict[str, Any]]:
    """The events of ``POST /generate`` as they arrive (an :class:`APIError` for a refused request)."""
    with _post(base_url.rstrip("/") + "/generate", body, timeout) as resp:
        for line in resp:
            if line.strip():
                yield json.loads(line)


def generate(base_url: str, body: Any, *, timeout: float = 120.0, on_event: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Every event of one request, in order."""
    events = []
    for e in stream(base_url, body, timeout=timeout):
        events.append(e)
        if on_event is not None:
            on_event(e)
    return events


def get_json(url: str, *, timeout: float = 30.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise APIError(e.code, json.loads(e.read() or b"{}")) from None


def cancel(base_url: str, request_id: str, *, timeout: float = 30.0) -> dict[str, Any]:
    with _post(base_url.rstrip("/") + f"/cancel/{request_id}", b"", timeout) as resp:
        return json.loads(resp.read())


def decode_png(b64: str) -> np.ndarray:
    """A base64 PNG of the stream as a uint8 array (H, W) or (H, W, 3)."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two 8-bit images are the same picture: equal shapes, every pixel within one level.

    A request served in a merged batch gets the same random draws as alone, but the decoder's float output
    depends in its last bits on the batch size, so a pixel that sits on a rounding boundary can come
    out one level apart (seen: 1 pixel of 784 in a 16-request load run). Any real mix-up (another
    request's image, another class or seed) differs by far more.
    """
    return a.shape == b.shape and int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max(initial=0)) <= 1


def images_of(events: list[dict[str, Any]]) -> list[np.ndarray]:
    return [decode_png(e["png"]) for e in events if e["event"] == "image"]
