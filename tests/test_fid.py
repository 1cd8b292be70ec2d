"""FID and KID: the Fréchet distance against scipy, the Inception weights, the reference cache, the
`progan metrics fid` command, training with and without weights, and 1 vs 2 ranks.

No test downloads anything: the Inception extractor runs with random weights that the tests save,
on a handful of small images, because it is slow on CPU (about 2 images per second on 2 cores).
"""

import json
import logging
import math
import uuid
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.multiprocessing as mp
from PIL import Image

from gan.config import config_from_dict, config_to_dict
from gan.dataset import write_dataset
from gan.metrics import inception
from gan.metrics.features import ArrayImages, GeneratedImages, batch_ranges, extract_features, mirror_flips
from gan.metrics.fid import (RankDeficientCovarianceWarning, feature_statistics, frechet_distance,
                             kernel_inception_distance)
from gan.metrics.inception import (FEATURE_DIM, InceptionWeightsInvalid, InceptionWeightsMissing, load_inception,
                                   random_inception_state_dict)
from orchestrator.cli import main
from orchestrator.fid_reference import ReferenceCache, ReferenceProtocol


def scipy_frechet_distance(mu1, sigma1, mu2, sigma2):
    """FID as the TTUR and ProGAN code compute it: scipy's sqrtm of S1 S2, real part, in float64."""
    root, error = _sqrtm(sigma1 @ sigma2)
    difference = mu1 - mu2
    return difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root).real, error


def _sqrtm(matrix):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = scipy.linalg.sqrtm(matrix)
    # Relative residual of the square root: where it is tiny, scipy's value is trustworthy.
    residual = np.linalg.norm(root @ root - matrix) / np.linalg.norm(matrix)
    return root, residual


def gaussian_features(rng, count, dim, scale=1.0, shift=0.0):
    mixing = rng.standard_normal((dim, dim)) * scale / math.sqrt(dim)
    return rng.standard_normal((count, dim)) @ mixing + shift


def statistics(features):
    """Mean and N - 1 covariance written out in float64, independently of feature_statistics."""
    features = np.asarray(features, dtype=np.float64)
    centered = features - features.mean(axis=0)
    return features.mean(axis=0), centered.T @ centered / (len(features) - 1)


# ---- Fréchet distance ----------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [8, 64, 256])
def test_frechet_distance_matches_scipy(dim):
    rng = np.random.default_rng(dim)
    mu1, sigma1 = statistics(gaussian_features(rng, 4 * dim, dim))
    mu2, sigma2 = statistics(gaussian_features(rng, 4 * dim, dim, scale=1.5, shift=0.3))
    expected, residual = scipy_frechet_distance(mu1, sigma1, mu2, sigma2)
    assert residual < 1e-10
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_rank_deficient():
    dim, count = 64, 20  # rank 19 covariances, as from fewer images than Inception's 2048 features
    rng = np.random.default_rng(1)
    mu1, sigma1 = statistics(gaussian_features(rng, count, dim))
    mu2, sigma2 = statistics(gaussian_features(rng, count, dim, scale=2.0, shift=0.5))
    assert np.linalg.matrix_rank(sigma1) == count - 1

    value = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert isinstance(value, float)
    assert math.isfinite(value)
    expected, residual = scipy_frechet_distance(mu1, sigma1, mu2, sigma2)
    assert residual < 1e-8  # scipy is stable on this product
    assert value == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_set_with_itself():
    rng = np.random.default_rng(2)
    for count in (4, 40):  # singular and full-rank covariances in 32 dimensions
        mu, sigma = statistics(gaussian_features(rng, count, 32))
        assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_frechet_distance_of_zero_covariances_is_mean_distance():
    mu1 = np.array([0.0, 1.0, 2.0])
    mu2 = np.array([1.0, 1.0, 4.0])
    zeros = np.zeros((3, 3))
    assert frechet_distance(mu1, zeros, mu2, zeros) == 5.0


