"""Large generation runs written chunk by chunk: bounded memory, resumable, reproducible.

``arvision generate MODEL -n 100000 --out-dir DIR`` (or :func:`generate_to_dir`) decodes the
requested images in chunks of ``chunk_size`` and writes each chunk, as soon as it is done, as
``DIR/shard-000000.npz``, ``shard-000001.npz``, ... in the evaluation suites' layout (``arr_0``
uint8 (N, H, W, C), ``arr_1`` labels), and optionally every image as a PNG. Memory stays that of
one chunk whatever the total.

Image ``i`` (class-major order: all images of the first class first) is the image ``i`` of
``pipe.sample(classes, n_per_class, seed=seed)``: it has its own random stream
(:func:`arvision.samplers.image_seeds`), whatever the chunk or batch size. A shard is written
atomically and is the mark of a finished chunk, so a killed run rerun with the same command
continues after the last finished chunk and ends with exactly the images of an uninterrupted
run. ``DIR/run.json`` records the settings; a rerun with other settings is refused
(``overwrite=True`` starts afresh).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from arvision.errors import OutputError
from arvision.metrics.features import save_samples_npz, to_uint8
from arvision.outputs import check_run_dir, write_json
from arvision.pipeline import pop_call_options
from arvision.samplers import image_seeds
from arvision.samplers.search import search_record

if TYPE_CHECKING:
    from arvision.pipeline import Pipeline

RUN_FILE = "run.json"
SHARD_FMT = "shard-{:06d}.npz"


def shard_paths(out_dir: str | os.PathLike) -> list[Path]:
    """The finished shards of a run folder, in order."""
    return sorted(Path(out_dir).glob(SHARD_FMT.replace("{:06d}", "[0-9]" * 6)))


def iter_shards(out_dir: str | os.PathLike) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images uint8 (N, H, W, C), labels (N,)) of every finished shard, one shard in memory at a time."""
    for p in shard_paths(out_dir):
        with np.load(p) as f:
            yield f["arr_0"], f["arr_1"]


