"""Progressive-growing schedule: level of detail, resolution, minibatch and learning rate from kimg.

Follows the official TensorFlow code (tkarras/progressive_growing_of_gans, train.py TrainingSchedule):
the 4x4 networks train alone for `stable_kimg`, then each new resolution fades in over `fade_kimg`
and stabilizes for `stable_kimg`. kimg counts thousands of real images shown to D, over all workers.
"""

from __future__ import annotations

import dataclasses
import math

from gan.config import INITIAL_RESOLUTION, TrainConfig

# Official tick length in kimg per resolution (status lines and image grids); 160 elsewhere.
TICK_KIMG = {4: 160, 8: 140, 16: 120, 32: 100, 64: 80, 128: 60, 256: 40, 512: 20, 1024: 10}
TICK_KIMG_BASE = 160

# Learning-rate ramp-up of the official Theano code (misc.py rampup): coef = exp(-5 (1 - p)^2),
# p = kimg / rampup_kimg.
RAMPUP_STRENGTH = 5.0


@dataclasses.dataclass(frozen=True)
class GrowthState:
    """Schedule position of a run at one kimg."""

    kimg: float
    lod: float  # level of detail: log2(final) - log2(current) while stable, fractional while fading
    resolution: int  # the resolution G emits and D reads; during a fade-in the new, higher one
    alpha: float  # weight of the newest layers, 1 - frac(lod): 0 at a fade-in's start, 1 when stable
    phase: tuple[int, int]  # (floor(lod), ceil(lod)); Adam moments are reset whenever it changes
    minibatch: int  # global minibatch over all workers
    lr: float  # learning rate in force, ramp-up included
    tick_kimg: float

    @property
    def fading(self) -> bool:
        return self.phase[0] != self.phase[1]


def max_lod(final_resolution: int) -> int:
    return int(math.log2(final_resolution)) - int(math.log2(INITIAL_RESOLUTION))


def lod_at(kimg: float, final_resolution: int, stable_kimg: float, fade_kimg: float) -> float:
    """Return the level of detail after `kimg` thousand real images (0 = final resolution)."""
    period = stable_kimg + fade_kimg
    phase_index = math.floor(kimg / period)
    position = kimg - phase_index * period
    lod = max_lod(final_resolution) - phase_index - max(position - stable_kimg, 0.0) / fade_kimg
    return max(lod, 0.0)


def resolution_at_lod(final_resolution: int, lod: float) -> int:
    return final_resolution // 2 ** math.floor(lod)


def rampup_factor(kimg: float, rampup_kimg: float) -> float:
    if rampup_kimg <= 0:
        return 1.0
    progress = min(kimg / rampup_kimg, 1.0)
    return math.exp(-RAMPUP_STRENGTH * (1.0 - progress) ** 2)


class GrowthSchedule:
    """Evaluates the schedule of one config; a pure function of kimg."""

    def __init__(self, config: TrainConfig):
        self.final_resolution = config.model.resolution
        self.schedule = config.schedule
        self.base_lr = config.optim.lr

    def at(self, kimg: float) -> GrowthState:
        schedule = self.schedule
        lod = lod_at(kimg, self.final_resolution, schedule.stable_kimg, schedule.fade_kimg)
        resolution = resolution_at_lod(self.final_resolution, lod)
        lr = schedule.lr.get(resolution, self.base_lr) * rampup_factor(kimg, schedule.lr_rampup_kimg)
        return GrowthState(
            kimg=kimg,
            lod=lod,
            resolution=resolution,
            alpha=1.0 - (lod - math.floor(lod)),
            phase=(math.floor(lod), math.ceil(lod)),
            minibatch=schedule.minibatch[resolution],
            lr=lr,
            tick_kimg=float(TICK_KIMG.get(resolution, TICK_KIMG_BASE)),
        )

    def phase_boundaries_kimg(self) -> list[float]:
        """Return the kimg of every phase start after 0 (each fade-in and each stabilization)."""
        boundaries = []
        kimg = 0.0
        for _ in range(max_lod(self.final_resolution)):
            kimg += self.schedule.stable_kimg
            boundaries.append(kimg)
            kimg += self.schedule.fade_kimg
            boundaries.append(kimg)
        return boundaries

    def full_resolution_kimg(self) -> float:
        """Return the kimg at which lod reaches 0."""
        return max_lod(self.final_resolution) * (self.schedule.stable_kimg + self.schedule.fade_kimg)