def test_frechet_distance_rejects_invalid_input():
    mu = np.zeros(3)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu, np.diag([1.0, np.nan, 1.0]), mu, np.eye(3))
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(mu, np.diag([1.0, -1.0, 1.0]), mu, np.eye(3))
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(mu, np.eye(4), mu, np.eye(3))


def test_feature_statistics_and_rank_warning():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((10, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mu, sigma = feature_statistics(features)
    expected_mu, expected_sigma = statistics(features)
    np.testing.assert_allclose(mu, expected_mu, rtol=1e-12)
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-12)
    assert sigma.dtype == np.float64

    with pytest.warns(RankDeficientCovarianceWarning, match="6 feature vectors of dimension 8"):
        feature_statistics(rng.standard_normal((6, 8)))


# ---- KID -----------------------------------------------------------------------------------------

def reference_unbiased_mmd2(x, y):
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, summed pair by pair."""
    m, dim = x.shape

    def kernel(a, b):
        return (float(np.dot(a, b)) / dim + 1.0) ** 3

    within_x = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    within_y = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
    return (within_x + within_y) / (m * (m - 1)) - 2 * across / (m * m)


def test_kid_matches_pairwise_reference_and_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(4)
    features1 = rng.standard_normal((15, 6))
    features2 = rng.standard_normal((12, 6)) * 1.3 + 0.2
    mean, std = kernel_inception_distance(features1, features2, subsets=4, subset_size=7, seed=11)

    # Subsets drawn as torch-fidelity draws them: RandomState(seed), set 1 then set 2 per subset.
    random_state = np.random.RandomState(11)
    values = []
    for _ in range(4):
        x = features1[random_state.choice(15, 7, replace=False)]
        y = features2[random_state.choice(12, 7, replace=False)]
        values.append(reference_unbiased_mmd2(x, y))
    assert mean == pytest.approx(np.mean(values), rel=1e-10)
    assert std == pytest.approx(np.std(values), rel=1e-10)

    theirs = kid_features_to_metric(torch.from_numpy(features1).float(), torch.from_numpy(features2).float(),
                                    kid_subsets=4, kid_subset_size=7, rng_seed=11, verbose=False)
    assert mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4, abs=1e-6)


def test_kid_subsets_shrink_to_small_sets():
    rng = np.random.default_rng(5)
    features = rng.standard_normal((5, 4))
    mean, std = kernel_inception_distance(features, features + 1.0, subsets=3)
    assert math.isfinite(mean)
    assert math.isfinite(std)
    x, y = features, features + 1.0  # subsets of 5 out of 5 contain every row, in some order
    assert mean == pytest.approx(reference_unbiased_mmd2(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


# ---- Inception weights and features --------------------------------------------------------------

@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A state dict of the extractor's architecture with random weights, saved as a weights file."""
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(random_inception_state_dict(seed=0), path)
    return path


@pytest.fixture(scope="module")
def extractor(random_weights):
    return load_inception(random_weights, verify=False)


@pytest.fixture
def accept_random_weights(random_weights, monkeypatch):
    """Let the hash check accept the random weights and point $PROGAN_INCEPTION_WEIGHTS at them."""
    monkeypatch.setattr(inception, "WEIGHTS_SHA256_PREFIX", inception.file_sha256(random_weights)[:8])
    monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(random_weights))
    return random_weights


def tiny_images(count, channels=1, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(count, channels, size, size), dtype=np.uint8)


def test_inception_loads_saved_state_dict(random_weights, extractor):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    saved = torch.load(random_weights, weights_only=True)
    loaded = extractor.extractor.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[name], saved[name]) for name in saved)
    assert extractor.weights_sha256 == inception.file_sha256(random_weights)

    gray = torch.from_numpy(tiny_images(3))
    features = extractor(gray)
    assert features.shape == (3, FEATURE_DIM)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert features.std() > 0

    # Grayscale is RGB with three equal channels, fed to torch-fidelity's own extractor.
    direct = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(random_weights))
    with torch.no_grad():
        (expected,) = direct(gray.repeat(1, 3, 1, 1))
    torch.testing.assert_close(features, expected, rtol=0, atol=0)


