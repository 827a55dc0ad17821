"""Load test of ``arvision serve`` on loopback: N concurrent clients, bounded in count and time.

Every client sends ``--requests`` requests one after the other (random classes, images and
seed), reads the whole NDJSON stream and keeps its images. Afterwards every answer is checked
against that request alone: the classes/seed the server echoes, the class of every image, and
(with the in-process server) the pixels against ``pipe.sample(classes, n, seed=seed)``. A
request without a "done" event is *lost*; one whose images differ is *mixed up*.

    python benchmarks/serve_load.py                      # 32 clients x 4 requests on mnist-scale
    python benchmarks/serve_load.py --clients 8 --requests 2 --out benchmarks/results/serve_load.md

Prints p50/p99 latency (request sent -> last image), images/s over the wall time and the mean
number of requests merged per batch.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arvision.serve import GenerationServer, load_pipelines
from arvision.serve.client import APIError, decode_png, generate, same_image


HEADER = """# arvision serve: load test on loopback

`python benchmarks/serve_load.py [--clients N] [--requests R] --out benchmarks/results/serve_load.md`: an
in-process server (`GenerationServer`, default limits), N client threads each sending R requests one
after the other (1-2 random classes, 1-4 images, a random seed, no previews). Lost = no "done" event;
mixed up = an image, class, seed or id that differs from the request decoded alone
(`pipe.sample(classes, n, seed=seed)`, compared pixel by pixel, within one 8-bit level: the decoder's
float output depends in its last bits on the batch size). Latency: request sent -> stream
ended. images/s: over the wall time. requests/batch: mean number of requests merged into the batch
that served a request. CPU: 2 cores shared with other jobs, `OMP_NUM_THREADS=1`, torch 2.13.

"""


@dataclass
class Result:
    body: dict
    latency: float = 0.0
    events: list = field(default_factory=list)
    error: str | None = None


def _client(url: str, rng: random.Random, model: str, num_classes: int, requests: int, deadline: float, timeout: float,
            out: list[Result], max_images: int) -> None:  # fmt: skip
    for _ in range(requests):
        if time.monotonic() > deadline:
            return
        classes = rng.sample(range(num_classes), rng.randint(1, 2))
        body = {"model": model, "classes": classes, "n": rng.randint(1, max(1, max_images // len(classes))),
                "seed": rng.randrange(2**31), "previews": False}  # fmt: skip
        r = Result(body)
        t0 = time.monotonic()
        try:
            r.events = generate(url, body, timeout=timeout)
        except (APIError, OSError) as e:
            r.error = str(e)
        r.latency = time.monotonic() - t0
        out.append(r)


def check(results: list[Result], pipelines: dict | None) -> dict:
    """Lost / mixed-up requests; with ``pipelines`` the pixels are compared with each request decoded alone."""
    lost, mixed, errors = 0, 0, 0
    for r in results:
        if r.error is not None:
            errors += 1
            continue
        kinds = [e["event"] for e in r.events]
        if "done" not in kinds:
            lost += 1
            continue
        b, queued = r.body, r.events[0]
        labels = [c for c in b["classes"] for _ in range(b["n"])]
        images = [e for e in r.events if e["event"] == "image"]
        ids = {e["id"] for e in r.events}
        ok = (queued["classes"] == b["classes"] and queued["seed"] == b["seed"] and len(ids) == 1
              and [e["class"] for e in images] == labels and [e["index"] for e in images] == list(range(len(labels))))  # fmt: skip
        if ok and pipelines is not None:
            from arvision.serve.worker import png_base64

            solo = pipelines[b["model"]].sample(b["classes"], b["n"], seed=b["seed"]).images.mul(2).sub(1)
            ok = all(same_image(decode_png(e["png"]), decode_png(png_base64(x))) for e, x in zip(images, solo))
        mixed += not ok
    return {"lost": lost, "mixed_up": mixed, "errors": errors}


def run_load(url: str, *, model: str, num_classes: int = 10, clients: int = 32, requests: int = 4, max_images: int = 4,
             seconds: float = 300.0, timeout: float = 120.0, seed: int = 0) -> tuple[list[Result], float]:  # fmt: skip
    """Run the clients; (results, wall seconds). No client starts a request after ``seconds``."""
    results: list[Result] = []
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=_client, args=(url, random.Random(seed * 1000 + i), model, num_classes, requests, deadline,
                                                      timeout, results, max_images), daemon=True)
               for i in range(clients)]  # fmt: skip
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + timeout + 10)
    return results, time.monotonic() - t0


def summary(results: list[Result], wall: float, checked: dict) -> dict:
    done = [r for r in results if r.error is None and any(e["event"] == "done" for e in r.events)]
    lat = sorted(r.latency for r in done) or [float("nan")]
    images = sum(sum(e["event"] == "image" for e in r.events) for r in done)
    batch = [next(e["batch_requests"] for e in r.events if e["event"] == "done") for r in done]
    return {"requests": len(results), "done": len(done), **checked, "images": images,
            "p50_s": statistics.median(lat), "p99_s": lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))],
            "images_per_s": images / wall if wall else float("nan"), "wall_s": wall,
            "mean_requests_per_batch": statistics.mean(batch) if batch else float("nan")}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist-scale")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max-images", type=int, default=4, help="most images per request (1-2 classes x n)")
    p.add_argument("--seconds", type=float, default=300, help="no request starts after this")
    p.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch (4 = one request per batch: no merging)")
    p.add_argument("--url", help="an already running server (default: start one in this process; pixels are then checked)")
    p.add_argument("--out", help="append the table to this markdown file")
    args = p.parse_args(argv)
    pipelines = None if args.url else load_pipelines([args.model])
    server = None if args.url else GenerationServer(pipelines, port=0, max_images=min(64, args.max_batch),
                                                         max_batch=args.max_batch, max_queue=max(64, args.clients), log=lambda _: None)  # fmt: skip
    if server is not None:
        server.start()
    url = args.url or server.url
    try:
        results, wall = run_load(url, model=args.model, clients=args.clients, requests=args.requests, max_images=args.max_images,
                                 seconds=args.seconds)  # fmt: skip
        s = summary(results, wall, check(results, pipelines))
    finally:
        if server is not None:
            server.close()
    row = (f"| {args.model} | {args.max_batch} | {args.clients} | {s['requests']} | {s['done']} | {s['lost']} | {s['mixed_up']} | {s['errors']} | "
           f"{s['images']} | {s['p50_s']:.2f} | {s['p99_s']:.2f} | {s['images_per_s']:.1f} | {s['mean_requests_per_batch']:.1f} |")  # fmt: skip
    head = ("| model | max batch | clients | requests | done | lost | mixed up | errors | images | p50 s | p99 s | images/s | requests/batch |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    print(head + "\n" + row)
    if args.out:
        path = Path(args.out)
        new = not path.exists()
        with path.open("a") as f:
            if new:
                f.write(HEADER + head + "\n")
            f.write(row + "\n")
    return 0 if s["lost"] == s["mixed_up"] == s["errors"] == 0 and s["done"] == s["requests"] else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
