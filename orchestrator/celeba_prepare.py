"""`progan prepare-data celeba:IMG_DIR`: align CelebA photos on Ray tasks into a CelebA-HQ-style dataset.

Each aligned face is saved as a PNG in a work folder as soon as its Ray task returns, under a name
derived from the photo name, its landmarks, the resolution and PIPELINE_VERSION. A rerun after an
interruption therefore aligns only the photos that are not there yet. The work folder sits next to a
local DEST, or in the node cache ($PROGAN_CACHE_DIR) for an s3:// DEST, and is deleted once the
dataset has been written (and uploaded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from gan.celebahq import FaceAlignmentError, align_face, read_image_list, read_landmarks
from gan.dataset import MANIFEST_NAME, MIN_RESOLUTION, EmptyDatasetError, is_power_of_two, write_dataset
from gan.errors import DataError, UserError
from gan.prepare import PrepareReport

CELEBA_PREFIX = "celeba:"
DEFAULT_RESOLUTION = 1024
# Photos per Ray task: a few seconds of work at 1024x1024, so scheduling overhead stays small.
BATCH_SIZE = 8
WORK_SUFFIX = ".celebahq-work"
# Part of every work file name. Change it whenever align_face's output changes, so that a rerun
# does not mix faces aligned by old and new code.
PIPELINE_VERSION = 1
# zlib level 1: PNG encoding stays far cheaper than the alignment itself.
PNG_COMPRESS_LEVEL = 1
# Aligned images are passed to write_dataset in chunks of about this many bytes.
CHUNK_BYTES = 64 * 2**20

# Photo modes converted to RGB; others (CMYK, 16-bit, with alpha) are skipped.
CONVERTIBLE_MODES = {"RGB", "L", "P"}
# Exceptions that Pillow raises on malformed files. OSError covers UnidentifiedImageError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


@dataclasses.dataclass
class CelebaReport(PrepareReport):
    """PrepareReport plus the number of faces taken from an earlier run's work folder."""

    reused: int = 0


@dataclasses.dataclass(frozen=True)
class _Job:
    index: int
    name: str
    points: np.ndarray  # (5, 2) float64 landmarks in photo pixels
    result: Path  # PNG in the work folder


def run(args: Any) -> CelebaReport:
    """Run `progan prepare-data` for a celeba: source; returns the report to print."""
    img_dir = args.source[len(CELEBA_PREFIX):]
    if not img_dir:
        raise UserError(f"{args.source}: expected {CELEBA_PREFIX}IMG_DIR, the folder of CelebA photos")
    if not args.landmarks:
        raise UserError("--landmarks: required for celeba: sources (CelebA's list_landmarks_celeba.txt)")
    if args.channels not in (None, 3):
        raise UserError(f"--channels: CelebA-HQ-style datasets are RGB, so only 3 is possible, got {args.channels}")
    options = {"images": args.images, "resolution": args.resolution or DEFAULT_RESOLUTION,
               "overwrite": args.overwrite}
    if args.dest.startswith("s3://"):
        return _prepare_to_s3(img_dir, args.landmarks, args.dest, **options)
    return prepare_celeba(img_dir, args.landmarks, args.dest, **options)


def prepare_celeba(img_dir: str | Path, landmarks: str | Path, dest: str | Path, *,
                   images: str | Path | None = None, resolution: int = DEFAULT_RESOLUTION,
                   overwrite: bool = False, work_dir: str | Path | None = None,
                   workers: int | None = None, batch_size: int = BATCH_SIZE, keep_work: bool = False,
                   progress: bool = True) -> CelebaReport:
    """Align the photos in `img_dir` named by `images` (default: every landmark row) and write the
    dataset at the local folder `dest`. Returns what was written and skipped.

    Alignment runs as Ray tasks on the connected cluster ($RAY_ADDRESS) or a local Ray. At most
    `workers` tasks run at a time (default: the cluster's CPU count). `work_dir` defaults to
    DEST.celebahq-work next to `dest`, and it is deleted after a successful write unless `keep_work`.
    """
    if not is_power_of_two(resolution) or resolution < MIN_RESOLUTION:
        raise UserError(f"--resolution: expected a power of two >= {MIN_RESOLUTION}, got {resolution}")
    img_dir, dest = Path(img_dir), Path(dest)
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: folder of CelebA photos not found")
    _check_destination(dest, overwrite)
    work_dir = Path(work_dir) if work_dir else dest.parent / f"{dest.name}{WORK_SUFFIX}"
    jobs, skipped = _plan_jobs(landmarks, images, resolution, work_dir / f"r{resolution}")
    pending = [job for job in jobs if not job.result.is_file()]

    if progress and jobs:
        _print_work_folder(work_dir)
    with _progress_bar(progress) as bar:
        task = bar.add_task(f"aligning faces to {resolution}x{resolution}", total=len(jobs),
                            completed=len(jobs) - len(pending))
        failures = _align_on_ray(img_dir, pending, resolution, workers, batch_size,
                                 lambda count: bar.advance(task, count))
        skipped += [(job.name, failures[job.index]) for job in pending if job.index in failures]
        finished = [job for job in jobs if job.index not in failures]
        write_task = bar.add_task("writing dataset", total=len(finished))
        chunks = _aligned_chunks(finished, resolution, lambda: bar.advance(write_task))
        try:
            manifest = write_dataset(dest, chunks, source=f"{CELEBA_PREFIX}{img_dir.resolve()}",
                                     overwrite=overwrite)
        except EmptyDatasetError:
            first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
            raise DataError(f"{img_dir}: no faces aligned, skipped: {len(skipped)}{first}") from None

    if not keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    return CelebaReport(dest=str(dest), count=manifest["count"], skipped=skipped, manifest=manifest,
                        reused=len(jobs) - len(pending))


