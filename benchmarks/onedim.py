"""1-D tokenizer (mnist-1d): reconstruction as a function of the number of tokens kept.

    python benchmarks/onedim.py [--model mnist-1d] [--lengths 1,2,4,8,16,32,48] [--limit N] [--record] [--json PATH]

Every MNIST test digit is encoded to its K tokens; the first k are decoded (the rest replaced by
the decoder's learned "dropped" embedding, as nested dropout trains it) and scored against the
digit: PSNR and SSIM, means of per-image values on [0, 1] pixels (``evaluate_prefixes``). Nested
dropout should make the figures grow with k. ``--record`` writes the table into the model's card
(``info["psnr_by_tokens"]``, shown by ``arvision info``); the model must be a writable directory.
"""

from __future__ import annotations

import argparse
import json

from arvision.data import get_dataset
from arvision.evaluate import evaluate_prefixes
from arvision.hub import load_tokenizer
from arvision.modeling import CONFIG_NAME, read_model_config, resolve
from arvision.outputs import write_json, write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist-1d")
    p.add_argument("--lengths", help="prefix lengths k, comma-separated (default: 1, 2, 4, ... and the full length)")
    p.add_argument("--limit", type=int, help="the first N test digits only (default: all 10,000)")
    p.add_argument("--record", action="store_true", help="write the table into the model's card")
    p.add_argument("--json", help="also write the table as JSON here")
    args = p.parse_args()
    tok = load_tokenizer(args.model)
    K = tok.num_tokens
    lengths = [int(k) for k in args.lengths.split(",")] if args.lengths else sorted({*(2**i for i in range(K.bit_length()) if 2**i < K), K})
    data = get_dataset("mnist", split="test", image_size=tok.config.image_size, channels=tok.config.in_channels)
    table = evaluate_prefixes(tok, data, lengths, limit=args.limit)
    n = next(iter(table.values()))["num_images"]
    print(f"{args.model}: reconstruction from the first k of {tok.num_tokens} tokens, MNIST test ({n} images)")
    print("| tokens k | bits | PSNR (dB) | SSIM |\n|---:|---:|---:|---:|")
    bits = (tok.codebook_size - 1).bit_length()
    for k, m in table.items():
        print(f"| {k} | {k * bits} | {m['psnr']:.2f} | {m['ssim']:.3f} |")
    rows = {str(k): {"psnr": round(m["psnr"], 2), "ssim": round(m["ssim"], 4)} for k, m in table.items()}
    if args.json:
        write_json(args.json, {"model": args.model, "num_images": n, "by_tokens": rows})
    if args.record:
        d = resolve(args.model)
        meta = read_model_config(d)
        meta["info"] = {**meta.get("info", {}), "psnr_by_tokens": {"num_images": n, **rows}}
        write_text(d / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
        print(f"recorded in {d / CONFIG_NAME}")


if __name__ == "__main__":
    main()
