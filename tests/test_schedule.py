"""Growth schedule against the worked values of the official TensorFlow code's schedule."""

import math

import pytest

from gan.config import TrainConfig, config_from_dict
from gan.ema import ema_beta
from gan.config import EmaConfig
from gan.schedule import GrowthSchedule, lod_at, rampup_factor


@pytest.mark.parametrize("kimg, expected_lod", [
    (0, 8.0), (300, 8.0), (600, 8.0), (900, 7.5), (1200, 7.0), (1800, 7.0), (2100, 6.5),
    (9000, 1.0), (9300, 0.5), (9600, 0.0), (12000, 0.0),
])
def test_lod_matches_official_600_600_worked_values(kimg, expected_lod):
    assert lod_at(kimg, 1024, 600, 600) == pytest.approx(expected_lod, abs=1e-12)


def test_paper_schedule_reaches_full_resolution_at_12800_kimg():
    assert lod_at(12800 - 1e-6, 1024, 800, 800) > 0
    assert lod_at(12800, 1024, 800, 800) == 0.0


def test_resolution_during_fade_is_the_new_one():
    schedule = GrowthSchedule(config_from_dict({"model": {"resolution": 1024}}))
    assert schedule.at(599).resolution == 4
    assert schedule.at(601).resolution == 8  # fading 4 -> 8
    assert schedule.at(900).alpha == pytest.approx(0.5)
    assert schedule.at(1199).resolution == 8
    assert schedule.at(1200).alpha == 1.0


def test_phase_changes_at_each_fade_and_stabilization_start():
    schedule = GrowthSchedule(config_from_dict({"model": {"resolution": 16}}))
    phases = [schedule.at(k).phase for k in (0, 599, 600.001, 1199, 1200, 1799, 1800.001, 2400, 5000)]
    assert phases == [(2, 2), (2, 2), (1, 2), (1, 2), (1, 1), (1, 1), (0, 1), (0, 0), (0, 0)]
    assert schedule.phase_boundaries_kimg() == [600, 1200, 1800, 2400]


def test_preset_minibatch_and_lr_per_resolution():
    config = config_from_dict({"model": {"resolution": 1024}, "schedule": {"preset": "v2-8gpus"}})
    schedule = GrowthSchedule(config)
    # v2-8gpus: 512/256/128/64/32/32/32/32/32 with lr 0.0015 at 128 and 0.003 at 1024.
    assert [config.schedule.minibatch[r] for r in (4, 8, 16, 32, 64, 128, 256, 512, 1024)] == \
        [512, 256, 128, 64, 32, 32, 32, 32, 32]
    assert schedule.at(0).lr == 0.001
    kimg_at_128 = 5 * 1200 + 1  # fading into 128
    assert schedule.at(kimg_at_128).resolution == 128
    assert schedule.at(kimg_at_128).lr == 0.0015
    assert schedule.at(12000).lr == 0.003


def test_user_minibatch_overrides_preset():
    config = config_from_dict({"model": {"resolution": 32}, "schedule": {"minibatch": {16: 24}}})
    assert config.schedule.minibatch == {4: 128, 8: 128, 16: 24, 32: 64}


def test_lr_rampup_matches_theano_formula():
    for kimg in (0.0, 10.0, 20.0, 39.0):
        assert rampup_factor(kimg, 40.0) == pytest.approx(math.exp(-5 * (1 - kimg / 40) ** 2))
    assert rampup_factor(40.0, 40.0) == 1.0
    assert rampup_factor(100.0, 40.0) == 1.0
    assert rampup_factor(0.0, 0.0) == 1.0


def test_tick_length_by_resolution():
    schedule = GrowthSchedule(config_from_dict({"model": {"resolution": 1024}}))
    assert schedule.at(0).tick_kimg == 160
    assert schedule.at(12000).tick_kimg == 10


def test_ema_beta_fixed_and_half_life():
    assert ema_beta(EmaConfig(mode="beta", beta=0.999), 128) == 0.999
    # Half-life of 10 kimg at minibatch 32: after 10000/32 steps the weight halves.
    beta = ema_beta(EmaConfig(mode="half_life", half_life_kimg=10.0), 32)
    assert beta ** (10000 / 32) == pytest.approx(0.5)
    # The official fixed beta halves after ln 0.5 / ln 0.999 = 692.8 steps.
    assert math.log(0.5) / math.log(0.999) == pytest.approx(692.8, abs=0.1)
    assert isinstance(TrainConfig().ema.beta, float)