def _check_destination(dest: Path, overwrite: bool) -> None:
    """Fail before hours of alignment when write_dataset would reject `dest` at the end."""
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest}: exists and is not a folder; choose another destination")
    if dest.is_dir() and any(dest.iterdir()) and not (overwrite and (dest / MANIFEST_NAME).is_file()):
        raise DataError(f"{dest}: folder exists and is not empty; --overwrite replaces only a dataset"
                        f" folder (one that contains {MANIFEST_NAME})")


# ----------------------------------------------------------------------------------------------
# Planning


def _plan_jobs(landmarks: str | Path, images: str | Path | None, resolution: int,
               result_dir: Path) -> tuple[list[_Job], list[tuple[str, str]]]:
    """Return the photos to align, in image-list order, and the (name, reason) of rows skipped."""
    table = read_landmarks(landmarks)
    names, skipped = table.names, list(table.skipped)
    if images is not None:
        names, list_skipped = read_image_list(images)
        # Bad landmark rows matter only for the photos in the list.
        listed = set(names)
        skipped = [entry for entry in table.skipped if entry[0] in listed] + list_skipped
    bad_rows = {name for name, _ in table.skipped}

    jobs, seen = [], set()
    for name in names:
        if name in seen:
            skipped.append((name, "listed twice in the image list; aligned once"))
        elif name in bad_rows and name not in table.points:
            pass  # already reported with the landmark row's problem
        elif name not in table.points:
            skipped.append((name, f"no valid landmark row in {Path(landmarks).name}"))
        elif not _is_relative_name(name):
            skipped.append((name, "the name must be a path inside IMG_DIR (no '..', not absolute)"))
        else:
            points = table.points[name]
            jobs.append(_Job(len(jobs), name, points, result_dir / _result_name(name, points, resolution)))
        seen.add(name)
    return jobs, skipped


