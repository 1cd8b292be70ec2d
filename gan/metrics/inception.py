"""InceptionV3 pool3 features (2048-d) for FID and KID, through torch-fidelity's feature extractor.

torch-fidelity's FeatureExtractorInceptionV3 reproduces the 2015-12-05 TensorFlow Inception graph that
the official ProGAN FID code uses, including the graph's TF1 bilinear resize to 299x299 and its
(x - 128) / 128 input scaling. The weights come from a local file and are never downloaded here:
`progan fetch-weights` downloads them once on a machine with internet access.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from gan.errors import DataError

# The converted weights that torch-fidelity 0.4.0 downloads when given no path
# (torch_fidelity/feature_extractor_inceptionv3.py, URL_INCEPTION_V3).
WEIGHTS_FILE_NAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE_NAME}"
# The file name follows torch.hub's convention: the part after the last "-" is the start of the file's
# SHA-256, and torch.hub checks exactly that prefix. Only the prefix is published with the file.
WEIGHTS_SHA256_PREFIX = "6726825d"
WEIGHTS_ENV_VAR = "PROGAN_INCEPTION_WEIGHTS"
WEIGHTS_CACHE_FOLDER = "inception"

EXTRACTOR_NAME = "inception-v3-compat"
FEATURE_LAYER = "2048"
FEATURE_DIM = 2048
RESIZE_MODE = "tf1-bilinear-299"
HASH_CHUNK_BYTES = 1 << 20


class InceptionWeightsMissing(DataError):
    """The Inception weights file was not found at the expected path, which the message names."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"Inception weights not found at {path}; download them once with"
                         f" `progan fetch-weights` or point ${WEIGHTS_ENV_VAR} at {WEIGHTS_FILE_NAME}")


class InceptionWeightsInvalid(DataError):
    """A weights file that is not the 2015-12-05 Inception state dict of torch-fidelity."""


def weights_path(explicit: str | os.PathLike | None = None, cache_root: str | os.PathLike | None = None) -> Path:
    """Return where the weights are expected: `explicit`, else $PROGAN_INCEPTION_WEIGHTS, else the cache.

    The cache location is CACHE_ROOT/inception/weights-inception-2015-12-05-6726825d.pth. The file
    may not exist; `load_inception` raises InceptionWeightsMissing then.
    """
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(WEIGHTS_ENV_VAR):
        return Path(os.environ[WEIGHTS_ENV_VAR]).expanduser()
    if cache_root is None:
        raise ValueError(f"no weights path given, ${WEIGHTS_ENV_VAR} is unset and no cache root was passed")
    return Path(cache_root) / WEIGHTS_CACHE_FOLDER / WEIGHTS_FILE_NAME


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def check_weights_hash(sha256: str, source: str | os.PathLike) -> None:
    """Raise InceptionWeightsInvalid unless `sha256` starts with the published prefix."""
    if not sha256.startswith(WEIGHTS_SHA256_PREFIX):
        raise InceptionWeightsInvalid(
            f"{source}: SHA-256 {sha256} does not start with {WEIGHTS_SHA256_PREFIX}, so it is not"
            f" {WEIGHTS_FILE_NAME}; download it again with `progan fetch-weights`")


class InceptionFeatures:
    """Callable InceptionV3 pool3 extractor: uint8 images (N, 1 or 3, H, W) -> float32 (N, 2048) on CPU."""

    def __init__(self, extractor: torch.nn.Module, weights_sha256: str, device: torch.device):
        self.extractor = extractor
        self.weights_sha256 = weights_sha256
        self.device = device

    @property
    def impl(self) -> str:
        """What produced the features: library, extractor, layer, resize and weights hash."""
        from torch_fidelity.version import __version__

        return (f"torch-fidelity-{__version__}/{EXTRACTOR_NAME}/pool3-{FEATURE_LAYER}/{RESIZE_MODE}"
                f"/weights-sha256-{self.weights_sha256[:16]}")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
        images = images.to(self.device)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grayscale as RGB with equal channels
        (features,) = self.extractor(images)
        return features.float().cpu()


def load_inception(path: str | os.PathLike, device: str | torch.device = "cpu", *,
                   verify: bool = True) -> InceptionFeatures:
    """Load the extractor from a local weights file.

    Raises InceptionWeightsMissing when the file does not exist and InceptionWeightsInvalid when its
    SHA-256 prefix is wrong (only with `verify`) or it is not a state dict of this architecture.
    `verify=False` is for tests and speed measurements with other weights, never for a reported FID.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = Path(path)
    if not path.is_file():
        raise InceptionWeightsMissing(path)
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    if verify:
        check_weights_hash(sha256, path)
    try:
        # weights_only=True admits tensors and plain containers only, so the file cannot run code.
        state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged or foreign files
        raise InceptionWeightsInvalid(f"{path}: unreadable weights file: {type(error).__name__}: {error}") from error
    del data
    if not isinstance(state_dict, dict):
        raise InceptionWeightsInvalid(f"{path}: expected a state dict, found {type(state_dict).__name__}")

    # torch-fidelity reads its weights with torch.load(weights_only=False). It gets the state dict
    # validated above, serialized again, instead of the file.
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    try:
        extractor = FeatureExtractorInceptionV3(EXTRACTOR_NAME, [FEATURE_LAYER], feature_extractor_weights_path=buffer)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise InceptionWeightsInvalid(f"{path}: not an InceptionV3 state dict for torch-fidelity: {first_line}") from error
    device = torch.device(device)
    return InceptionFeatures(extractor.to(device), sha256, device)


def random_inception_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Return a state dict of the extractor's architecture with random weights, for tests and benchmarks.

    Convolutions get He-normal weights, so activations keep their scale through the network. Features
    from these weights are meaningless as FID.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the freshly initialized parameters

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    skeleton = Skeleton(EXTRACTOR_NAME, [FEATURE_LAYER], feature_extractor_weights_path=empty)
    generator = torch.Generator().manual_seed(seed)
    state_dict = skeleton.state_dict()
    for name, tensor in state_dict.items():
        if name.endswith("conv.weight"):
            fan_in = tensor[0].numel()
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    return {name: tensor.clone() for name, tensor in state_dict.items()}
