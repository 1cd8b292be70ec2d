"""Training step, loss and resumable state on tiny networks and synthetic data."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gan.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from gan.config import config_from_dict
from gan.dataset import open_dataset, write_dataset
from gan.errors import CheckpointMismatchError, TrainingError
from gan.loss import discriminator_loss, gradient_norm_scale
from gan.networks import Discriminator
from gan.train import Trainer, check_minibatch_split


def tiny_config(**schedule):
    return config_from_dict({
        "seed": 7,
        "model": {"resolution": 16, "channels": 1, "latent_size": 16, "fmap_base": 32, "fmap_max": 16,
                  "mbstd_group_size": 4},
        "schedule": {"stable_kimg": 0.2, "fade_kimg": 0.2, "total_kimg": 2,
                     "minibatch": {4: 8, 8: 8, 16: 8}, **schedule},
        "optim": {"lr": 0.002},
    })


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(24, 1, 16, 16), dtype=np.uint8)
    path = tmp_path_factory.mktemp("data") / "tiny"
    write_dataset(path, images, source="test:random")
    return open_dataset(path)


def assert_states_equal(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_states_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_states_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resume_mid_fade_is_bitwise_identical(tiny_dataset, tmp_path):
    steps = 40  # 320 images: past the first fade-in start at 200, inside a repeat block at 20
    config = tiny_config()
    straight = Trainer(config, tiny_dataset)
    for _ in range(steps):
        straight.train_step()

    first = Trainer(config, tiny_dataset)
    for _ in range(steps // 2 + 1):  # stop mid-way through a block of minibatch repeats
        first.train_step()
    assert first.state.fading or first.kimg < 0.2
    path = save_checkpoint(first.state_dict(), tmp_path / "state.pt")
    del first

    resumed = Trainer(config, tiny_dataset)
    resumed.load_state_dict(load_checkpoint(path))
    for _ in range(steps - steps // 2 - 1):
        resumed.train_step()

    assert straight.state.fading
    assert resumed.nimg == straight.nimg == steps * 8
    assert_states_equal(resumed.state_dict(), straight.state_dict())


def test_adam_moments_reset_at_phase_boundary(tiny_dataset):
    trainer = Trainer(tiny_config(), tiny_dataset)
    while trainer.nimg < 200:
        trainer.train_step()
    assert len(trainer.opt_D.state) > 0
    steps_before = max(int(s["step"]) for s in trainer.opt_D.state.values())
    # The next block of minibatch repeats starts the fade-in and must start Adam afresh.
    while trainer.state.phase == (2, 2):
        trainer.train_step()
    steps_after = max(int(s["step"]) for s in trainer.opt_D.state.values())
    assert steps_after < steps_before
    assert steps_after <= trainer.config.schedule.minibatch_repeats


def test_loaded_state_keeps_config_lr(tiny_dataset):
    trainer = Trainer(tiny_config(), tiny_dataset)
    for _ in range(5):
        trainer.train_step()
    state = trainer.state_dict()
    mutated = tiny_config()
    mutated.optim.lr = 0.0005
    donor_loaded = Trainer(mutated, tiny_dataset)
    donor_loaded.load_state_dict(state)
    assert state["opt_G"]["param_groups"][0]["lr"] == 0.002
    assert donor_loaded.opt_G.param_groups[0]["lr"] == 0.0005
    assert donor_loaded.opt_D.param_groups[0]["lr"] == 0.0005
    donor_loaded.train_step()
    assert donor_loaded.opt_G.param_groups[0]["lr"] == 0.0005


def test_checkpoint_from_other_model_is_rejected(tiny_dataset, tmp_path):
    trainer = Trainer(tiny_config(), tiny_dataset)
    path = save_checkpoint(trainer.state_dict(), tmp_path / "a.pt")
    other = tiny_config()
    other.model.fmap_max = 8
    with pytest.raises(CheckpointMismatchError, match="model.fmap_max"):
        check_compatible(load_checkpoint(path), other)


def test_nonfinite_updates_skipped_then_fail_with_kimg(tiny_dataset):
    config = tiny_config()
    config.optim.max_consecutive_nonfinite = 3
    trainer = Trainer(config, tiny_dataset)
    trainer.train_step()
    with torch.no_grad():
        next(trainer.D.parameters()).fill_(float("nan"))
    before = [p.clone() for p in trainer.G.parameters()]
    stats = trainer.train_step()
    assert stats.skipped_D
    assert math.isnan(stats.loss_D)  # the non-finite loss is reported, not replaced
    assert trainer.nonfinite["D"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.G.parameters())) or stats.skipped_G
    with pytest.raises(TrainingError, match=r"kimg 0\.0"):
        for _ in range(5):
            trainer.train_step()


def test_minibatch_split_errors_name_the_key():
    config = tiny_config(minibatch={4: 12, 8: 8, 16: 8})
    with pytest.raises(Exception, match=r"schedule.minibatch.4"):
        check_minibatch_split(config, 2)  # 12 / 2 = 6, not divisible by group 4
    check_minibatch_split(tiny_config(), 2)


def test_gradient_penalty_full_norm_equals_official_full_resolution():
    """The 'full' norm equals the gradient norm taken on nearest-upsampled full-resolution inputs."""
    config = tiny_config()
    torch.manual_seed(0)
    discriminator = Discriminator(config.model).double()
    lod = 1.0  # 8x8 inside a 16x16 run: s = 2
    reals = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    fakes = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    scale = gradient_norm_scale(16, 8, "full")
    assert scale == 0.5

    loss = discriminator_loss(discriminator, reals, fakes, lod, config.loss, scale,
                              torch.Generator().manual_seed(3))
    # Independent computation: the official D receives 16x16 nearest-upsampled images and box-pools them.
    u = torch.rand(4, 1, 1, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float32).double()
    mixed_full = F.interpolate(reals + u * (fakes - reals), scale_factor=2, mode="nearest")
    mixed_full.requires_grad_(True)
    scores = discriminator(F.avg_pool2d(mixed_full, 2), lod)
    (grad_full,) = torch.autograd.grad(scores.sum(), mixed_full)
    norms_full = grad_full.flatten(1).norm(dim=1)
    expected_penalty = (10.0 * (norms_full - 1.0) ** 2).mean()
    assert loss.gradient_norm.item() == pytest.approx(norms_full.mean().item(), rel=1e-9)
    assert loss.gradient_penalty.item() == pytest.approx(expected_penalty.item(), rel=1e-9)


def test_loss_terms_match_definition():
    config = tiny_config()
    torch.manual_seed(1)
    discriminator = Discriminator(config.model).double()
    reals = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    fakes = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    loss = discriminator_loss(discriminator, reals, fakes, 0.0, config.loss, 1.0,
                              torch.Generator().manual_seed(0))
    with torch.no_grad():
        real_scores = discriminator(reals, 0.0)
        fake_scores = discriminator(fakes, 0.0)
    assert loss.wasserstein.item() == pytest.approx((fake_scores - real_scores).mean().item(), rel=1e-9)
    assert loss.drift.item() == pytest.approx((0.001 * real_scores**2).mean().item(), rel=1e-9)
    expected_total = loss.wasserstein + loss.gradient_penalty + loss.drift
    assert loss.total.item() == pytest.approx(expected_total.item(), rel=1e-9)