def generate_to_dir(
    pipe: "Pipeline", out_dir: str | os.PathLike, classes: Sequence[int] | None, n_per_class: int, *, seed: int = 0,
    chunk_size: int = 1000, batch_size: int = 64, progress: bool = True, overwrite: bool = False,
    individual: str | os.PathLike | None = None, model: str | None = None, **kwargs: Any,
) -> dict[str, Any]:  # fmt: skip
    """Generate ``n_per_class`` images of every class in ``classes`` into ``out_dir`` chunk by chunk.

    ``kwargs`` are :meth:`Pipeline.sample`'s sampling settings and ``draft``/``refiner``/``search``/
    ``reward``/``budget``/``precision``. ``individual``: also write every image as ``individual/CLASS_INDEX.png``.
    Returns a summary: images, chunks made now and resumed, seconds, forward passes per image.
    """
    if chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {chunk_size}")
    out = Path(out_dir)
    check_run_dir(out, "--out-dir", overwrite=overwrite, marker=RUN_FILE, what="generation run")
    labels = pipe.labels_for(classes, n_per_class).cpu()
    models = pop_call_options(kwargs)
    s = pipe.sampling_config(**kwargs)  # bad settings fail before any file is written
    search = models.get("search")
    run = {"model": model or pipe.info.get("preset", "?"), "classes": sorted(set(labels.tolist()), key=labels.tolist().index),
           "n_per_class": n_per_class, "images": len(labels), "seed": seed, "chunk_size": chunk_size,
           "seeding": "per-image", "sampling": s.to_dict(),
           "search": None if search is None else search_record(search, budget=models.get("budget"), reward=models.get("reward")),
           "precision": models.get("precision") or "fp32",
           "extra": {k: str(v) for k, v in models.items() if k in ("draft", "refiner") and v is not None}}  # fmt: skip
    _start(out, run, overwrite)
    n_chunks = -(-len(labels) // chunk_size)
    todo = [k for k in range(n_chunks) if not (out / SHARD_FMT.format(k)).is_file()]
    bar = tqdm(total=n_chunks, initial=n_chunks - len(todo), desc="generate", unit="chunk", disable=not progress)
    seconds, passes, made = 0.0, 0.0, 0
    for k in todo:
        a, b = k * chunk_size, min((k + 1) * chunk_size, len(labels))
        t0 = time.perf_counter()
        res = pipe.sample(labels[a:b].tolist(), 1, seed=image_seeds(seed, b - a, start=a), batch_size=batch_size,
                          **models, **kwargs)
        seconds += time.perf_counter() - t0
        passes += res.stats.forward_passes_per_image * (b - a)
        made += b - a
        images = to_uint8(res.images).cpu()
        if individual is not None:
            _write_pngs(images, labels, a, n_per_class, Path(individual))
        save_samples_npz(out / SHARD_FMT.format(k), images, labels[a:b])  # written last: the chunk is done
        bar.update(1)
    bar.close()
    return {"images": len(labels), "chunks": n_chunks, "chunks_resumed": n_chunks - len(todo), "images_made": made,
            "seconds": seconds, "forward_passes_per_image": passes / made if made else None, "out_dir": str(out)}  # fmt: skip


def _start(out: Path, run: dict[str, Any], overwrite: bool) -> None:
    """Write ``run.json``, or check that the run already in ``out`` has the same settings."""
    manifest = out / RUN_FILE
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if old != run:
            if not overwrite:
                diff = sorted(k for k in run if old.get(k) != run[k]) or ["format"]
                raise OutputError(f"--out-dir {out} holds a generation run with other settings (different {', '.join(diff)}); "
                                  "rerun with the same settings to resume it, pass --overwrite to start afresh, or choose "
                                  "another folder")  # fmt: skip
            for p in shard_paths(out):  # only this command's own files are removed
                p.unlink()
    write_json(manifest, run)


def _write_pngs(images_u8: torch.Tensor, labels: torch.Tensor, start: int, n_per_class: int, folder: Path) -> None:
    """Images ``start...`` as ``folder/CLASS_INDEX.png`` (INDEX within the class, as without --out-dir)."""
    from arvision.data.images import save_image

    for j, img in enumerate(images_u8):
        i = start + j
        save_image(img[None].float().div(127.5).sub(1), folder / f"{int(labels[i])}_{i % n_per_class:04d}.png", padding=0)


# Bytes per image value while a run is held in memory: float32 samples, their concatenation, the
# float grid and its uint8 copy. Measured: `arvision generate mnist-scale -n 600` peaks 64 MB above
# `-n 20` (5,800 more 28x28 images: 14.1 bytes per value); rounded up.
IN_MEMORY_BYTES_PER_VALUE = 16


def check_in_memory(n_images: int, channels: int, side: int, *, nrow: int | None) -> None:
    """Refuse up front a run that cannot be held in memory (or a grid Pillow would not open again).

    ``nrow``: images per row of the grid image that will be written (None: no grid).
    """
    from PIL import Image

    from arvision.outputs import check_memory

    fix = "write the images in chunks with --out-dir DIR instead (bounded memory, resumable)"
    check_memory(n_images * channels * side * side * IN_MEMORY_BYTES_PER_VALUE,
                 f"{n_images:,} images of {channels}x{side}x{side} held at once", fix)  # fmt: skip
    if nrow is None or Image.MAX_IMAGE_PIXELS is None:
        return
    cols, rows = min(nrow, n_images), -(-n_images // nrow)
    width, height = cols * (side + 2) + 2, rows * (side + 2) + 2
    limit = 2 * Image.MAX_IMAGE_PIXELS  # beyond this Pillow refuses to open an image (decompression-bomb guard)
    if width * height > limit:
        raise OutputError(f"a grid of {n_images:,} images would be {width:,}x{height:,} pixels, more than Pillow opens "
                          f"({limit:,}); {fix}")  # fmt: skip