def test_inception_rejects_missing_and_foreign_weights(tmp_path, random_weights):
    missing = tmp_path / "absent.pth"
    with pytest.raises(InceptionWeightsMissing, match=str(missing)):
        load_inception(missing)

    # Real use checks the published hash prefix, which random weights do not have.
    with pytest.raises(InceptionWeightsInvalid, match="does not start with 6726825d"):
        load_inception(random_weights)

    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(InceptionWeightsInvalid, match="not an InceptionV3 state dict"):
        load_inception(wrong, verify=False)

    pickled_code = tmp_path / "code.pth"
    torch.save({"object": uuid.uuid4()}, pickled_code)  # a class instance, not tensors: weights_only refuses it
    with pytest.raises(InceptionWeightsInvalid, match="unreadable weights file"):
        load_inception(pickled_code, verify=False)


def test_weights_path_order(tmp_path, monkeypatch):
    monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
    assert inception.weights_path(None, tmp_path) == tmp_path / "inception" / inception.WEIGHTS_FILE_NAME
    monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path / "env.pth"))
    assert inception.weights_path(None, tmp_path) == tmp_path / "env.pth"
    assert inception.weights_path(tmp_path / "given.pth", tmp_path) == tmp_path / "given.pth"


def test_generated_latents_do_not_depend_on_batches():
    images = GeneratedImages(lambda latents: latents, latent_size=4, count=7, seed=3)
    whole = images.latents(0, 7)
    pieces = torch.cat([images.latents(start, stop) for start, stop in batch_ranges(7, 3)])
    assert torch.equal(whole, pieces)
    assert not torch.equal(whole, GeneratedImages(lambda z: z, 4, 7, seed=4).latents(0, 7))


def test_array_images_apply_mirror_flips():
    images = tiny_images(8, channels=3, size=4, seed=8)
    flips = mirror_flips(8, seed=0)
    assert 0 < flips.sum() < 8
    np.testing.assert_array_equal(mirror_flips(8, seed=0), flips)
    batch = ArrayImages(images, flips).batch(2, 8).numpy()
    for offset, index in enumerate(range(2, 8)):
        expected = images[index][:, :, ::-1] if flips[index] else images[index]
        np.testing.assert_array_equal(batch[offset], expected)


def test_batch_ranges_cover_every_image_once():
    ranks = [batch_ranges(11, 2, rank, 3) for rank in range(3)]
    assert ranks[0] == [(0, 2), (6, 8)]
    assert ranks[1] == [(2, 4), (8, 10)]
    assert ranks[2] == [(4, 6), (10, 11)]


def _extract_on_rank(rank, world_size, init_file, weights, images, out_path):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        extractor = load_inception(weights, verify=False)
        features = extract_features(extractor, ArrayImages(images), batch_size=2, rank=rank, world_size=world_size)
        if rank == 0:
            np.save(out_path, features)
        else:
            assert features is None
    finally:
        dist.destroy_process_group()


def test_features_identical_with_one_and_two_ranks(tmp_path, random_weights, extractor):
    images = tiny_images(5, channels=3, size=8, seed=6)
    # The thread count changes how oneDNN sums convolutions, so both runs use one thread per process.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = extract_features(extractor, ArrayImages(images), batch_size=2)
    finally:
        torch.set_num_threads(threads)

    out_path = tmp_path / "two-ranks.npy"
    mp.start_processes(_extract_on_rank, args=(2, tmp_path / "init", random_weights, images, out_path),
                       nprocs=2, join=True, start_method="spawn")
    np.testing.assert_array_equal(np.load(out_path), single)


