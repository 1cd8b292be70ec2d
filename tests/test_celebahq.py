"""CelebA-HQ-style alignment: landmark files, face geometry on real and synthetic photos, blurred
mirror padding, and `progan prepare-data celeba:` on Ray (skips, order, resume, 1 vs 2 workers, S3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

import orchestrator.celeba_prepare as celeba_prepare
from gan.celebahq import FaceAlignmentError, align_face, gaussian_blur, read_image_list, read_landmarks
from gan.dataset import open_dataset
from gan.errors import DataError
from orchestrator.celeba_prepare import prepare_celeba

RESOLUTION = 256

# Hand-placed landmarks of skimage.data.astronaut() (512x512): pupils, nose tip, mouth corners,
# read off an 8x enlarged crop of the face.
ASTRONAUT_LANDMARKS = np.array([[204, 101], [247, 103], [225, 127], [204, 142], [244, 141]], dtype=np.float64)

# Marker colors drawn at the landmarks of synthetic photos; nose unmarked.
MARKERS = {0: (255, 0, 0), 1: (0, 255, 0), 3: (0, 0, 255), 4: (255, 0, 255)}
# Eye markers for the astronaut in colors that its face region lacks: pixels there exceed neither
# G - max(R, B) nor min(G, B) - R by more than 21 of 255.
ASTRONAUT_MARKERS = {0: (0, 255, 0), 1: (0, 255, 255)}
MARKER_SIGMA = 2.0

# An upright face in a 480x400 photo: eyes 40 px apart, mouth 45 px below them.
UPRIGHT_LANDMARKS = np.array([[220, 180], [260, 180], [240, 205], [225, 225], [255, 225]], dtype=np.float64)
PHOTO_SIZE = (480, 400)  # (width, height)


# ----------------------------------------------------------------------------------------------
# Independent float64 geometry and measurements


def expected_positions(landmarks: np.ndarray, resolution: int) -> np.ndarray:
    """Output pixel positions (x, y) of photo points under the official CelebA-HQ geometry.

    The crop square: eye and mouth averages with +0.5, x = e2e - rot90(e2m) scaled to
    max(2|e2e|, 1.8|e2m|), y = rot90(x), center = eye_avg + 0.1 e2m. Output coordinate u in [0, R]
    maps to photo pixel top_left + (u / R) * 2x, so output pixel centers sit at u - 0.5.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    eye_avg = (points[0] + points[1]) / 2 + 0.5
    mouth_avg = (points[3] + points[4]) / 2 + 0.5
    e2e = points[1] - points[0]
    e2m = mouth_avg - eye_avg
    x = e2e - np.array([-e2m[1], e2m[0]])
    x = x / np.linalg.norm(x) * max(2.0 * np.linalg.norm(e2e), 1.8 * np.linalg.norm(e2m))
    y = np.array([-x[1], x[0]])
    top_left = eye_avg + 0.1 * e2m - x - y
    basis = np.stack([2 * x, 2 * y], axis=1) / resolution
    return np.linalg.solve(basis, (points - top_left).T).T - 0.5


def photo_positions(landmarks: np.ndarray, resolution: int) -> np.ndarray:
    """Photo pixel coordinates (H, W, 2) of every output pixel center, by the same geometry."""
    points = np.asarray(landmarks, dtype=np.float64)
    eye_avg = (points[0] + points[1]) / 2 + 0.5
    mouth_avg = (points[3] + points[4]) / 2 + 0.5
    e2e = points[1] - points[0]
    e2m = mouth_avg - eye_avg
    x = e2e - np.array([-e2m[1], e2m[0]])
    x = x / np.linalg.norm(x) * max(2.0 * np.linalg.norm(e2e), 1.8 * np.linalg.norm(e2m))
    y = np.array([-x[1], x[0]])
    top_left = eye_avg + 0.1 * e2m - x - y
    v, u = (np.mgrid[:resolution, :resolution] + 0.5) / resolution
    return top_left + u[..., None] * 2 * x + v[..., None] * 2 * y


