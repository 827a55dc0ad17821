"""What a perfect JPEG-LM generator could score: the MNIST-FID of JPEG-compressed real digits.

    python benchmarks/jpeg_floor.py [--qualities 25,50,75,90] [--n 10000] [--json PATH]

A generator over the bytes of JPEG files can only write images that a JPEG file at its quality
holds: every 8x8 block's DCT coefficients on that quality's quantization grid. The best such
generator draws the JPEG round trips of real digits. This script scores exactly that: the first N
MNIST training digits, each encoded and decoded by ``JpegTokenizer`` at the given quality (Pillow,
baseline, standard tables, the codec of ``mnist-jpeg-codec``), against the MNIST test split, with
the metric of every MNIST table (MNIST-classifier features, ``arvision eval generator``). The first
row is the real-data floor (the same digits uncompressed) that issue 18's "3x the floor" refers to.
Also printed: the mean scan length (the tokens a model must write per image) and the PSNR of the
round trip.
"""

from __future__ import annotations

import argparse

import torch

from arvision.data import load_mnist
from arvision.metrics.features import MnistFeatures, load_reference
from arvision.metrics.reconstruction import psnr
from arvision.outputs import write_json
from arvision.tokenizers.jpeg import JpegConfig, JpegTokenizer

from _common import mnist_fid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qualities", default="25,35,50,75,90", help="Pillow JPEG qualities, comma-separated")
    p.add_argument("--n", type=int, default=10000, help="MNIST training digits (default: 10,000, as the floor)")
    p.add_argument("--json", help="also write the table as JSON here")
    args = p.parse_args()
    qualities = [int(q) for q in args.qualities.split(",")]
    extractor = MnistFeatures()
    reference = load_reference("mnist:test", extractor, channels=1, image_size=28, progress=False)
    images_u8, _ = load_mnist("train")
    x = images_u8[: args.n, None].float() / 127.5 - 1  # (N, 1, 28, 28) in [-1, 1]
    floor = mnist_fid(extractor, reference, (x + 1) / 2)
    rows = [{"quality": None, "scan_bytes": None, "psnr": None, "mnist_fid": floor}]
    for q in qualities:
        tok = JpegTokenizer(JpegConfig(quality=q, max_len=4096))
        y, lengths = [], []
        for b in range(0, len(x), 1000):
            tokens = tok.encode(x[b : b + 1000])
            lengths.append((tokens != tok.pad_id).sum(1) - 1)  # scan bytes + FF D9, without END
            y.append(tok.decode(tokens))
        y = torch.cat(y)
        rows.append({"quality": q, "scan_bytes": torch.cat(lengths).float().mean().item(),
                     "psnr": psnr((y + 1) / 2, (x + 1) / 2).mean().item(), "mnist_fid": mnist_fid(extractor, reference, (y + 1) / 2)})  # fmt: skip
    print(f"JPEG round trips of {args.n:,} MNIST training digits vs the MNIST test split (MNIST-FID)")
    print("| images | scan bytes per image | PSNR (dB) | MNIST-FID | x the floor |\n|---|---:|---:|---:|---:|")
    for r in rows:
        name = "real (the floor)" if r["quality"] is None else f"JPEG quality {r['quality']}"
        nb = "-" if r["scan_bytes"] is None else f"{r['scan_bytes']:.1f}"
        db = "-" if r["psnr"] is None else f"{r['psnr']:.2f}"
        print(f"| {name} | {nb} | {db} | {r['mnist_fid']:.2f} | {r['mnist_fid'] / floor:.1f}x |")
    if args.json:
        write_json(args.json, {"num_images": args.n, "reference": "mnist:test", "rows": rows})


if __name__ == "__main__":
    main()