def test_fetch_weights_checks_existing_file(tmp_path, random_weights, monkeypatch, capsys):
    import shutil

    import torch.hub

    def no_download(*args, **kwargs):
        raise AssertionError("fetch-weights downloaded although the file was there")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    target = tmp_path / "inception" / inception.WEIGHTS_FILE_NAME
    target.parent.mkdir()
    shutil.copyfile(random_weights, target)

    # Random weights do not have the published hash prefix.
    assert main(["fetch-weights", "--dest", str(tmp_path)]) == 2
    assert "does not start with 6726825d" in capsys.readouterr().err

    monkeypatch.setattr(inception, "WEIGHTS_SHA256_PREFIX", inception.file_sha256(random_weights)[:8])
    summary = run_json(capsys, ["fetch-weights", "--dest", str(tmp_path), "--output", "json"])
    assert summary["path"] == str(target)
    assert summary["downloaded"] is False
    assert summary["sha256"] == inception.file_sha256(random_weights)


class PixelGenerator:
    """A stand-in for the trainer: maps each 16-d latent to a 4x4 grayscale image."""

    @staticmethod
    def generate(latents):
        return ((latents.reshape(-1, 1, 4, 4).tanh() + 1) * 127.5).round().to(torch.uint8)


def _evaluate_on_rank(rank, world_size, init_file, weights, dataset_path, cache_root, out_path):
    import os

    import torch.distributed as dist

    from gan.dataset import open_dataset
    from orchestrator.fid_evaluation import FidEvaluator

    torch.set_num_threads(1)
    inception.WEIGHTS_SHA256_PREFIX = inception.file_sha256(weights)[:8]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        dataset = open_dataset(dataset_path)
        config = tiny_config(dataset_path, fid_images=3)
        # Weights missing on rank 1 only: every rank must go without FID.
        os.environ[inception.WEIGHTS_ENV_VAR] = str(weights) if rank == 0 else str(weights) + ".missing"
        none_anywhere = FidEvaluator.create(config, dataset, str(dataset_path), torch.device("cpu"), rank,
                                            world_size, cache_root)
        os.environ[inception.WEIGHTS_ENV_VAR] = str(weights)
        evaluator = FidEvaluator.create(config, dataset, str(dataset_path), torch.device("cpu"), rank,
                                        world_size, cache_root)
        metrics = evaluator.evaluate(PixelGenerator())
        if rank == 0:
            out_path.write_text(json.dumps({"created_without_weights": none_anywhere is not None, **metrics}))
        else:
            assert none_anywhere is None
            assert metrics == {}
    finally:
        dist.destroy_process_group()


def test_fid_evaluator_identical_with_two_ranks(faces, accept_random_weights, tmp_path):
    from gan.dataset import open_dataset
    from orchestrator.fid_evaluation import FidEvaluator

    dataset_path, _ = faces
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluator = FidEvaluator.create(tiny_config(dataset_path, fid_images=3), open_dataset(dataset_path),
                                        str(dataset_path), torch.device("cpu"), cache_root=tmp_path / "one-rank")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RankDeficientCovarianceWarning)
            single = evaluator.evaluate(PixelGenerator())
    finally:
        torch.set_num_threads(threads)

    out_path = tmp_path / "two-ranks.json"
    mp.start_processes(_evaluate_on_rank, args=(2, tmp_path / "init", accept_random_weights, dataset_path,
                                                tmp_path / "two-ranks", out_path),
                       nprocs=2, join=True, start_method="spawn")
    two_ranks = json.loads(out_path.read_text())
    assert two_ranks.pop("created_without_weights") is False
    assert two_ranks == single
    assert set(single) == {"fid", "kid/mean", "kid/std"}


# ---- reference statistics cache ------------------------------------------------------------------

def protocol(**changes):
    fields = dict(dataset_sha256="ab" * 32, resolution=16, images=6, mirror=False,
                  extractor="test-extractor", weights_sha256="cd" * 32)
    return ReferenceProtocol(**{**fields, **changes})