def marker_centroid(aligned: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """Weighted centroid (x, y) of the pixels of a marker color in uint8 (3, R, R)."""
    pixels = aligned.astype(np.float64)
    on = [pixels[c] for c in range(3) if color[c]]
    off = [pixels[c] for c in range(3) if not color[c]]
    weight = np.clip(np.minimum.reduce(on) - np.maximum.reduce(off) - 30.0, 0, None)
    assert weight.sum() > 0, f"marker {color} not found"
    rows, columns = np.mgrid[:aligned.shape[1], :aligned.shape[2]]
    return np.array([(weight * columns).sum(), (weight * rows).sum()]) / weight.sum()


def add_markers(image: np.ndarray, landmarks: np.ndarray,
                markers: dict[int, tuple[int, int, int]] = MARKERS) -> np.ndarray:
    """Blend Gaussian dots of the marker colors into a float (H, W, 3) image at the landmarks."""
    rows, columns = np.mgrid[:image.shape[0], :image.shape[1]]
    for index, color in markers.items():
        x, y = landmarks[index]
        alpha = np.exp(-((columns - x) ** 2 + (rows - y) ** 2) / (2 * MARKER_SIGMA**2))[..., None]
        image = image * (1 - alpha) + np.array(color, dtype=np.float64) * alpha
    return image


def rotate_about(points: np.ndarray, degrees: float, center: np.ndarray) -> np.ndarray:
    """Rotate (x, y) points by `degrees` (counterclockwise on screen, y down) about `center`."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    return (np.asarray(points) - center) @ rotation.T + center


def synthetic_photo(degrees: float = 0.0, size: tuple[int, int] = PHOTO_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint8 (H, W, 3) photo, landmarks): a smooth gray texture with colored landmark dots,
    all rotated by `degrees` about the photo center, evaluated exactly (no resampling)."""
    width, height = size
    center = np.array([width / 2, height / 2])
    landmarks = rotate_about(UPRIGHT_LANDMARKS, degrees, center)
    rows, columns = np.mgrid[:height, :width].astype(np.float64)
    # Texture coordinates: the photo's pixel positions rotated back to the upright frame.
    grid = rotate_about(np.stack([columns, rows], axis=-1).reshape(-1, 2), -degrees, center)
    u, v = grid[:, 0].reshape(height, width), grid[:, 1].reshape(height, width)
    gray = (128 + 40 * np.sin(2 * np.pi * u / 37 + 0.3) + 30 * np.cos(2 * np.pi * v / 23)
            + 20 * np.sin(2 * np.pi * (u + v) / 53))
    image = add_markers(np.repeat(gray[..., None], 3, axis=2), landmarks)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), landmarks


def high_frequency_energy(gray: np.ndarray, region: np.ndarray) -> float:
    """Mean squared Laplacian of a float image over a boolean region."""
    return float((scipy.ndimage.laplace(gray) ** 2)[region].mean())


# ----------------------------------------------------------------------------------------------
# Geometry


def test_upright_face_lands_at_official_positions():
    photo, landmarks = synthetic_photo()
    aligned = align_face(photo, landmarks, RESOLUTION)
    assert aligned.shape == (3, RESOLUTION, RESOLUTION)
    assert aligned.dtype == np.uint8

    # Worked by hand: eye distance 40, eye-to-mouth 45, so the half side is max(80, 81) = 81 and the
    # center is (240.5, 180.5 + 4.5), so the top-left corner is (159.5, 104) and the scale 256 / 162.
    # Left eye: ((220 - 159.5) * 256/162 - 0.5, (180 - 104) * 256/162 - 0.5).
    expected = {0: (95.105, 119.599), 1: (158.315, 119.599), 3: (103.006, 190.710), 4: (150.414, 190.710)}
    for index, color in MARKERS.items():
        found = marker_centroid(aligned, color)
        assert np.abs(found - expected[index]).max() < 2.0, (index, found, expected[index])
    np.testing.assert_allclose(expected_positions(landmarks, RESOLUTION)[[0, 1, 3, 4]],
                               list(expected.values()), atol=1e-3)


@pytest.mark.parametrize("degrees", [0.0, 23.0, -41.0, 90.0, 180.0])
def test_rotated_face_is_leveled(degrees):
    photo, landmarks = synthetic_photo(degrees)
    aligned = align_face(photo, landmarks, RESOLUTION)
    expected = expected_positions(landmarks, RESOLUTION)

    found = {index: marker_centroid(aligned, color) for index, color in MARKERS.items()}
    for index in MARKERS:
        assert np.abs(found[index] - expected[index]).max() < 2.0, (index, found[index], expected[index])
    # Eyes level and left of each other, mouth corners level, all after undoing the rotation.
    assert abs(found[0][1] - found[1][1]) < 1.0
    assert found[1][0] - found[0][0] > 50
    assert abs(found[3][1] - found[4][1]) < 1.0


