"""`armor-run BUNDLE --prompt TEXT [--image PATH ...]`: answer one prompt with text and images.

Streams text as it comes, shows a progress bar while an image is generated, saves images as
PNG in --out, prints the timings. Every error is one line on stderr (runtime/cliutil.py):
exit code 2 for bad input, 1 for a broken bundle, device or file, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

from runtime.cliutil import ArgumentParser, boundary, whole, writable_folder
from runtime.errors import InputError


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="armor-run", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, help="a bundle folder (armor-export output)")
    p.add_argument("--prompt", required=True, help="the user's text")
    p.add_argument("--image", type=Path, action="append", default=[], help="an input image (repeatable)")
    p.add_argument("--out", type=Path, default=Path("armor-out"), help="where generated images are saved")
    p.add_argument("--backend", default="ort", help="ort (ONNX Runtime), tensorrt (native engines) or llamacpp "
                   "(decoder and text head in llama.cpp from text.gguf); default ort")
    p.add_argument("--device", default="cpu", help="with --backend ort: cpu, cuda or tensorrt (execution providers)")
    p.add_argument("--image-decoding", default="sequential", choices=("sequential", "jacobi"),
                   help="jacobi: several image codes per decoder step (speculative Jacobi decoding)")
    p.add_argument("--window", type=whole(2), default=8, help="codes per Jacobi step (with --image-decoding jacobi)")
    p.add_argument("--seed", type=whole(0), default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=whole(0), default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--cfg-scale", type=float, help="classifier-free guidance for images (1 = off; "
                   "default: the model's, from the bundle manifest)")
    p.add_argument("--max-new-tokens", type=whole(1), default=128, help="budget of text tokens")
    p.add_argument("--threads", type=whole(1), help="intra-op threads")
    p.add_argument("--thread-pool", default="shared", choices=("shared", "session"),
                   help="ONNX Runtime: one thread pool for every graph (default, faster) or one per graph")
    p.add_argument("--io-binding", action="store_true",
                   help="keep the decoder's KV cache in ONNX Runtime memory between steps (IO binding)")
    p.add_argument("--no-verify-hashes", action="store_true", help="skip the sha256 check (slow storage)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return boundary("armor-run", lambda: run(args))


def run(args) -> int:
    from runtime.generation import Done, ImageDone, ImageProgress, ImageStarted, TextDelta
    from runtime.pipeline import ArmorPipeline

    content = [{"type": "image", "image": str(p)} for p in args.image] + [{"type": "text", "text": args.prompt}]
    for p in args.image:
        if not p.is_file():
            raise InputError(f"image file not found: {p}")
    writable_folder(args.out)  # before any work: a finished answer is never lost to its folder
    options = {"io_binding": True} if args.io_binding else {}
    if args.backend == "ort":
        options["thread_pool"] = args.thread_pool
    failed_saves = []
    with ArmorPipeline.load(args.bundle, backend=args.backend, device=args.device,
                            verify_hashes=not args.no_verify_hashes, threads=args.threads, **options) as pipe:
        bar = None
        for event in pipe.generate([{"role": "user", "content": content}], max_new_tokens=args.max_new_tokens,
                                   cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                                   top_p=args.top_p, seed=args.seed, image_decoding=args.image_decoding,
                                   jacobi_window=args.window):
            if isinstance(event, TextDelta):
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, ImageStarted):
                sys.stdout.write("\n")
                bar = tqdm(total=event.total_codes, desc=f"image {event.index}", unit="code", leave=False)
            elif isinstance(event, ImageProgress):
                bar.update(event.done - bar.n)
            elif isinstance(event, ImageDone):
                bar.close()
                path = args.out / f"image_{event.index}.png"
                try:
                    sys.stdout.write(f"[image {event.index}: {_save_png(event.image, path)}]\n")
                except OSError as e:  # the answer goes on; the error is reported once at the end
                    failed_saves.append(f"{path}: {e.strerror or e}")
                    sys.stdout.write(f"[image {event.index}: not saved]\n")
            elif isinstance(event, Done):
                sys.stdout.write("\n")
                print(format_timings(event, pipe.load_seconds))
    if failed_saves:
        raise OSError(f"could not save {len(failed_saves)} image(s): {failed_saves[0]}")
    return 0


def _save_png(image, path: Path) -> Path:
    """Write through a temporary file: an interrupted run leaves no truncated PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def format_timings(done, load_s: float) -> str:
    t = done.timings
    parts = [f"load {load_s * 1e3:.0f} ms", f"first token {t.get('first_token_s', 0) * 1e3:.0f} ms"]
    if "vision_s" in t:
        parts.append(f"vision {t['vision_s'] * 1e3:.1f} ms")
    if done.text_tokens:
        parts.append(f"text {done.text_tokens} tok at {t.get('text_tokens_per_s', 0):.1f} tok/s")
    if done.image_tokens:
        parts.append(f"image {done.image_tokens} tok at {t.get('image_tokens_per_s', 0):.1f} tok/s")
        parts.append(f"VQ decode {t.get('vq_decode_s', 0) * 1e3:.1f} ms")
    parts.append(f"total {t.get('total_s', 0):.2f} s ({done.finish_reason})")
    return "timings: " + ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