def test_reference_cache_hit_on_second_call(tmp_path, service_env):
    computed = []

    def compute():
        computed.append(1)
        # 16-d features keep the S3 objects small; the cache does not depend on the dimension.
        return np.random.default_rng(len(computed)).standard_normal((6, 16)).astype(np.float32)

    s3_folder = f"s3://progan/test-fid-stats-{uuid.uuid4().hex[:8]}"
    cache = ReferenceCache(tmp_path / "node-1", s3_folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientCovarianceWarning)
        first = cache.load_or_compute(protocol(), compute)
        second = cache.load_or_compute(protocol(), compute)
        assert len(computed) == 1
        np.testing.assert_array_equal(second.features, first.features)
        np.testing.assert_array_equal(second.sigma, first.sigma)
        expected_mu, expected_sigma = statistics(first.features)
        np.testing.assert_allclose(second.mu, expected_mu, rtol=1e-12)
        np.testing.assert_allclose(second.sigma, expected_sigma, rtol=1e-12, atol=1e-15)

        # Another node with an empty local cache finds the entry in S3.
        other_node = ReferenceCache(tmp_path / "node-2", s3_folder)
        from_s3 = other_node.load_or_compute(protocol(), compute)
        assert len(computed) == 1
        np.testing.assert_array_equal(from_s3.features, first.features)

        # Every protocol field is part of the key.
        for change in ({"mirror": True}, {"images": 5}, {"resolution": 32}, {"weights_sha256": "ef" * 32}):
            cache.load_or_compute(protocol(**change), lambda change=change: compute()[:protocol(**change).images])
        assert len(computed) == 5
    leftovers = [path.name for path in (tmp_path / "node-1" / "fid-stats").iterdir() if path.suffix != ".npz"]
    assert leftovers == []


# ---- progan metrics fid --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """A dataset of 5 grayscale 16x16 images and a folder with the same images as PNG files."""
    root = tmp_path_factory.mktemp("fid-sets")
    images = tiny_images(5, seed=7)
    write_dataset(root / "dataset", images, source="test:random")
    folder = root / "pngs"
    folder.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image[0]).save(folder / f"{index:02d}.png")
    return root / "dataset", folder


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_metrics_fid_command(faces, accept_random_weights, tmp_path, monkeypatch, capsys):
    from gan.checkpoint import generator_snapshot, save_checkpoint
    from gan.dataset import open_dataset
    from gan.train import Trainer
    from orchestrator import fid_reference

    dataset, folder = faces
    cache = tmp_path / "cache"
    monkeypatch.setenv("PROGAN_CACHE_DIR", str(cache))
    stores = []
    original_store = fid_reference.ReferenceCache.store
    monkeypatch.setattr(fid_reference.ReferenceCache, "store",
                        lambda self, *args: stores.append(1) or original_store(self, *args))
    warnings.simplefilter("ignore", RankDeficientCovarianceWarning)  # 3 images; pytest restores the filters

    # The dataset against the same images as PNG files.
    result = run_json(capsys, ["metrics", "fid", str(dataset), str(folder), "--images", "3", "--output", "json"])
    assert set(result) == {"fid", "kid_mean", "kid_std", "fid/images", "fid/reference_images", "fid/impl"}
    assert abs(result["fid"]) < 1e-6
    # Every KID subset contains all 3 images of each set, so the subsets agree. For equal sets the
    # unbiased estimate is below 0: the cross term keeps the diagonal k(x, x) that the others drop.
    assert result["kid_std"] == pytest.approx(0.0, abs=1e-9)
    assert result["kid_mean"] < 0
    assert result["fid/images"] == 3
    assert result["fid/reference_images"] == 3
    assert result["fid/impl"].startswith("torch-fidelity-0.4.0/inception-v3-compat/pool3-2048/tf1-bilinear-299/")
    assert len(list((cache / "fid-stats").glob("*.npz"))) == 1
    assert stores == [1]

    # The dataset against an untrained generator; the dataset's statistics come from the cache.
    trainer = Trainer(tiny_config(dataset), open_dataset(dataset))
    checkpoint = save_checkpoint(generator_snapshot(trainer), tmp_path / "G_ema.pt")
    result = run_json(capsys, ["metrics", "fid", str(dataset), str(checkpoint), "--images", "3", "--output", "json"])
    assert result["fid/images"] == 3
    assert math.isfinite(result["fid"])
    assert result["fid"] > 0
    assert stores == [1]