@pytest.mark.parametrize("degrees", [23.0, -41.0, 180.0])
def test_rotation_is_undone(degrees):
    upright = align_face(*synthetic_photo(0.0), RESOLUTION).astype(np.float64)
    rotated = align_face(*synthetic_photo(degrees), RESOLUTION).astype(np.float64)
    unaligned_difference = np.abs(np.rot90(upright, k=1, axes=(1, 2)) - upright).mean()

    # The +0.5 pixel-center offsets do not rotate with the face, so the outputs may be shifted by
    # about one output pixel. The texture's shortest period is 23 photo pixels (36 output pixels).
    difference = np.abs(rotated - upright).mean()
    assert difference < 6.0
    assert difference < 0.25 * unaligned_difference


def test_astronaut_eyes_level_at_expected_positions():
    from skimage import data

    photo = add_markers(data.astronaut().astype(np.float64), ASTRONAUT_LANDMARKS, ASTRONAUT_MARKERS)
    photo = np.clip(np.rint(photo), 0, 255).astype(np.uint8)
    aligned = align_face(photo, ASTRONAUT_LANDMARKS, RESOLUTION)
    expected = expected_positions(ASTRONAUT_LANDMARKS, RESOLUTION)

    left = marker_centroid(aligned, ASTRONAUT_MARKERS[0])
    right = marker_centroid(aligned, ASTRONAUT_MARKERS[1])
    assert np.abs(left - expected[0]).max() < 2.0, (left, expected[0])
    assert np.abs(right - expected[1]).max() < 2.0, (right, expected[1])
    # The eyes are 2 px apart in height in the photo and level after alignment.
    assert abs(left[1] - right[1]) < 1.0
    # Face centered: the eye midpoint lies on the vertical center line.
    assert abs((left[0] + right[0]) / 2 - (RESOLUTION / 2 - 0.5)) < 2.0


def test_face_at_border_gets_blurred_padding():
    from skimage import data

    # Cut the photo so that the face sits in its top-left corner and the crop square leaves it.
    offset = np.array([170, 70])
    photo = np.ascontiguousarray(data.astronaut()[offset[1]:, offset[0]:])
    landmarks = ASTRONAUT_LANDMARKS - offset
    aligned = align_face(photo, landmarks, RESOLUTION)

    positions = photo_positions(landmarks, RESOLUTION)
    # The blur fades in over the last third of the padding inside the photo (about 17 photo pixels
    # here), so both regions keep a margin from the photo's edge.
    padded = (positions[..., 0] < -4) | (positions[..., 1] < -4)
    inside = (positions[..., 0] > 24) & (positions[..., 1] > 24)
    assert padded.mean() > 0.15
    assert inside.mean() > 0.3

    gray = aligned.astype(np.float64).mean(axis=0)
    assert high_frequency_energy(gray, padded) < 0.1 * high_frequency_energy(gray, inside)


@pytest.mark.parametrize("sigma", [1.3, 7.0, 24.5])
def test_gaussian_blur_matches_scipy(sigma):
    rng = np.random.default_rng(5)
    image = rng.uniform(0, 255, size=(150, 210, 3))
    reference = scipy.ndimage.gaussian_filter(image, [sigma, sigma, 0], mode="reflect", truncate=4.0)
    blurred = gaussian_blur(image.astype(np.float32), sigma)
    assert blurred.dtype == np.float32
    assert blurred.shape == image.shape
    assert np.abs(blurred - reference).max() < 1e-3


def test_degenerate_geometry_raises():
    photo, landmarks = synthetic_photo()
    same_eyes = landmarks.copy()
    same_eyes[1] = same_eyes[0]
    with pytest.raises(FaceAlignmentError, match="eyes are 0.00 px apart"):
        align_face(photo, same_eyes, RESOLUTION)

    # Mouth exactly one eye distance above the eyes: e2e - rot90(e2m) = 0.
    sideways = landmarks.copy()
    sideways[3] = sideways[4] = [240, 140]
    with pytest.raises(FaceAlignmentError, match="mouth lies beside the eyes"):
        align_face(photo, sideways, RESOLUTION)