def _is_relative_name(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return not path.is_absolute() and ".." not in path.parts and ":" not in name


def _result_name(name: str, points: np.ndarray, resolution: int) -> str:
    """Return the work file name: the photo's stem and a hash of every input to its alignment."""
    key = f"{PIPELINE_VERSION}|{resolution}|{name}|{np.asarray(points, dtype='<f8').tobytes().hex()}"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return f"{PurePosixPath(name).stem}-{digest}.png"


# ----------------------------------------------------------------------------------------------
# Alignment on Ray


def _align_on_ray(img_dir: Path, jobs: list[_Job], resolution: int, workers: int | None,
                  batch_size: int, advance: Callable[[int], None]) -> dict[int, str]:
    """Align `jobs` with at most `workers` Ray tasks in flight, saving each face as it arrives;
    returns {job index: reason} for the photos that were skipped."""
    if not jobs:
        return {}
    import ray

    from orchestrator.environment import init_ray

    init_ray()
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    align_batch = ray.remote(num_cpus=1)(_align_batch)
    batches = iter([jobs[start:start + batch_size] for start in range(0, len(jobs), batch_size)])
    by_index = {job.index: job for job in jobs}
    failures: dict[int, str] = {}
    in_flight: dict[Any, int] = {}
    try:
        while True:
            while len(in_flight) < workers and (batch := next(batches, None)) is not None:
                items = _read_photos(img_dir, batch, failures)
                advance(len(batch) - len(items))
                if items:
                    in_flight[align_batch.remote(items, resolution)] = len(items)
            if not in_flight:
                return failures
            [ready], _ = ray.wait(list(in_flight), num_returns=1)
            in_flight.pop(ready)
            for index, png, reason in ray.get(ready):
                if png is None:
                    failures[index] = reason
                else:
                    _write_atomic(by_index[index].result, png)
                advance(1)
    finally:
        for ref in in_flight:
            ray.cancel(ref)


def _read_photos(img_dir: Path, batch: list[_Job],
                 failures: dict[int, str]) -> list[tuple[int, bytes, np.ndarray]]:
    """Return (index, file bytes, landmarks) per photo; records unreadable files in `failures`.

    The driver reads the files, so cluster nodes need no access to IMG_DIR.
    """
    items = []
    for job in batch:
        path = img_dir / job.name
        try:
            items.append((job.index, path.read_bytes(), job.points))
        except FileNotFoundError:
            failures[job.index] = f"image not found: {path}"
        except OSError as error:
            failures[job.index] = f"unreadable: {error}"
    return items


def _align_batch(items: list[tuple[int, bytes, np.ndarray]],
                 resolution: int) -> list[tuple[int, bytes | None, str]]:
    """Ray task: return (index, PNG bytes of the (R, R, 3) face, "") or (index, None, reason)."""
    results = []
    for index, data, points in items:
        image, reason = _decode_rgb(data)
        if image is None:
            results.append((index, None, reason))
            continue
        try:
            aligned = align_face(image, points, resolution)
        except FaceAlignmentError as error:
            results.append((index, None, str(error)))
            continue
        results.append((index, _encode_png(aligned), ""))
    return results


def _decode_rgb(data: bytes) -> tuple[np.ndarray | None, str]:
    """Return (uint8 (H, W, 3), "") or (None, reason). EXIF orientation is ignored on purpose,
    since CelebA's landmarks refer to the stored pixel grid."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            if picture.mode not in CONVERTIBLE_MODES:
                return None, f"unsupported mode {picture.mode}; convert the photo to RGB first"
            return np.asarray(picture.convert("RGB"), dtype=np.uint8), ""
    except Image.DecompressionBombError as error:
        return None, f"too many pixels: {error}"
    except _DECODE_ERRORS as error:
        return None, f"not a readable image: {error}"


def _encode_png(aligned: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(aligned.transpose(1, 2, 0)).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# Gathering


def _aligned_chunks(jobs: list[_Job], resolution: int, advance: Callable[[], None]) -> Iterator[np.ndarray]:
    """Yield the saved faces of `jobs`, in job order, as uint8 chunks (n, 3, R, R)."""
    from PIL import Image

    chunk_size = max(1, CHUNK_BYTES // (3 * resolution * resolution))
    for start in range(0, len(jobs), chunk_size):
        chunk = np.empty((min(chunk_size, len(jobs) - start), 3, resolution, resolution), dtype=np.uint8)
        for offset, job in enumerate(jobs[start:start + chunk_size]):
            try:
                with Image.open(job.result) as picture:
                    pixels = np.asarray(picture.convert("RGB"), dtype=np.uint8)
            except _DECODE_ERRORS as error:
                raise DataError(f"{job.result}: unreadable aligned face ({error}); delete the file"
                                " and rerun to align that photo again") from error
            if pixels.shape != (resolution, resolution, 3):
                raise DataError(f"{job.result}: expected {resolution}x{resolution} RGB, got shape"
                                f" {pixels.shape}; delete the file and rerun")
            chunk[offset] = pixels.transpose(2, 0, 1)
            advance()
        yield chunk


# ----------------------------------------------------------------------------------------------
# S3 destinations and terminal output


def s3_work_dir(dest: str) -> Path:
    """Return the work folder for an s3:// DEST: in the node cache, named by a hash of the URI."""
    from orchestrator.environment import cache_dir

    return cache_dir() / "celebahq-work" / hashlib.sha256(dest.encode("utf-8")).hexdigest()[:16]


def _prepare_to_s3(img_dir: str, landmarks: str, dest: str, *, images: str | None, resolution: int,
                   overwrite: bool) -> CelebaReport:
    """Write the dataset to a local folder next to the work folder, then upload it with
    dataset.json last, so that an interrupted upload leaves no dataset that can be opened."""
    import tempfile

    from orchestrator import environment, storage

    environment.load_environment()
    manifest_uri = storage.parse_s3_uri(dest).join(MANIFEST_NAME).uri
    if storage.exists(manifest_uri) and not overwrite:
        raise UserError(f"{dest} already contains a dataset; pass --overwrite to replace it")
    work_dir = s3_work_dir(dest)
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="upload-", dir=work_dir.parent) as folder:
        local = Path(folder) / "dataset"
        report = prepare_celeba(img_dir, landmarks, local, images=images, resolution=resolution,
                                work_dir=work_dir, keep_work=True)
        storage.upload_folder(local, dest, last=[MANIFEST_NAME])
    shutil.rmtree(work_dir, ignore_errors=True)
    report.dest = dest
    return report


def _print_work_folder(work_dir: Path) -> None:
    from orchestrator.output import stderr_console

    stderr_console().print(f"Aligned faces are kept in {work_dir} until the dataset is written;"
                           " an interrupted run continues from there when rerun.")


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Any]:
    """Yield a rich Progress on stderr (it does nothing if disabled)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not enabled) as bar:
        yield bar
