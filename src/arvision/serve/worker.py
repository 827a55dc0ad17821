"""One worker thread per model: a queue of requests, merged into batches, cancellable.

Requests whose sampling settings are equal are decoded together in one ``Pipeline.sample``
call (their classes may differ): each image has its own random stream
(``arvision.samplers.image_seeds``), so a request served in a merged batch gets the
images it would get alone, ``pipe.sample(classes, n, seed=s)``: the same random draws, and pixels
within one 8-bit level (the decoder's float output depends in its last bits on the batch size;
``arvision.serve.client.same_image``). Without per-image streams (an
older arvision) only identical requests (settings, classes, n and seed) share a run.

A cancelled request (``POST /cancel/ID`` or its client went away) leaves the queue at once; a
running batch stops at its next step when every request in it has gone (the step callback
raises :class:`BatchCancelled`, caught here).
"""

from __future__ import annotations

import base64
import io
import queue
import threading
import time
import uuid
from typing import Any, Callable

import torch

from arvision.data.images import tensor_to_pil
from arvision.pipeline import Pipeline
from arvision.samplers import StepInfo, check_settings
from arvision.serve.api import Request, RequestError, has_preview

try:  # per-image random streams (issue 17); absent in older trees
    from arvision.samplers import image_seeds
except ImportError:  # pragma: no cover - depends on the library version
    image_seeds = None

PER_IMAGE_SEEDS = image_seeds is not None


class BatchCancelled(Exception):
    """Raised from the step callback when no request of the running batch is left."""


def png_base64(image_CHW: torch.Tensor) -> str:
    """One image (C, H, W) in [-1, 1] as a base64 PNG."""
    buf = io.BytesIO()
    tensor_to_pil(image_CHW).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class Job:
    """One request in the server: its events (a thread-safe queue of dicts, None = the end)."""

    def __init__(self, request: Request) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.request = request
        n = request.num_images
        self.seeds = image_seeds(request.seed, n) if PER_IMAGE_SEEDS else [request.seed] * n
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancelled = threading.Event()
        self.status = "queued"
        self.created = time.monotonic()
        self.batch: tuple[int, int] = (0, 0)  # (images, requests) of the batch that served it
        self._lock = threading.Lock()

    @property
    def key(self) -> Any:
        """Requests with equal keys may share a batch."""
        r = self.request
        return r.settings if PER_IMAGE_SEEDS else (r.settings, tuple(r.labels), r.seed)

    def emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            if self.status not in ("done", "cancelled", "error"):
                self.events.put({"id": self.id, **event})

    def finish(self, status: str, event: dict[str, Any]) -> bool:
        """Send the last event and close the stream; False if it was closed already."""
        with self._lock:
            if self.status in ("done", "cancelled", "error"):
                return False
            self.status = status
            self.events.put({"id": self.id, **event})
            self.events.put(None)
            return True

    def describe(self) -> str:
        r = self.request
        return f"{r.model} {self.id}: {r.num_images} image(s), classes {','.join(map(str, r.classes))} x {r.n}, seed {r.seed}"


