"""Measure CelebA-HQ-style alignment throughput: images per second per core at 1024x1024 output.

The photos are synthetic 1000x800 RGB images: smooth texture plus pixel noise, so that resampling
and PNG encoding see realistic detail. Their faces have several sizes and angles. Three of them need
mirror padding (one sits at the photo's top edge), so the padding and blur path is timed too. Printed per photo: the eye
distance, whether padding was needed, and the CPU seconds of align_face and of the PNG encoding
that each Ray task adds. CPU seconds of this process are reported next to wall seconds, because
on a shared machine only the CPU time is a per-core figure.

--ray N also runs `prepare_celeba` end to end (local Ray with --workers CPUs, PNG work files,
dataset write) on N copies of the photos and prints images per second of wall time.

Run from the repository root:
    .venv/bin/python bench/bench_celebahq.py [--resolution 1024] [--repeats 2] [--ray 16 --workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage
from PIL import Image

from gan.celebahq import align_face, oriented_square

PHOTO_SIZE = (1000, 800)  # (width, height)
# (eye distance in px, rotation in degrees, eye midpoint (x, y)); the last face touches the top edge.
FACES = [(60, 0.0, (500, 380)), (100, 12.0, (480, 400)), (150, -20.0, (520, 360)), (220, 5.0, (500, 420)),
         (120, 8.0, (300, 90))]


def synthetic_photo(eye_distance: float, degrees: float, eyes_center: tuple[float, float],
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint8 (800, 1000, 3) photo, (5, 2) landmarks) for one face layout."""
    rng = np.random.default_rng(seed)
    width, height = PHOTO_SIZE
    coarse = rng.uniform(40, 215, size=(height // 25 + 1, width // 25 + 1, 3))
    smooth = scipy.ndimage.zoom(coarse, (25, 25, 1), order=3)[:height, :width]
    photo = np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).astype(np.uint8)

    # Upright layout relative to the eye midpoint, in units of the eye distance.
    layout = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.6], [-0.4, 1.1], [0.4, 1.1]]) * eye_distance
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = np.rint(layout @ rotation.T + np.array(eyes_center))
    return photo, landmarks


def needs_padding(landmarks: np.ndarray) -> bool:
    quad, _ = oriented_square(landmarks)
    return bool(quad.min() < 0 or (quad[:, 0].max() > PHOTO_SIZE[0]) or (quad[:, 1].max() > PHOTO_SIZE[1]))


def time_alignment(photos: list[tuple[np.ndarray, np.ndarray]], resolution: int, repeats: int) -> None:
    from orchestrator.celeba_prepare import _encode_png

    print(f"align_face at {resolution}x{resolution}, {repeats} repeats per photo (CPU seconds)")
    print(f"{'eye px':>7} {'padded':>7} {'align s':>9} {'png s':>7}")
    cpu_total, wall_total, count = 0.0, 0.0, 0
    for (eye_distance, _, _), (photo, landmarks) in zip(FACES, photos):
        align_cpu = png_cpu = 0.0
        for _ in range(repeats):
            cpu, wall = time.process_time(), time.perf_counter()
            aligned = align_face(photo, landmarks, resolution)
            middle = time.process_time()
            _encode_png(aligned)
            align_cpu += middle - cpu
            png_cpu += time.process_time() - middle
            wall_total += time.perf_counter() - wall
        cpu_total += align_cpu + png_cpu
        count += repeats
        print(f"{eye_distance:>7} {str(needs_padding(landmarks)):>7} {align_cpu / repeats:>9.3f}"
              f" {png_cpu / repeats:>7.3f}")
    print(f"mean per photo: {cpu_total / count:.3f} CPU s, {wall_total / count:.3f} wall s")
    print(f"images per second per core (CPU time, align + PNG): {count / cpu_total:.2f}")


def time_ray(photos: list[tuple[np.ndarray, np.ndarray]], copies: int, workers: int, resolution: int) -> None:
    from orchestrator.celeba_prepare import prepare_celeba
    from orchestrator.environment import init_ray

    init_ray(num_cpus=workers)
    with tempfile.TemporaryDirectory(prefix="bench-celebahq-") as folder:
        root = Path(folder)
        (root / "img").mkdir()
        rows = []
        for index in range(copies):
            photo, landmarks = photos[index % len(photos)]
            name = f"{index:06d}.jpg"
            Image.fromarray(photo).save(root / "img" / name, quality=90)
            rows.append(name + " " + " ".join(str(int(value)) for value in landmarks.ravel()))
        (root / "landmarks.txt").write_text(f"{len(rows)}\nheader\n" + "\n".join(rows) + "\n")

        started = time.perf_counter()
        report = prepare_celeba(root / "img", root / "landmarks.txt", root / "dataset",
                                resolution=resolution, workers=workers, progress=False)
        seconds = time.perf_counter() - started
    print(f"prepare_celeba end to end: {report.count} images, {workers} workers, {seconds:.1f} s wall,"
          f" {report.count / seconds:.2f} images/s, {report.count / seconds / workers:.2f} images/s per worker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=1024, help="output size in pixels (default: 1024)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per photo (default: 2)")
    parser.add_argument("--ray", type=int, default=0, metavar="N",
                        help="also run prepare_celeba on N photos through Ray (default: 0, skipped)")
    parser.add_argument("--workers", type=int, default=2, help="Ray CPUs for --ray (default: 2)")
    args = parser.parse_args()

    photos = [synthetic_photo(*face, seed=index) for index, face in enumerate(FACES)]
    align_face(*photos[0], args.resolution)  # warm-up: imports and first allocations
    time_alignment(photos, args.resolution, args.repeats)
    if args.ray:
        time_ray(photos, args.ray, args.workers, args.resolution)


if __name__ == "__main__":
    main()
