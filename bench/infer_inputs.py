"""How fast the infer job's CPU side can feed the GPU: read + hash, decode, build inputs.

    python bench/infer_inputs.py --n 200 --side 1036x756

Makes ``n`` synthetic images (make_shapes, resized to ``--side`` so they match the
GPU benchmark's 999-token frame), packs them as a folder, a tar.gz and a zip, and
times each stage of the producer thread on one core. Prints a table: images/s per
stage and for the whole producer (the GPU target is 10 images/s).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/queue.py would shadow the stdlib queue (torch imports it): drop bench/ from the path.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402  (after the sys.path fix above)
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vlmjobs.dev.build import make_model  # noqa: E402
from vlmjobs.dev.shapes import make_shapes  # noqa: E402
from vlmjobs.recipes.infer.inputs import decode_image, iter_items  # noqa: E402
from vlmjobs.vision.frames import input_size  # noqa: E402
from vlmjobs.vision.inputs import build_inputs  # noqa: E402
from vlmjobs.vision.model import load_processor  # noqa: E402
from vlmjobs.vision.tasks import prompt_for  # noqa: E402

MIN_PIXELS, MAX_PIXELS = 256 * 28 * 28, 1280 * 28 * 28


def make_inputs(root: Path, n: int, side: tuple[int, int]) -> dict[str, Path]:
    shapes = make_shapes(root / "shapes", n=n, seed=0)
    folder = root / "folder"
    folder.mkdir()
    for path in sorted((shapes / "images").glob("*.png")):
        Image.open(path).convert("RGB").resize(side).save(folder / (path.stem + ".jpg"), quality=90)
    tgz, zpath = root / "images.tar.gz", root / "images.zip"
    with tarfile.open(tgz, "w:gz") as tar, zipfile.ZipFile(zpath, "w") as zf:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"images/{path.name}")
            zf.write(path, arcname=f"images/{path.name}")
    return {"folder": folder, "tar.gz": tgz, "zip": zpath}


def time_source(source: Path, processor, batch: int) -> dict[str, float]:
    """Seconds per image of each stage over one pass of ``source``."""
    t0 = time.perf_counter()
    raws = list(iter_items([source], [], []))
    t1 = time.perf_counter()
    images = [decode_image(r.data).image for r in raws]
    for im in images:
        input_size(im.size, MIN_PIXELS, MAX_PIXELS)
    t2 = time.perf_counter()
    prompt = prompt_for("dense_caption")
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        build_inputs(processor, chunk, [prompt] * len(chunk))
    t3 = time.perf_counter()
    n = len(raws)
    return {"read+hash": (t1 - t0) / n, "decode": (t2 - t1) / n, "build_inputs": (t3 - t2) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--side", default="1036x756", help="WxH of every image")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the producer is one thread beside the GPU loop
    side = tuple(int(v) for v in args.side.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        processor = load_processor(
            make_model(root / "tiny", arch="tiny"), min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
        )
        sources = make_inputs(root, args.n, side)  # type: ignore[arg-type]
        print(f"{args.n} images of {args.side}, batch {args.batch}, one thread\n")
        head = f"{'source':<8} {'read+hash':>10} {'decode':>8} {'inputs':>8} {'producer':>9}"
        print(head + "   (images/s)")
        for name, path in sources.items():
            t = time_source(path, processor, args.batch)
            total = sum(t.values())
            row = [1 / t["read+hash"], 1 / t["decode"], 1 / t["build_inputs"], 1 / total]
            print(
                f"{name:<8} "
                + " ".join(f"{v:>{w}.1f}" for v, w in zip(row, (10, 8, 8, 9), strict=True))
            )


if __name__ == "__main__":
    main()
