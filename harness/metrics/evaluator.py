"""Evaluators: the networks whose logits and features every generative metric is computed from.

* ``domain_classifier`` (default): a small CNN the harness trains on the dataset's full TRAIN split (all classes,
  novel ones included), cached on disk under a content hash of everything that determines it (dataset fingerprint,
  preprocessing, architecture, training settings, seed), with its TEST accuracy stored beside it. Logits (for IS and
  class consistency) come from its last layer, features (FID, KID, precision/recall, memorisation) from the
  penultimate one (``feature_dim`` units after ReLU).
* ``inception_v3``: torch-fidelity's ``inception-v3-compat`` (pool3 2048-d features, unbiased logits for IS) loaded
  from a local weights file; :func:`check_evaluator` names the file and where to put it. Never downloaded here.

The evaluator has seen the novel classes, so it never reaches a method: nothing in ``methods/`` may import this.
Both evaluators quantise their input to 8 bits first, exactly as torch-fidelity hands images to a feature extractor,
so the features of a float sample equal those of its saved uint8 copy.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.augment import random_affine
from harness.metrics.cache import cache_dir, file_lock, read_json, read_tensors, stable_hash, write_json, write_tensors

if TYPE_CHECKING:
    from harness.data import Dataset
    from harness.metrics.config import EvaluationConfig

log = logging.getLogger(__name__)

DOMAIN_CLASSIFIER = "domain_classifier"
INCEPTION_V3 = "inception_v3"
EVALUATOR_VERSION = 1
EXTRACT_BATCH = 500

# The file torch-fidelity's inception-v3-compat extractor downloads (URL_INCEPTION_V3 in
# torch_fidelity/feature_extractor_inceptionv3.py); torch.hub stores it as <hub dir>/checkpoints/<this name>.
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_WEIGHTS_FILE = os.path.basename(urlparse(INCEPTION_WEIGHTS_URL).path)


class EvaluatorUnavailableError(ValueError):
    """The configured evaluator (or a network a metric reads, such as LPIPS's) cannot be built here, e.g. its
    weights file is missing; ``field`` names the suite field a validation message points at."""

    def __init__(self, message: str, field: str = "evaluation.evaluator") -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class DomainClassifierSettings:
    """Architecture and training of the domain classifier; every field enters the cache hash.

    Training runs ``clamp(epochs * ceil(N / batch_size), min_steps, max_steps)`` Adam steps with a one-cycle learning
    rate, batches drawn by a seeded permutation, light augmentation (random rotation, scale and translation; no flips)
    and dropout before the last layer. Sized for a CPU: ~600 steps on the 4 000-image embedded MNIST.
    """

    widths: tuple[int, int, int] = (16, 32, 64)
    feature_dim: int = 128
    dropout: float = 0.3
    batch_size: int = 64
    epochs: int = 5
    min_steps: int = 600
    max_steps: int = 6000
    max_lr: float = 3e-3
    rotate_degrees: float = 10.0
    scale: float = 0.1
    translate: float = 0.1
    seed: int = 0

    def steps_for(self, num_images: int) -> int:
        return max(self.min_steps, min(self.max_steps, self.epochs * math.ceil(num_images / self.batch_size)))


PREPROCESSING = {"input": "float in [0,1], quantised to uint8 levels", "normalise": "(x - 0.5) / 0.5"}


class DomainClassifierNet(nn.Module):
    """Three conv blocks (conv3×3-BN-ReLU, max-pool after the first two), 3×3 adaptive pooling, a ``feature_dim``
    ReLU layer (the features) and a linear layer (the logits). Works for any square size ≥ 8 px and 1 or 3 channels."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64),
                 feature_dim: int = 128, dropout: float = 0.3) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))

        w1, w2, w3 = widths
        self.body = nn.Sequential(
            block(in_channels, w1), nn.MaxPool2d(2), block(w1, w2), nn.MaxPool2d(2), block(w2, w3),
            nn.AdaptiveAvgPool2d(3), nn.Flatten(),
        )
        self.features = nn.Sequential(nn.Linear(w3 * 9, feature_dim), nn.ReLU(True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` float in [0, 1] (N×C×H×W) → (logits N×K, features N×feature_dim)."""
        features = self.features(self.body((x - 0.5) / 0.5))
        return self.head(self.dropout(features)), features


def quantise(images: Tensor) -> Tensor:
    """Round to the 256 levels an 8-bit image has (what torch-fidelity and ``samples.pt`` keep)."""
    return images.float().clamp(0, 1).mul(255).round().div(255)


# ------------------------------------------------------------------------------------------------------ evaluators


@dataclass(eq=False)
class Evaluator:
    """A network mapping images (float in [0, 1]) to (logits, features), plus what provenance records about it.

    ``num_classes`` is the dataset's class count for the domain classifier (its logits index the dataset's class
    ids) and None for InceptionV3 (ImageNet logits). ``cache_status`` says where it came from: ``memory``, ``disk``,
    ``trained`` (domain classifier) or ``file`` (InceptionV3).
    """

    name: str
    hash: str
    module: nn.Module
    device: torch.device
    image_shape: tuple[int, int, int]
    num_classes: int | None
    feature_dim: int
    test_accuracy: float | None = None
    cache_status: str = "memory"
    path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    batch_size: int = EXTRACT_BATCH

    @torch.no_grad()
    def extract(self, images: Tensor, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """(logits, features) of ``images`` as float32 CPU tensors, in batches on the evaluator's device."""
        batch_size = batch_size or self.batch_size
        if images.ndim != 4:
            raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
        if self.name == DOMAIN_CLASSIFIER and tuple(images.shape[1:]) != tuple(self.image_shape):
            raise ValueError(f"the evaluator was trained on {self.image_shape} images, got {tuple(images.shape[1:])}")
        self.module.eval()
        logits, features = [], []
        for chunk in images.split(batch_size):
            lg, ft = self.module(quantise(chunk.to(self.device, non_blocking=True)))
            logits.append(lg.float().cpu())
            features.append(ft.float().cpu())
        if not logits:
            k = self.num_classes or 0
            return torch.zeros(0, k), torch.zeros(0, self.feature_dim)
        return torch.cat(logits), torch.cat(features)

    def provenance(self) -> dict[str, Any]:
        return {
            "evaluator": self.name,
            "evaluator_hash": self.hash,
            "evaluator_test_accuracy": self.test_accuracy,
            "evaluator_cache": self.cache_status,
            "evaluator_path": self.path,
        }


_MEMORY: dict[tuple[str, str], Evaluator] = {}


def clear_memory_cache() -> None:
    """Forget the evaluators loaded in this process (the disk cache stays)."""
    _MEMORY.clear()


def domain_classifier_record(dataset: Dataset, settings: DomainClassifierSettings) -> dict[str, Any]:
    """Everything that determines the trained domain classifier; its hash is the cache key."""
    return {
        "kind": DOMAIN_CLASSIFIER,
        "version": EVALUATOR_VERSION,
        "dataset_fingerprint": dataset.fingerprint,
        "image_shape": list(dataset.info.image_shape),
        "num_classes": dataset.info.num_classes,
        "preprocessing": PREPROCESSING,
        "architecture": {"name": "DomainClassifierNet", "widths": list(settings.widths),
                         "feature_dim": settings.feature_dim, "dropout": settings.dropout},
        "training": {k: v for k, v in asdict(settings).items()
                     if k not in ("widths", "feature_dim", "dropout", "seed")},
        "seed": settings.seed,
    }


def _fork_rng(device: torch.device):
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def train_domain_classifier(
    dataset: Dataset, settings: DomainClassifierSettings, device: torch.device | str = "cpu",
) -> tuple[DomainClassifierNet, dict[str, Any]]:
    """Train the domain classifier on ``dataset.train`` (all classes) and measure it on ``dataset.test``.

    Deterministic for ``settings.seed`` on a given device (the global RNG state is saved and restored). On the CPU it
    trains with one torch thread whatever the caller's setting, because the cache key does not (and should not) name
    a thread count, and float sums differ between thread counts. Returns the network (eval mode) and facts about the
    run (test accuracy, steps, seconds).
    """
    device = torch.device(device)
    info = dataset.info
    images, labels = dataset.train.images, dataset.train.labels
    if len(images) == 0:
        raise ValueError(f"{info.name}: no training images to train the domain classifier on")
    steps = settings.steps_for(len(images))
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    with _fork_rng(device):
        torch.manual_seed(settings.seed)
        net = DomainClassifierNet(info.image_shape[0], info.num_classes, settings.widths, settings.feature_dim,
                                  settings.dropout).to(device)
        generator = torch.Generator().manual_seed(settings.seed)
        optimiser = torch.optim.Adam(net.parameters(), lr=settings.max_lr / 10)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=settings.max_lr, total_steps=steps)
        x_all, y_all = images.to(device), labels.to(device)  # dataset pixels are already 8-bit levels
        batch = min(settings.batch_size, len(images))
        order, position = torch.randperm(len(images), generator=generator), 0
        net.train()
        for _ in range(steps):
            if position + batch > len(order):
                order, position = torch.randperm(len(images), generator=generator), 0
            index = order[position:position + batch].to(device)
            position += batch
            x = random_affine(x_all[index], generator, settings.rotate_degrees, settings.scale, settings.translate)
            logits, _ = net(x)
            loss = F.cross_entropy(logits, y_all[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    torch.set_num_threads(threads)
    net.eval()
    train_seconds = time.perf_counter() - started
    accuracy = classifier_accuracy(net, dataset.test.images, dataset.test.labels, device)
    facts = {"test_accuracy": accuracy, "train_seconds": round(train_seconds, 3), "steps": steps,
             "final_loss": float(loss.item()), "device": str(device),
             "train_images": len(images), "test_images": len(dataset.test)}
    log.info("trained the domain classifier of %s: test accuracy %.4f in %.1f s", info.name, accuracy, train_seconds)
    return net, facts


@torch.no_grad()
def classifier_accuracy(net: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str) -> float | None:
    if len(images) == 0:
        return None
    net.eval()
    correct = 0
    for x, y in zip(images.split(EXTRACT_BATCH), labels.split(EXTRACT_BATCH)):
        logits, _ = net(quantise(x.to(device)))
        correct += int((logits.argmax(1).cpu() == y).sum())
    return correct / len(images)


def _net_from_state(state: dict[str, Any]) -> DomainClassifierNet:
    arch = state["architecture"]
    net = DomainClassifierNet(arch["in_channels"], arch["num_classes"], tuple(arch["widths"]), arch["feature_dim"],
                              arch["dropout"])
    net.load_state_dict(state["state_dict"])
    return net.eval()


def load_domain_classifier_file(path: str | Path) -> tuple[DomainClassifierNet, dict[str, Any]]:
    """The network in a cached ``domain-<hash>.pt`` and its architecture record (also used by the torch-fidelity
    extractor, which receives the file as ``feature_extractor_weights_path``)."""
    state = read_tensors(Path(path))
    if state is None or "state_dict" not in state:
        raise EvaluatorUnavailableError(f"{path}: not a readable domain classifier file")
    return _net_from_state(state), dict(state["architecture"])


def _weights_match(weights: Path, state: dict[str, Any], meta: dict[str, Any], key: str) -> bool:
    """Whether a cached classifier is the one its sidecar describes: the state's own hash is the key, and the file's
    sha256 is the one recorded when it was trained (entries of earlier versions record none). A mismatch — a file
    replaced or edited — is a damaged entry: retrained, with a warning naming it."""
    import warnings

    from harness.metrics.cache import CacheEntryDamaged

    recorded = meta.get("weights_sha256")
    problem = None
    if state.get("hash") != key:
        problem = f"holds the classifier of hash {str(state.get('hash'))[:12]}, not {key[:12]}"
    elif recorded is not None and _file_hash(weights) != recorded:
        problem = "does not have the sha256 recorded in its sidecar when it was trained (replaced or edited)"
    if problem:
        warnings.warn(f"cache entry {weights}: {problem}; it is trained again", CacheEntryDamaged, stacklevel=3)
    return problem is None


def domain_classifier_paths(key: str, cache_root: str | Path | None = None) -> tuple[Path, Path]:
    folder = cache_dir("evaluators", cache_root)
    return folder / f"domain-{key[:24]}.pt", folder / f"domain-{key[:24]}.json"


def get_domain_classifier(
    dataset: Dataset,
    device: torch.device | str = "cpu",
    *,
    cache_root: str | Path | None = None,
    settings: DomainClassifierSettings | None = None,
) -> Evaluator:
    """The domain classifier of ``dataset``: from memory, else from the disk cache, else trained and cached."""
    settings = settings or DomainClassifierSettings()
    device = torch.device(device)
    record = domain_classifier_record(dataset, settings)
    key = stable_hash(record)
    memo_key = (f"{key}@{cache_dir('evaluators', cache_root)}", str(device))
    if memo_key in _MEMORY:
        evaluator = _MEMORY[memo_key]
        evaluator.cache_status = "memory"
        return evaluator
    weights, sidecar = domain_classifier_paths(key, cache_root)
    status = "disk"
    with file_lock(weights.with_suffix(".lock")):
        state, meta = read_tensors(weights), read_json(sidecar)
        if state is not None and meta is not None and not _weights_match(weights, state, meta, key):
            state = None
        if state is None or meta is None or meta.get("hash") != key:
            net, facts = train_domain_classifier(dataset, settings, device)
            arch = {"in_channels": dataset.info.image_shape[0], "num_classes": dataset.info.num_classes,
                    "widths": list(settings.widths), "feature_dim": settings.feature_dim, "dropout": settings.dropout,
                    "image_shape": list(dataset.info.image_shape)}
            state = {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                     "architecture": arch, "hash": key}
            write_tensors(weights, state)
            meta = {"hash": key, "record": record, "dataset_source": dataset.source,
                    "weights_sha256": _file_hash(weights), **facts}
            write_json(sidecar, meta)
            status = "trained"
    net = _net_from_state(state).to(device)
    net.requires_grad_(False)
    evaluator = Evaluator(
        name=DOMAIN_CLASSIFIER, hash=key, module=net, device=device, image_shape=tuple(dataset.info.image_shape),
        num_classes=dataset.info.num_classes, feature_dim=settings.feature_dim,
        test_accuracy=meta.get("test_accuracy"), cache_status=status, path=str(weights),
        info={k: meta.get(k) for k in ("train_seconds", "steps", "device")},
    )
    _MEMORY[memo_key] = evaluator
    return evaluator


# ---------------------------------------------------------------------------------------------------- InceptionV3


def inception_weights_path(config: EvaluationConfig) -> Path:
    """Where the InceptionV3 weights are expected: ``config.inception_weights`` or the torch hub cache."""
    if config.inception_weights:
        return Path(config.inception_weights).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def check_evaluator(config: EvaluationConfig) -> Path | None:
    """Raise :class:`EvaluatorUnavailableError` when ``config``'s evaluator cannot be built on this machine.

    Call it before any trial runs (suite validation, the CLI). For ``inception_v3`` it returns the weights file it
    will load; for the domain classifier (trained on demand) None. Never downloads anything.
    """
    if config.evaluator != INCEPTION_V3:
        return None
    path = inception_weights_path(config)
    if path.is_file():
        return path
    hub_path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if config.inception_weights:
        where = f"evaluation.inception_weights points to {str(path)!r}, which does not exist"
    else:
        where = f"evaluation.inception_weights is not set and {str(hub_path)!r} does not exist"
    raise EvaluatorUnavailableError(
        f"evaluation.evaluator: inception_v3 needs torch-fidelity's InceptionV3 weights file "
        f"{INCEPTION_WEIGHTS_FILE!r}, but {where}. Download it (on a machine with internet) from "
        f"{INCEPTION_WEIGHTS_URL} and place it at {str(hub_path)!r} (the torch hub cache; $TORCH_HOME moves it) or "
        f"set evaluation.inception_weights to its path; or use evaluator: domain_classifier. Trials never download it."
    )


class _InceptionModule(nn.Module):
    """torch-fidelity's InceptionV3 behind the (float images) → (logits, features) interface: 8-bit RGB input,
    ``logits_unbiased`` (torch-fidelity's default for IS) and the 2048-d pool3 features (its default for FID, KID,
    PRC)."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        features = self.extractor.convert_features_tuple_to_dict(self.extractor(x))
        return features["logits_unbiased"], features["2048"]


_INCEPTION_HASHES: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path) -> str:
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _INCEPTION_HASHES:
        import hashlib

        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _INCEPTION_HASHES[memo] = h.hexdigest()
    return _INCEPTION_HASHES[memo]


def get_inception(config: EvaluationConfig, device: torch.device | str = "cpu") -> Evaluator:
    """torch-fidelity's ``inception-v3-compat`` from the local weights file (see :func:`check_evaluator`)."""
    path = check_evaluator(config)
    assert path is not None
    device = torch.device(device)
    key = stable_hash({"kind": INCEPTION_V3, "version": EVALUATOR_VERSION, "weights_sha256": _file_hash(path)})
    memo_key = (key, str(device))
    if memo_key in _MEMORY:
        evaluator = _MEMORY[memo_key]
        evaluator.cache_status = "memory"
        return evaluator
    from torch_fidelity.utils import create_feature_extractor

    extractor = create_feature_extractor(
        "inception-v3-compat", ["logits_unbiased", "2048"], cuda=False, verbose=False,
        feature_extractor_weights_path=str(path),
    )
    module = _InceptionModule(extractor).to(device).eval()
    evaluator = Evaluator(
        name=INCEPTION_V3, hash=key, module=module, device=device, image_shape=(3, 299, 299), num_classes=None,
        feature_dim=2048, test_accuracy=None, cache_status="file", path=str(path),
        batch_size=64,  # 299×299 inputs: 64 images are ~70 MB per activation map
    )
    _MEMORY[memo_key] = evaluator
    return evaluator


def get_evaluator(
    config: EvaluationConfig,
    dataset: Dataset,
    device: torch.device | str = "cpu",
    *,
    cache_root: str | Path | None = None,
    settings: DomainClassifierSettings | None = None,
) -> Evaluator:
    """The evaluator ``config.evaluator`` names, for ``dataset``."""
    if config.evaluator == INCEPTION_V3:
        return get_inception(config, device)
    return get_domain_classifier(dataset, device, cache_root=cache_root, settings=settings)
