"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric") from local
files, for the LPIPS variant of the diversity metrics (``lpips_diversity``). The ``lpips`` package is not needed and
nothing is downloaded: its linear-layer file and torchvision's ImageNet backbone file are read from the paths the
evaluation config gives (or their usual places), and a missing file is a validation error naming it — as for the
InceptionV3 evaluator (:func:`harness.metrics.evaluator.check_evaluator`). There is no fallback to another network:
an LPIPS number always comes from the LPIPS network.

The computation is the package's ``LPIPS(net, version='0.1')`` forward: the scaling layer on inputs in [-1, 1], the
backbone's five ReLU outputs, each unit-normalised over channels (eps 1e-10), squared differences weighted per
channel by the linear layer (a 1×1 convolution without bias), averaged over space and summed over the layers. Here
it is evaluated for every pair of two image sets at once: with n the normalised features and w the channel weights,
Σ w (n₁ − n₂)² = Σ w n₁² + Σ w n₂² − 2 Σ w n₁ n₂, so one embedding per image and one weighted Gram matrix per layer
give all the pairs (float64, so that identical images are 0 up to rounding); ``tests/test_diversity.py`` checks it
against the per-pair form on a small random network.

Grey-scale images are repeated to three channels, as torchvision's transforms and the few-shot evaluation code do.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.metrics.evaluator import EvaluatorUnavailableError

if TYPE_CHECKING:
    from harness.metrics.config import EvaluationConfig

LPIPS_FIELD = "evaluation.lpips"
LINEAR_FILES = {"vgg": "vgg.pth", "alex": "alex.pth"}  # lpips/weights/v0.1/<net>.pth in the lpips package
# torchvision's ImageNet weights (models.VGG16_Weights.IMAGENET1K_V1, models.AlexNet_Weights.IMAGENET1K_V1): what
# lpips.pretrained_networks loads, stored by torch.hub as <hub dir>/checkpoints/<file>
BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
# where each of the five tapped ReLUs ends in torchvision's ``.features`` (lpips.pretrained_networks' slices)
STAGE_ENDS = {"vgg": (4, 9, 16, 23, 30), "alex": (2, 5, 8, 10, 12)}
MIN_SIZE = {"vgg": 16, "alex": 31}  # smaller inputs leave a pooling layer without pixels
SHIFT = (-0.030, -0.088, -0.188)  # lpips.ScalingLayer
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
EMBED_BATCH = 64


