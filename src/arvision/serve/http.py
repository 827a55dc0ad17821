"""The HTTP side: the page, ``GET /models``, ``POST /generate`` (an NDJSON stream), ``POST /cancel/ID``.

Standard library only (``http.server.ThreadingHTTPServer``): one thread per connection, the
model work on each model's worker thread (``serve/worker.py``). ``POST /generate`` answers
``application/x-ndjson`` over chunked transfer, one JSON object a line:

    {"event": "queued", "id": ..., "position": 0, "images": 8, "seed": 0}
    {"event": "started", "batch_images": 16, "batch_requests": 2, "steps": 6}
    {"event": "step", "step": 3, "steps": 6, "progress": 0.5, "preview": [PNG base64, ...]}   # preview where the order has one
    {"event": "image", "index": 0, "class": 3, "png": PNG base64}                            # one per image
    {"event": "done", "seconds": 0.41, ...}          (or "cancelled", or "error" with "status")

A request that is refused (bad settings, unknown model, limits) gets a plain JSON error with a
4xx status before any stream starts. A client that goes away cancels its request.
"""

from __future__ import annotations

import json
import queue
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable

from arvision.pipeline import Pipeline
from arvision.serve.api import RequestError, describe_model, parse_request
from arvision.serve.worker import PER_IMAGE_SEEDS, Job, ModelWorker

HEARTBEAT_S = 5.0  # an idle stream sends a line this often (keeps proxies from closing it)
CHECK_S = 0.2  # how often a stream checks that its client is still there
DRAIN_LIMIT = 1 << 20  # a too-large body up to this size is read (and dropped) so that the 413 reaches the client


class GenerationServer(ThreadingHTTPServer):
    """A web server over ``pipelines`` (name -> Pipeline); ``port=0`` picks a free port."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog (socketserver's default 5 refuses connections when many clients arrive at once)

    def __init__(self, pipelines: dict[str, Pipeline], *, host: str = "127.0.0.1", port: int = 8000, max_images: int = 64,
                 max_batch: int = 64, max_queue: int = 64, max_body: int = 64 * 1024, precision: str = "fp32",
                 log: Callable[[str], None] = print) -> None:  # fmt: skip
        if not pipelines:
            raise ValueError("no models to serve: pass at least one generator (a directory or a shipped name)")
        for what, v in (("max_images", max_images), ("max_batch", max_batch), ("max_queue", max_queue), ("max_body", max_body)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{what} must be a positive integer, got {v!r}")
        if max_images > max_batch:
            raise ValueError(f"max_images ({max_images}) must be <= max_batch ({max_batch}): one request runs in one batch")
        self.pipelines, self.max_images, self.max_body, self.log = pipelines, max_images, max_body, log
        self.models = [describe_model(name, pipe) for name, pipe in pipelines.items()]
        if precision != "fp32":  # bf16: checked against each model's device before serving
            from arvision.runtime import check_precision

            for pipe in pipelines.values():
                check_precision(precision, pipe.device)
        self.workers = {name: ModelWorker(name, pipe, max_batch=max_batch, max_queue=max_queue, precision=precision, log=log)
                        for name, pipe in pipelines.items()}  # fmt: skip
        self.jobs: dict[str, tuple[Job, ModelWorker]] = {}
        self.jobs_lock = threading.Lock()
        self.page = resources.files("arvision.serve").joinpath("page.html").read_bytes()
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> threading.Thread:
        """Serve on a background thread (tests, notebooks); stop with :meth:`close`."""
        t = threading.Thread(target=self.serve_forever, name="arvision-serve-http", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        for w in self.workers.values():
            w.close()


class Handler(BaseHTTPRequestHandler):
    server: GenerationServer
    protocol_version = "HTTP/1.1"  # chunked streams
    timeout = 60  # a client that stops sending its request mid-way does not hold a thread for ever

    def log_message(self, format: str, *args: Any) -> None:  # one line per request is logged by the routes
        pass

    # -- replies -----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == 429:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")
        if status >= 400:
            self.server.log(f"{self.command} {self.path} -> {status}: {obj.get('error', '')}")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message, "status": status})

    # -- routes ------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif path == "/models":
            s = self.server
            self._json(200, {"models": s.models, "limits": {"max_images": s.max_images},
                             "per_image_seeds": PER_IMAGE_SEEDS})  # fmt: skip
        else:
            self._error(404, f"no page {path}: try / (the page), GET /models, POST /generate")

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        if path == "/generate":
            self._generate()
        elif path.startswith("/cancel/"):
            self._read_body()
            with self.server.jobs_lock:
                found = self.server.jobs.get(path[len("/cancel/"):])
            if found is None:
                self._error(404, f"no running or queued request {path[len('/cancel/'):]!r}")
            else:
                self._json(200, {"cancelled": found[1].cancel(found[0], "POST /cancel")})
        else:
            self._error(404 if path != "/" else 405, f"no route POST {path}: use POST /generate or POST /cancel/ID")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise RequestError("send the body with a Content-Length (chunked request bodies are not read)", status=411)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError(f"bad Content-Length {self.headers.get('Content-Length')!r}") from None
        if length > self.server.max_body:
            self.close_connection = True  # the unread body would otherwise be read as the next request
            left = min(length, DRAIN_LIMIT)  # read it away: closing on unread data resets the connection before the client reads the 413
            while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                left -= len(chunk)
            raise RequestError(f"request body of {length} bytes is more than the {self.server.max_body} this server reads", 413)
        return self.rfile.read(length) if length > 0 else b""

    def _generate(self) -> None:
        s = self.server
        try:
            raw = self._read_body()
            try:
                body = json.loads(raw or b"null")
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise RequestError(f"the body is not valid JSON ({e})") from None
            job = Job(parse_request(body, s.pipelines, s.max_images))
            worker = s.workers[job.request.model]
            position = worker.submit(job)
        except RequestError as e:
            return self._error(e.status, str(e))
        except Exception as e:  # a bug must not hang the connection: a 500 that says what happened
            return self._error(500, f"internal error: {type(e).__name__}: {e}")
        with s.jobs_lock:
            s.jobs[job.id] = (job, worker)
        try:
            self._stream(job, worker, position)
        finally:
            with s.jobs_lock:
                s.jobs.pop(job.id, None)

    def _stream(self, job: Job, worker: ModelWorker, position: int) -> None:
        """Relay the job's events as NDJSON chunks until it ends or the client goes away."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Request-Id", job.id)
        self.end_headers()
        r = job.request
        first = {"event": "queued", "id": job.id, "model": r.model, "position": position, "images": r.num_images,
                 "classes": r.classes, "n": r.n, "seed": r.seed, "settings": r.settings.to_dict()}  # fmt: skip
        try:
            self._chunk(first)
            last = checked = time.monotonic()
            while True:
                try:
                    event = job.events.get(timeout=CHECK_S)
                except queue.Empty:
                    event = {}
                if event is None:
                    break
                if time.monotonic() - checked > CHECK_S or not event:  # also while events flow: a busy stream notices too
                    checked = time.monotonic()
                    if self._client_gone():
                        worker.cancel(job, "client disconnected")
                        return
                if not event and time.monotonic() - last > HEARTBEAT_S:
                    event = {"event": "wait", "id": job.id}
                if event:
                    self._chunk(event)
                    last = time.monotonic()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:  # broken pipe, reset, timeout
            worker.cancel(job, "client disconnected")

    def _chunk(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _client_gone(self) -> bool:
        """Whether the client closed its side (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