def test_landmarks_outside_photo_raise():
    photo, landmarks = synthetic_photo()
    outside = landmarks.copy()
    outside[4] = [PHOTO_SIZE[0] + 3, 225]
    with pytest.raises(FaceAlignmentError, match=r"right mouth corner at \(483, 225\) lies outside the 480x400"):
        align_face(photo, outside, RESOLUTION)
    negative = landmarks.copy()
    negative[0] = [-1, 180]
    with pytest.raises(FaceAlignmentError, match="left eye"):
        align_face(photo, negative, RESOLUTION)


def test_align_face_rejects_bad_arguments():
    photo, landmarks = synthetic_photo()
    with pytest.raises(ValueError, match="uint8"):
        align_face(photo.astype(np.float32), landmarks, RESOLUTION)
    with pytest.raises(ValueError, match="power of two"):
        align_face(photo, landmarks, 200)
    with pytest.raises(ValueError, match="shape"):
        align_face(photo, landmarks[:4], RESOLUTION)


# ----------------------------------------------------------------------------------------------
# Landmark and image-list files


def write_landmarks(path: Path, rows: list[str], count: int | None = None) -> Path:
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    path.write_text(f"{len(rows) if count is None else count}\n{header}\n" + "\n".join(rows) + "\n")
    return path


def landmark_row(name: str, landmarks: np.ndarray) -> str:
    return name + " " + " ".join(f"{value:.0f}" for value in np.asarray(landmarks).ravel())


def test_read_landmarks_skips_bad_rows(tmp_path):
    path = write_landmarks(tmp_path / "list_landmarks_celeba.txt", [
        "000001.jpg 165  184  244  176  196  249  194  271  266  260",
        "000002.jpg 140  204  220  204  168  254  146  289  226  289  7",
        "000003.jpg 244  104  264  105  263  121  235  134  251  140",
        "000004.jpg 796  539  984  539  930  687  762  756  915  756 x",
        "000005.jpg 273  169  328  161  298  172  283  208  323  207".replace("298", "n/a"),
        "000003.jpg 1 2 3 4 5 6 7 8 9 10",
    ])
    table = read_landmarks(path)
    assert table.names == ["000001.jpg", "000003.jpg"]
    np.testing.assert_array_equal(table.points["000001.jpg"],
                                  [[165, 184], [244, 176], [196, 249], [194, 271], [266, 260]])
    np.testing.assert_array_equal(table.points["000003.jpg"][0], [244, 104])
    reasons = dict(table.skipped)
    assert set(reasons) == {"000002.jpg", "000004.jpg", "000005.jpg", "000003.jpg"}
    assert "line 4" in reasons["000002.jpg"]
    assert "got 12 fields" in reasons["000002.jpg"]
    assert "got 12 fields" in reasons["000004.jpg"]
    assert "must be numbers" in reasons["000005.jpg"]
    assert "listed again" in reasons["000003.jpg"]
    assert "line 5 is used" in reasons["000003.jpg"]


def test_read_landmarks_rejects_broken_files(tmp_path):
    with pytest.raises(DataError, match="declares 5 rows but the file has 1"):
        read_landmarks(write_landmarks(tmp_path / "short.txt", ["a.jpg 1 2 3 4 5 6 7 8 9 10"], count=5))
    (tmp_path / "nocount.txt").write_text("header\na.jpg 1 2 3 4 5 6 7 8 9 10\n")
    with pytest.raises(DataError, match="line 1: expected the row count"):
        read_landmarks(tmp_path / "nocount.txt")
    with pytest.raises(DataError, match="not found"):
        read_landmarks(tmp_path / "missing.txt")