class Lpips(nn.Module):
    """LPIPS with a given backbone: ``stages`` are applied in turn and each one's output is a compared layer;
    ``weights[l]`` the channel weights of layer l (the linear layer). ``size``: resize inputs to size × size first."""

    def __init__(self, stages: nn.ModuleList, weights: list[Tensor], size: int | None = None) -> None:
        super().__init__()
        if len(stages) != len(weights):
            raise ValueError(f"{len(stages)} stages but {len(weights)} linear layers")
        self.stages = stages
        self.weights = [w.detach().reshape(-1).double().cpu() for w in weights]
        self.size = size
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def prepare(self, images: Tensor) -> Tensor:
        """Images in [0, 1] → the scaled three-channel input of the backbone."""
        x = images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.size is not None and tuple(x.shape[2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return ((x * 2 - 1) - self.shift) / self.scale

    @torch.no_grad()
    def embed(self, images: Tensor) -> list[Tensor]:
        """Per layer, the channel-normalised features of every image (N×C×H×W, float32, on the CPU)."""
        device = self.shift.device
        layers: list[list[Tensor]] = [[] for _ in self.stages]
        for chunk in images.split(EMBED_BATCH):
            x = self.prepare(chunk.to(device))
            for out, stage in zip(layers, self.stages):
                x = stage(x)
                out.append((x / (x.pow(2).sum(1, keepdim=True).sqrt() + EPS)).cpu())
        return [torch.cat(parts) if parts else torch.zeros(0) for parts in layers]

    def pairwise(self, a: list[Tensor], b: list[Tensor]) -> Tensor:
        """LPIPS between every embedded image of ``a`` and every one of ``b`` (len(a[0]) × len(b[0]), float64)."""
        total = torch.zeros(len(a[0]), len(b[0]), dtype=torch.float64)
        for fa, fb, w in zip(a, b, self.weights):
            area = fa.shape[2] * fa.shape[3]
            xa, xb = fa.double().flatten(2), fb.double().flatten(2)  # N×C×HW
            wa, wb = xa * w.view(1, -1, 1), xb * w.view(1, -1, 1)
            own_a, own_b = (wa * xa).flatten(1).sum(1), (wb * xb).flatten(1).sum(1)
            total += (own_a[:, None] + own_b[None, :] - 2 * wa.flatten(1) @ xb.flatten(1).T) / area
        return total.clamp_min_(0.0)


# ------------------------------------------------------------------------------------------------------ files


def default_linear_path(net: str) -> Path | None:
    """The linear-layer file inside an installed ``lpips`` package (found without importing it), else None."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / LINEAR_FILES[net]


def default_backbone_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def lpips_paths(config: EvaluationConfig) -> tuple[Path, Path]:
    """(linear-layer file, backbone file) that ``config.lpips`` names, or raise :class:`EvaluatorUnavailableError`
    (``field`` = ``evaluation.lpips``) naming each missing file and where it is expected. Never downloads."""
    settings = config.lpips
    net = settings.net
    linear = Path(settings.weights).expanduser() if settings.weights else default_linear_path(net)
    backbone = (Path(settings.backbone_weights).expanduser() if settings.backbone_weights
                else default_backbone_path(net))
    problems = []
    if linear is None:
        problems.append(f"evaluation.lpips.weights is not set and no lpips package is installed: set it to the lpips "
                        f"package's linear-layer file {LINEAR_FILES[net]!r} (lpips/weights/v0.1/{LINEAR_FILES[net]})")
    elif not linear.is_file():
        where = "evaluation.lpips.weights points to" if settings.weights else "the lpips package's file"
        problems.append(f"{where} {str(linear)!r}, which does not exist (the lpips package's linear-layer file "
                        f"lpips/weights/v0.1/{LINEAR_FILES[net]})")
    if not backbone.is_file():
        where = ("evaluation.lpips.backbone_weights points to" if settings.backbone_weights
                 else "evaluation.lpips.backbone_weights is not set and the torch hub cache has no")
        problems.append(f"{where} {str(backbone)!r} (torchvision's ImageNet {net} weights {BACKBONE_FILES[net]!r}, "
                        f"https://download.pytorch.org/models/{BACKBONE_FILES[net]})")
    if problems:
        raise EvaluatorUnavailableError(
            f"metric lpips_diversity (LPIPS, net {net!r}) needs two local files, never downloaded: "
            + "; ".join(problems) + ". Copy them there or set the paths; or leave lpips_diversity out.", LPIPS_FIELD)
    return linear, backbone


def check_lpips(config: EvaluationConfig) -> tuple[Path, Path]:
    """:func:`lpips_paths`: the check ``lpips_diversity`` declares (suite validation, before any trial runs)."""
    return lpips_paths(config)


def _read_state(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors all mean "not a weights file"
        raise EvaluatorUnavailableError(f"{path}: not a readable torch weights file ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EvaluatorUnavailableError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def backbone_stages(net: str, backbone: Path) -> nn.ModuleList:
    """torchvision's ``vgg16`` / ``alexnet`` ``.features`` with the weights of ``backbone`` (a whole torchvision
    state dict, or only its ``features.*`` entries), cut into LPIPS's five stages."""
    import torchvision

    with torch.device("meta"):  # the architecture only: no random initialisation of ~100 M weights to overwrite
        features = (torchvision.models.vgg16 if net == "vgg" else torchvision.models.alexnet)(weights=None).features
    features = features.to_empty(device="cpu")
    state = _read_state(backbone)
    wanted = features.state_dict().keys()
    picked = {key: state[name] for key in wanted for name in (f"features.{key}", key) if name in state}
    missing = sorted(set(wanted) - set(picked))
    if missing:
        raise EvaluatorUnavailableError(f"{backbone} is not torchvision's {net} state dict: missing "
                                        f"features.{missing[0]} (and {len(missing) - 1} more)")
    try:
        features.load_state_dict(picked)
    except RuntimeError as exc:  # shapes of another network
        raise EvaluatorUnavailableError(f"{backbone} does not fit torchvision's {net}: {exc}") from None
    starts = (0, *STAGE_ENDS[net][:-1])
    return nn.ModuleList(features[start:end] for start, end in zip(starts, STAGE_ENDS[net]))


def linear_weights(linear: Path, count: int = 5) -> list[Tensor]:
    """The channel weights of the lpips package's file (keys ``lin<l>.model.1.weight``, shape 1×C×1×1)."""
    state = _read_state(linear)
    keys = [f"lin{layer}.model.1.weight" for layer in range(count)]
    absent = [k for k in keys if k not in state]
    if absent:
        raise EvaluatorUnavailableError(f"{linear} is not an lpips linear-layer file: no {absent[0]} (keys: "
                                        f"{', '.join(sorted(state)[:6])})")
    return [state[k].reshape(-1) for k in keys]


_MEMORY: dict[tuple[str, str, str, int | None, str], Lpips] = {}


def load_lpips(config: EvaluationConfig, device: torch.device | str = "cpu") -> Lpips:
    """The LPIPS network ``config.lpips`` describes, from its files (memoised per process), frozen, in eval mode."""
    linear, backbone = lpips_paths(config)
    settings = config.lpips
    key = (settings.net, str(linear.resolve()), str(backbone.resolve()), settings.size, str(device))
    if key not in _MEMORY:
        net = Lpips(backbone_stages(settings.net, backbone), linear_weights(linear), settings.size)
        _MEMORY[key] = net.to(device).eval().requires_grad_(False)
    return _MEMORY[key]


def check_image_size(net: str, size: int) -> None:
    if size < MIN_SIZE[net]:
        raise ValueError(f"LPIPS with net {net!r} needs images of at least {MIN_SIZE[net]} px, these have {size}: "
                         f"set evaluation.lpips.size (e.g. 64)")