def test_metrics_fid_without_weights_names_path(faces, tmp_path, monkeypatch, capsys):
    dataset, folder = faces
    missing = tmp_path / "nothing-here.pth"
    assert main(["metrics", "fid", str(dataset), str(folder), "--weights", str(missing)]) == 2
    error = capsys.readouterr().err
    assert str(missing) in error
    assert len(error.strip().splitlines()) == 1


# ---- training --------------------------------------------------------------------------------------

def tiny_config(dataset, **metrics):
    return config_from_dict({
        "seed": 3,
        "model": {"resolution": 16, "channels": 1, "latent_size": 16, "fmap_base": 32, "fmap_max": 16,
                  "mbstd_group_size": 4},
        "data": {"path": str(dataset), "mirror": True},
        "schedule": {"stable_kimg": 0.02, "fade_kimg": 0.02, "total_kimg": 0.04, "minibatch": {4: 4, 8: 4, 16: 4}},
        "metrics": {"every_kimg": 0.04, "swd_images": 4, "grid_size": 2, "fid_images": 2, **metrics},
        "checkpoint": {"every_kimg": 1.0},
    })


def train_in_process(config, tmp_path, monkeypatch):
    """Run the Ray Train worker loop in this process as rank 0 of 1; return the reported metrics."""
    from orchestrator import ray_adapter, worker

    reports = []
    monkeypatch.setattr(ray_adapter, "worker_context", lambda: ray_adapter.WorkerContext(0, 1, 0, "test"))
    monkeypatch.setattr(ray_adapter, "latest_checkpoint_state", lambda: None)
    monkeypatch.setattr(ray_adapter, "report", lambda metrics, state, name: reports.append(dict(metrics)))
    loop_config = {"config": config_to_dict(config), "run_dir": str(tmp_path / "run"),
                   "cache_dir": str(tmp_path / "cache")}
    worker.train_loop_per_worker(loop_config)
    return reports


def test_training_without_weights_warns_once(faces, tmp_path, monkeypatch, caplog):
    dataset, _ = faces
    missing = tmp_path / "missing-weights.pth"
    monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(missing))
    with caplog.at_level(logging.WARNING, logger="orchestrator.fid_evaluation"):
        reports = train_in_process(tiny_config(dataset), tmp_path, monkeypatch)
    assert len(reports) == 2  # kimg 0 and the end
    assert all("fid" not in report and "kid/mean" not in report for report in reports)
    warnings_logged = [record for record in caplog.records if record.name == "orchestrator.fid_evaluation"]
    assert len(warnings_logged) == 1
    assert str(missing) in warnings_logged[0].getMessage()


def test_training_with_weights_reports_fid(faces, accept_random_weights, tmp_path, monkeypatch):
    from orchestrator import fid_reference

    dataset, _ = faces
    stores = []
    original_store = fid_reference.ReferenceCache.store
    monkeypatch.setattr(fid_reference.ReferenceCache, "store",
                        lambda self, *args: stores.append(1) or original_store(self, *args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientCovarianceWarning)
        reports = train_in_process(tiny_config(dataset), tmp_path, monkeypatch)
    assert len(reports) == 2
    for report in reports:
        assert {"fid", "kid/mean", "kid/std"} <= report.keys()
        assert math.isfinite(report["fid"])
        assert report["fid"] > 0
        assert report["kid/std"] >= 0
    assert stores == [1]  # the reals were embedded once, at the first evaluation
    assert len(list((tmp_path / "cache" / "fid-stats").glob("*.npz"))) == 1