class ModelWorker:
    """The queue and worker thread of one model."""

    def __init__(self, name: str, pipe: Pipeline, *, max_batch: int = 64, max_queue: int = 64, precision: str = "fp32",
                 log: Callable[[str], None] = print) -> None:  # fmt: skip
        self.name, self.pipe, self.max_batch, self.max_queue, self.log = name, pipe, max_batch, max_queue, log
        self.compute = {} if precision == "fp32" else {"precision": precision}  # what every Pipeline.sample call gets
        self.pending: list[Job] = []
        self.running: list[Job] = []
        self.batches = 0  # batches run so far (what tests read to see merging)
        self._cond = threading.Condition()
        self._closed = False
        order = pipe.generator.order_class(pipe.generator, pipe.tokenizer)
        self._order, self._previews = order, has_preview(order)
        self._thread = threading.Thread(target=self._loop, name=f"arvision-serve-{name}", daemon=True)
        self._thread.start()

    # -- called by the HTTP threads ----------------------------------------------------------------
    def submit(self, job: Job) -> int:
        """Queue ``job``; its place in the queue (0 = next). A full queue is a 429."""
        with self._cond:
            if self._closed:
                raise RequestError("the server is shutting down", status=503)
            if len(self.pending) >= self.max_queue:
                raise RequestError(f"the queue of {self.name} is full ({len(self.pending)} requests waiting): try again in a "
                                   "moment, or start the server with a larger --max-queue", status=429)  # fmt: skip
            self.pending.append(job)
            self._cond.notify()
            return len(self.pending) - 1

    def cancel(self, job: Job, why: str = "cancelled") -> bool:
        """Stop spending compute on ``job``; False if it had finished already."""
        with self._cond:
            if job in self.pending:
                self.pending.remove(job)
            job.cancelled.set()
        if job.finish("cancelled", {"event": "cancelled", "reason": why}):
            self.log(f"{job.describe()} -> cancelled ({why}) after {time.monotonic() - job.created:.2f} s")
            return True
        return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            jobs, self.pending = self.pending, []
            self._cond.notify_all()
        for job in jobs + self.running:
            self.cancel(job, "server shutting down")
        self._thread.join(timeout=10)

    # -- the worker thread -------------------------------------------------------------------------
    def _take(self) -> list[Job]:
        """The next batch: the oldest request and every queued one with its key, up to max_batch images."""
        with self._cond:
            while not self.pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            first = self.pending.pop(0)
            batch, images = [first], first.request.num_images
            for job in list(self.pending):
                if job.key == first.key and (not PER_IMAGE_SEEDS or images + job.request.num_images <= self.max_batch):
                    self.pending.remove(job)
                    batch.append(job)
                    images += job.request.num_images if PER_IMAGE_SEEDS else 0
            self.running = batch
            for job in batch:
                job.status = "running"
            return batch

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                return
            try:
                self._run(jobs)
            except BatchCancelled:
                pass
            except Exception as e:  # a late error fails this batch's requests, never the worker
                user = isinstance(e, (ValueError, TypeError))
                for job in jobs:
                    if job.finish("error", {"event": "error", "status": 400 if user else 500,
                                            "error": str(e) if user else f"internal error: {type(e).__name__}: {e}"}):  # fmt: skip
                        self.log(f"{job.describe()} -> error: {e}")
            finally:
                with self._cond:
                    self.running = []
                    self.batches += 1

    def _run(self, jobs: list[Job]) -> None:
        pipe, first = self.pipe, jobs[0].request
        if PER_IMAGE_SEEDS:  # one image per row: each request's rows follow the previous one's
            labels = [c for j in jobs for c in j.request.labels]
            seeds = [s for j in jobs for s in j.seeds]
            rows, start = [], 0
            for j in jobs:
                rows.append(slice(start, start + j.request.num_images))
                start += j.request.num_images
            call = {"classes": labels, "n_per_class": 1, "seed": seeds}
        else:  # identical requests: one run, shared by all
            rows = [slice(0, first.num_images)] * len(jobs)
            call = {"classes": first.classes, "n_per_class": first.n, "seed": first.seed}
        B = rows[-1].stop
        steps = len(check_settings(pipe.generator, first.settings, pipe.tokenizer)) if first.settings.decoding == "plain" else None
        num_tokens = pipe.generator.num_tokens
        for j in jobs:
            j.batch = (B, len(jobs))
            j.emit({"event": "started", "batch_images": B, "batch_requests": len(jobs), "steps": steps})
        shown = {"group": 0, "passes": 0}

        def callback(info: StepInfo) -> None:
            live = [(j, r) for j, r in zip(jobs, rows) if not j.cancelled.is_set()]
            if not live:
                raise BatchCancelled
            step = info.step
            shown["passes"] += 1
            done = shown["passes"] / steps if steps else min(1.0, step.end / num_tokens)  # sjd: tokens accepted so far
            event = {"event": "step", "step": shown["passes"], "steps": steps, "progress": round(done, 4)}
            preview = None
            if self._previews and step.sub == 0 and step.group > shown["group"] and any(j.request.previews for j, _ in live):
                shown["group"] = step.group  # the state holds every scale before this one
                preview = self._order.preview(info.state)
            for j, r in live:
                if preview is not None and j.request.previews:
                    j.emit({**event, "preview": [png_base64(x) for x in preview[r]]})
                else:
                    j.emit(event)

        t0 = time.monotonic()
        out = pipe.sample(batch_size=max(B, 1), callback=callback, **call, **first.overrides, **self.compute)
        seconds = time.monotonic() - t0
        images = out.images.mul(2).sub(1)  # tensor_to_pil takes [-1, 1]
        for j, r in zip(jobs, rows):
            if j.cancelled.is_set():
                continue
            for i, (img, label) in enumerate(zip(images[r], out.labels[r].tolist())):
                j.emit({"event": "image", "index": i, "class": label, "png": png_base64(img)})
            total = time.monotonic() - j.created
            if j.finish("done", {"event": "done", "seconds": round(total, 4), "batch_seconds": round(seconds, 4),
                                 "batch_images": B, "batch_requests": len(jobs), "seed": j.request.seed,
                                 "forward_passes": out.stats.forward_passes}):  # fmt: skip
                self.log(f"{j.describe()} -> done in {total:.2f} s (batch of {B} images from {len(jobs)} request(s))")