def test_read_image_list_formats(tmp_path):
    celebahq = tmp_path / "image_list.txt"
    celebahq.write_text("idx         orig_idx    orig_file   proc_md5    final_md5\n"
                        "0           119613      119614.jpg  0ab1  1cd2\n"
                        "1           99094       099095.jpg  3ef4\n"
                        "2           200121      200122.jpg  5ab6  7cd8\n")
    names, skipped = read_image_list(celebahq)
    assert names == ["119614.jpg", "200122.jpg"]
    assert len(skipped) == 1
    assert skipped[0][0] == "image_list.txt line 3"
    assert "expected 5 fields like the header, got 4" in skipped[0][1]

    plain = tmp_path / "names.txt"
    plain.write_text("b.png\n\na.png\nc.png extra\n")
    names, skipped = read_image_list(plain)
    assert names == ["b.png", "a.png"]
    assert skipped[0][0] == "names.txt line 4"


# ----------------------------------------------------------------------------------------------
# prepare-data celeba: on Ray


@pytest.fixture(scope="module")
def celeba_folder(tmp_path_factory):
    """IMG_DIR with four usable synthetic photos and four bad ones, plus landmark and list files.

    Returns (root, {name: expected aligned uint8 (3, R, R)} for the usable photos, in list order).
    """
    root = tmp_path_factory.mktemp("celeba")
    photos = root / "img_celeba"
    photos.mkdir()
    rows, expected = [], {}
    for number, degrees in enumerate([0.0, 15.0, -30.0, 170.0], start=1):
        name = f"{number:06d}.png"
        photo, landmarks = synthetic_photo(degrees)
        landmarks = np.rint(landmarks)  # integers, as in CelebA's file
        if number == 4:
            # A 240x200 cut around the face, so the crop square leaves the photo and gets padded.
            photo, landmarks = np.ascontiguousarray(photo[100:300, 120:360]), landmarks - [120, 100]
        Image.fromarray(photo).save(photos / name)
        rows.append(landmark_row(name, landmarks))
        expected[name] = align_face(photo, landmarks, RESOLUTION)

    photo, landmarks = synthetic_photo()
    rows.append(landmark_row("000005.png", landmarks))  # no such file
    Image.fromarray(photo).save(photos / "000006.png")
    rows.append(landmark_row("000006.png", landmarks[:4]))  # wrong field count
    Image.fromarray(photo).save(photos / "000007.png")
    rows.append(landmark_row("000007.png", landmarks + [300, 0]))  # outside the photo
    Image.fromarray(photo).save(photos / "000008.png")
    degenerate = landmarks.copy()
    degenerate[1] = degenerate[0]
    rows.append(landmark_row("000008.png", degenerate))
    (photos / "000009.png").write_bytes(b"not an image")
    rows.append(landmark_row("000009.png", landmarks))

    write_landmarks(root / "list_landmarks_celeba.txt", rows)
    # Image list in another order than the landmark file, so the output order is checked.
    order = ["000003.png", "000009.png", "000001.png", "000005.png", "000006.png", "000004.png",
             "000007.png", "000002.png", "000008.png"]
    (root / "image_list.txt").write_text("idx orig_idx orig_file\n" + "".join(
        f"{index} {int(name[:6]) - 1} {name}\n" for index, name in enumerate(order)))
    ordered = {name: expected[name] for name in order if name in expected}
    return root, ordered


def expected_reasons() -> dict[str, str]:
    return {
        "000005.png": "image not found",
        "000006.png": "got 9 fields",
        "000007.png": "lies outside the 480x400 photo",
        "000008.png": "eyes are 0.00 px apart",
        "000009.png": "not a readable image",
    }


def test_prepare_celeba_skips_and_orders(celeba_folder, ray_2_cpus, tmp_path):
    root, expected = celeba_folder
    report = prepare_celeba(root / "img_celeba", root / "list_landmarks_celeba.txt", tmp_path / "hq",
                            images=root / "image_list.txt", resolution=RESOLUTION, workers=1,
                            batch_size=2, progress=False)

    assert report.count == 4
    assert report.reused == 0
    reasons = dict(report.skipped)
    assert set(reasons) == set(expected_reasons())
    for name, reason in expected_reasons().items():
        assert reason in reasons[name], (name, reasons[name])

    dataset = open_dataset(tmp_path / "hq")
    assert dataset.resolutions == [4, 8, 16, 32, 64, 128, 256]
    np.testing.assert_array_equal(dataset.level(RESOLUTION), np.stack(list(expected.values())))
    assert not (tmp_path / f"hq{celeba_prepare.WORK_SUFFIX}").exists()


