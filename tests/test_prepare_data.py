"""`prepare_dataset` and `progan prepare-data`: built-in faces, folders, zips, bad files, atomicity."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gan.prepare
from gan.dataset import open_dataset
from gan.errors import DataError, UserError
from gan.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[1]


def save(picture: Image.Image, path: Path, format: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format=format)
    return path


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def encoded(picture: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=format)
    return buffer.getvalue()


def skipped_reasons(report) -> dict[str, str]:
    return dict(report.skipped)


# ----------------------------------------------------------------------------------------------
# Built-in faces


def test_builtin_faces_match_scikit_image(tmp_path):
    from skimage import data, transform

    report = prepare_dataset("builtin:lfw-faces", tmp_path / "faces", progress=False)
    dataset = open_dataset(tmp_path / "faces")

    assert report.count == 100
    assert report.skipped == []
    assert dataset.resolutions == [4, 8, 16, 32]
    assert dataset.channels == 1
    faces = dataset.level(32)[:, 0].astype(np.float64)
    assert faces.shape == (100, 32, 32)

    # Independent reference: bicubic resize of the first 100 LFW crops, scaled to [0, 255].
    reference = np.stack([transform.resize(face, (32, 32), order=3, anti_aliasing=False)
                          for face in data.lfw_subset()[:100]]) * 255.0
    assert abs(faces.mean() - reference.mean()) < 0.05
    assert np.abs(faces.mean(axis=(1, 2)) - reference.mean(axis=(1, 2))).max() < 0.5
    assert np.abs(faces - reference).mean() < 1.5
    for ours, theirs in zip(faces, reference):
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99


def test_builtin_options(tmp_path):
    report = prepare_dataset("builtin:lfw-faces", tmp_path / "faces16", resolution=16, progress=False)
    assert report.manifest["resolutions"] == [4, 8, 16]

    with pytest.raises(UserError, match="--channels"):
        prepare_dataset("builtin:lfw-faces", tmp_path / "rgb", channels=3, progress=False)
    with pytest.raises(UserError, match="--resolution"):
        prepare_dataset("builtin:lfw-faces", tmp_path / "big", resolution=64, progress=False)
    with pytest.raises(UserError, match="unknown built-in"):
        prepare_dataset("builtin:cats", tmp_path / "cats", progress=False)
    with pytest.raises(UserError, match="power of two"):
        prepare_dataset("builtin:lfw-faces", tmp_path / "odd", resolution=24, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces16"]


# ----------------------------------------------------------------------------------------------
# Folders and zips


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Six usable RGB images (in sorted order a..f) and one file of every kind that must be skipped."""
    root = tmp_path / "images"
    save(noise_image(32, 32, seed=1), root / "a_exact.png")
    save(Image.new("RGB", (64, 64), (10, 200, 30)), root / "b_big.png")
    wide = np.zeros((32, 96, 3), dtype=np.uint8)
    wide[:, :32] = (255, 0, 0)
    wide[:, 32:64] = (0, 255, 0)
    wide[:, 64:] = (0, 0, 255)
    save(Image.fromarray(wide), root / "c_wide.png")
    save(Image.new("RGBA", (32, 32), (1, 2, 3, 255)), root / "d_opaque.png")
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 40, 50, 60])
    save(palette, root / "e_palette.png")
    save(Image.new("RGB", (40, 40), (90, 90, 90)), root / "sub" / "dir" / "f_nested.jpg", "JPEG")

    rng = np.random.default_rng(0)
    (root / "bad").mkdir()
    (root / "bad" / "noise.jpg").write_bytes(rng.bytes(500))
    (root / "bad" / "note.png").write_text("this is not a picture\n")
    jpeg = encoded(noise_image(64, 64, seed=2), "JPEG")
    (root / "bad" / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    png = encoded(noise_image(64, 64, seed=3), "PNG")
    (root / "bad" / "truncated.png").write_bytes(png[:len(png) // 2])
    save(noise_image(8, 8), root / "bad" / "tiny.png")
    save(Image.new("CMYK", (48, 48), (0, 128, 0, 0)), root / "bad" / "cmyk.jpg", "JPEG")
    save(Image.new("L", (48, 48), 77), root / "bad" / "gray.png")
    save(Image.new("RGBA", (48, 48), (5, 5, 5, 0)), root / "bad" / "transparent.png")
    save(noise_image(32, 32), root / ".hidden" / "ignored.png")
    save(noise_image(32, 32), root / ".ignored.png")
    return root


EXPECTED_SKIPS = {
    "bad/noise.jpg": "not an image",
    "bad/note.png": "not an image",
    "bad/truncated.jpg": "truncated",
    "bad/truncated.png": "truncated",
    "bad/tiny.png": "too small: 8x8",
    "bad/cmyk.jpg": "unsupported mode CMYK",
    "bad/gray.png": "grayscale image (mode L) in a 3-channel dataset",
    "bad/transparent.png": "transparent pixels",
}


def test_folder_skips_bad_files_by_name(mixed_folder, tmp_path):
    report = prepare_dataset(str(mixed_folder), tmp_path / "data", resolution=32, channels=3, progress=False)

    reasons = skipped_reasons(report)
    assert sorted(reasons) == sorted(EXPECTED_SKIPS)
    for name, fragment in EXPECTED_SKIPS.items():
        assert fragment in reasons[name], f"{name}: {reasons[name]}"
    assert report.count == 6
    assert report.manifest["source"] == str(mixed_folder.resolve())


def test_folder_image_content(mixed_folder, tmp_path):
    prepare_dataset(str(mixed_folder), tmp_path / "data", resolution=32, channels=3, progress=False)
    images = open_dataset(tmp_path / "data").level(32)

    # Sorted order: a_exact, b_big, c_wide, d_opaque, e_palette, sub/dir/f_nested.
    np.testing.assert_array_equal(images[0], np.asarray(noise_image(32, 32, seed=1)).transpose(2, 0, 1))
    assert [tuple(images[i, :, r, c]) for i in (1, 2, 3, 4) for r, c in [(0, 0), (31, 31), (15, 16)]] == \
        [(10, 200, 30)] * 3 + [(0, 255, 0)] * 3 + [(1, 2, 3)] * 3 + [(40, 50, 60)] * 3
    # A flat JPEG stays flat within JPEG and resampling error.
    assert np.abs(images[5].astype(int) - 90).max() <= 2


def test_default_resolution_and_channels(tmp_path):
    root = tmp_path / "images"
    for index, side in enumerate([20, 40, 70, 100, 130]):
        save(noise_image(side, side + 10, seed=index), root / f"{index}.png")
    save(Image.new("L", (64, 64), 3), root / "gray.png")

    report = prepare_dataset(str(root), tmp_path / "data", progress=False)
    # Shorter sides 20, 40, 64, 70, 100, 130: median 67 -> 64. Most images are RGB -> 3 channels.
    assert report.manifest["resolutions"][-1] == 64
    assert report.manifest["channels"] == 3
    assert report.count == 3
    assert sorted(skipped_reasons(report)) == ["0.png", "1.png", "gray.png"]


def test_grayscale_dataset_skips_color(tmp_path):
    root = tmp_path / "images"
    save(Image.new("L", (16, 16), 200), root / "gray.png")
    save(Image.new("1", (16, 16), 1), root / "bilevel.png")
    save(Image.new("RGB", (16, 16), (1, 2, 3)), root / "color.png")

    report = prepare_dataset(str(root), tmp_path / "data", channels=1, progress=False)
    assert report.count == 2
    assert "color image (mode RGB) in a 1-channel dataset" in skipped_reasons(report)["color.png"]
    images = open_dataset(tmp_path / "data").level(16)
    assert images.shape == (2, 1, 16, 16)
    assert int(images[0].min()) == 255  # bilevel.png, white
    assert int(images[1].min()) == 200  # gray.png


def test_zip_equals_folder(mixed_folder, tmp_path):
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(mixed_folder.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(mixed_folder).as_posix())
        zipped.writestr("__MACOSX/._a_exact.png", b"resource fork")

    from_folder = prepare_dataset(str(mixed_folder), tmp_path / "a", resolution=32, channels=3, progress=False)
    from_zip = prepare_dataset(str(archive), tmp_path / "b", resolution=32, channels=3, progress=False)
    assert from_zip.manifest["content_sha256"] == from_folder.manifest["content_sha256"]
    assert from_zip.skipped == from_folder.skipped


def test_source_errors(tmp_path):
    with pytest.raises(DataError, match="source not found"):
        prepare_dataset(str(tmp_path / "absent"), tmp_path / "a", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files found"):
        prepare_dataset(str(tmp_path / "empty"), tmp_path / "b", progress=False)
    (tmp_path / "single.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder or a .zip file"):
        prepare_dataset(str(tmp_path / "single.txt"), tmp_path / "c", progress=False)


def test_no_usable_images(tmp_path):
    root = tmp_path / "images"
    save(noise_image(64, 64), root / "big.png")
    save(noise_image(8, 8), root / "small.png")
    with pytest.raises(DataError, match="no images written, skipped files: 2 .first: big.png: too small"):
        prepare_dataset(str(root), tmp_path / "data", resolution=128, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_interrupted_run_leaves_nothing(mixed_folder, tmp_path, monkeypatch):
    decode = gan.prepare._decode
    calls = []

    def failing_decode(*args, **kwargs):
        calls.append(args[0].name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return decode(*args, **kwargs)

    # One image per chunk, so that three images reach the level files before the interrupt.
    monkeypatch.setattr(gan.prepare, "CHUNK_BYTES", 1)
    monkeypatch.setattr(gan.prepare, "_decode", failing_decode)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(str(mixed_folder), tmp_path / "data", resolution=32, channels=3, progress=False)
    assert len(calls) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


# ----------------------------------------------------------------------------------------------
# Command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", "prepare-data", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_builtin_json(tmp_path):
    result = run_cli("builtin:lfw-faces", str(tmp_path / "faces"), "--output", "json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["dest"] == str(tmp_path / "faces")
    assert summary["count"] == 100
    assert summary["skipped"] == []
    assert summary["resolutions"] == [4, 8, 16, 32]
    assert summary["channels"] == 1
    assert summary["content_sha256"] == json.loads((tmp_path / "faces" / "dataset.json").read_text())["content_sha256"]


def test_cli_table_lists_skipped(mixed_folder, tmp_path):
    result = run_cli(str(mixed_folder), str(tmp_path / "data"), "--resolution", "32", "--channels", "3")

    assert result.returncode == 0, result.stderr
    for name in EXPECTED_SKIPS:
        assert name in result.stdout
    assert "images written" in result.stdout


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("progan prepare-data: error:")
    assert fragment in lines[0]
    assert result.stdout == ""


def test_cli_errors_exit_2(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "note.png").write_text("not a picture")

    result = run_cli(str(tmp_path / "images"), str(tmp_path / "data"))
    assert_one_line_error(result, "no images written, skipped files: 1 (first: note.png: not an image")
    assert not (tmp_path / "data").exists()

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = run_cli("builtin:lfw-faces", str(tmp_path / "full"))
    assert_one_line_error(result, "not empty")


def test_cli_overwrite(tmp_path):
    assert run_cli("builtin:lfw-faces", str(tmp_path / "faces"), "--resolution", "8").returncode == 0
    result = run_cli("builtin:lfw-faces", str(tmp_path / "faces"), "--overwrite", "--output", "json")
    assert result.returncode == 0, result.stderr
    assert open_dataset(tmp_path / "faces").resolutions == [4, 8, 16, 32]


def test_cli_help_has_defaults_and_example():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "default:" in result.stdout
    assert "example:" in result.stdout