def test_two_workers_match_one(celeba_folder, ray_2_cpus, tmp_path):
    root, _ = celeba_folder
    options = {"images": root / "image_list.txt", "resolution": RESOLUTION, "batch_size": 1, "progress": False}
    one = prepare_celeba(root / "img_celeba", root / "list_landmarks_celeba.txt", tmp_path / "one",
                         workers=1, **options)
    two = prepare_celeba(root / "img_celeba", root / "list_landmarks_celeba.txt", tmp_path / "two",
                         workers=2, **options)
    assert one.manifest["content_sha256"] == two.manifest["content_sha256"]
    for resolution in one.manifest["resolutions"]:
        assert (tmp_path / "one" / f"level-{resolution:04d}.npy").read_bytes() == \
            (tmp_path / "two" / f"level-{resolution:04d}.npy").read_bytes()


def test_rerun_reuses_aligned_faces(celeba_folder, ray_2_cpus, tmp_path, monkeypatch):
    root, expected = celeba_folder
    args = (root / "img_celeba", root / "list_landmarks_celeba.txt", tmp_path / "hq")
    options = {"images": root / "image_list.txt", "resolution": RESOLUTION, "workers": 2, "progress": False}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("stopped before writing")

    monkeypatch.setattr(celeba_prepare, "write_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_celeba(*args, **options)
    monkeypatch.undo()
    work = tmp_path / f"hq{celeba_prepare.WORK_SUFFIX}"
    saved = sorted(work.rglob("*.png"))
    assert len(saved) == 4
    assert not (tmp_path / "hq").exists()
    # Replace one saved face with a marked copy: the rerun must take it as it is.
    marked = np.asarray(Image.open(saved[0])).copy()
    marked[:8, :8] = 7
    Image.fromarray(marked).save(saved[0])

    report = prepare_celeba(*args, **options)
    assert report.reused == 4
    assert report.count == 4
    faces = open_dataset(tmp_path / "hq").level(RESOLUTION)
    assert sum(bool((face[:, :8, :8] == 7).all()) for face in faces) == 1
    untouched = [index for index, face in enumerate(faces) if not (face[:, :8, :8] == 7).all()]
    np.testing.assert_array_equal(faces[untouched], np.stack(list(expected.values()))[untouched])
    assert not work.exists()


def test_all_bad_leaves_nothing(celeba_folder, ray_2_cpus, tmp_path):
    root, _ = celeba_folder
    bad = tmp_path / "bad.txt"
    bad.write_text("000005.png\n000007.png\n000008.png\n")
    with pytest.raises(DataError, match="no faces aligned, skipped: 3"):
        prepare_celeba(root / "img_celeba", root / "list_landmarks_celeba.txt", tmp_path / "hq",
                       images=bad, resolution=RESOLUTION, progress=False)
    assert not (tmp_path / "hq").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.txt"]


def test_cli_writes_celeba_to_s3(celeba_folder, ray_2_cpus, tmp_path, capsys, monkeypatch):
    from orchestrator import storage
    from orchestrator.cli import main

    root, expected = celeba_folder
    monkeypatch.setenv("PROGAN_CACHE_DIR", str(tmp_path / "cache"))
    dest = "s3://progan/datasets/test-celebahq"
    status = main(["prepare-data", f"celeba:{root / 'img_celeba'}", dest,
                   "--landmarks", str(root / "list_landmarks_celeba.txt"),
                   "--images", str(root / "image_list.txt"), "--resolution", str(RESOLUTION),
                   "--output", "json"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dest"] == dest
    assert summary["count"] == 4
    assert {entry["name"] for entry in summary["skipped"]} == set(expected_reasons())

    local = storage.download_folder(dest, tmp_path / "downloaded")
    np.testing.assert_array_equal(open_dataset(local).level(RESOLUTION), np.stack(list(expected.values())))
    assert not celeba_prepare.s3_work_dir(dest).exists()


def test_cli_rejects_celeba_options_misuse(tmp_path, capsys):
    from orchestrator.cli import main

    assert main(["prepare-data", "celeba:" + str(tmp_path), str(tmp_path / "out")]) == 2
    assert "--landmarks: required" in capsys.readouterr().err
    assert main(["prepare-data", str(tmp_path), str(tmp_path / "out"), "--landmarks", "x.txt"]) == 2
    assert "apply only to celeba:" in capsys.readouterr().err
