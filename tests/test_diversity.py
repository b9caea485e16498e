"""Diversity (within-class and CDC's intra-cluster) on hand-computed distances, LPIPS against its per-pair form on a
small random network and from weights files written here, the missing-weights error, and the metrics end to end on
the embedded MNIST (identical samples, held-out images, near-copies of the shots, unseen real images)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.api import LabeledImages
from harness.data import dataset_config, load_dataset, make_split
from harness.metrics import METRICS, EvaluationConfig, check_evaluator, evaluate
from harness.metrics import evaluator as evaluator_module
from harness.metrics import reference as reference_module
from harness.metrics.cache import CACHE_ENV
from harness.metrics.diversity import euclidean, intra_cluster, mean_pairwise, pixel_vectors
from harness.metrics.evaluator import DomainClassifierSettings, EvaluatorUnavailableError
from harness.metrics.lpips import BACKBONE_FILES, LINEAR_FILES, Lpips, load_lpips
from harness.metrics.table import HIGHER

TINY = DomainClassifierSettings(min_steps=120, max_steps=120, epochs=1)
SPACES = ("features", "pixel")


def _points(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------------------------- definitions


def test_mean_pairwise_counts_each_pair_of_distinct_images_once():
    """{0, 1, 3}: pairs 1, 3, 2, mean 2 (with the zero diagonal counted: 4/3; ordered pairs give the same 2, the
    diagonal does not). Identical images: 0; a single image: no pair."""
    assert mean_pairwise(euclidean(_points(0, 1, 3), _points(0, 1, 3))) == 2.0
    same = _points(5, 5, 5, 5)
    assert mean_pairwise(euclidean(same, same)) == 0.0
    assert math.isnan(mean_pairwise(euclidean(_points(1), _points(1))))


def test_intra_cluster_averages_cluster_means_and_skips_single_members():
    """Shots at 0, 10, 100; images 0, 1, 2 (nearest shot 0: pairs 1, 2, 1, mean 4/3), 9, 13 (shot 10: one pair, 4)
    and 100 (alone at shot 100: no pair, left out). Mean over clusters: (4/3 + 4) / 2 = 8/3. Mutations caught: all
    pairs pooled ((4 + 4) / 4 = 2), the single-member cluster counted as 0 (16/9), clusters by farthest shot."""
    images, shots = _points(0, 1, 2, 9, 13, 100), _points(0, 10, 100)
    assert intra_cluster(euclidean(images, images), euclidean(images, shots)) == pytest.approx(8 / 3)
    assert math.isnan(intra_cluster(euclidean(_points(1), _points(1)), euclidean(_points(1), shots)))


def test_pixel_distances_are_root_mean_square_differences():
    black, white = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    half = torch.cat([torch.zeros(1, 3, 4, 2), torch.ones(1, 3, 4, 2)], dim=3)
    assert euclidean(pixel_vectors(black), pixel_vectors(white)).item() == pytest.approx(1.0)
    assert euclidean(pixel_vectors(black), pixel_vectors(half)).item() == pytest.approx(math.sqrt(0.5))


def test_registry_declares_every_diversity_key_beside_its_real_reference():
    for name, space in (("diversity", "features"), ("diversity", "pixel"), ("lpips_diversity", "lpips")):
        spec = METRICS.get(name)
        for key in (f"diversity_{space}", f"intra_cluster_{space}"):
            assert spec.key(key).direction == HIGHER and spec.key(key).per_class
            assert spec.key(f"{key}_real").reference_of == key and spec.key(f"{key}_real").per_class
    assert METRICS.get("diversity").needs_evaluator and not METRICS.get("lpips_diversity").needs_evaluator


# --------------------------------------------------------------------------------------------- LPIPS


def _direct_lpips(stages: nn.ModuleList, weights: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  prepare) -> float:
    """The lpips package's per-pair forward: normalise each layer over channels, squared difference, 1×1 linear
    layer, spatial mean, sum over layers."""
    fx, fy, total = prepare(x), prepare(y), 0.0
    for stage, w in zip(stages, weights):
        fx, fy = stage(fx), stage(fy)
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        lin = nn.functional.conv2d((nx - ny) ** 2, w.reshape(1, -1, 1, 1).float())
        total += float(lin.mean())
    return total


@pytest.fixture(scope="module")
def tiny_lpips():
    torch.manual_seed(0)
    stages = nn.ModuleList([nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
                            nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())])
    weights = [torch.rand(4), torch.rand(6) - 0.2]  # one negative weight: the Gram form must not assume w ≥ 0
    return Lpips(stages, weights).eval()


def test_lpips_pairs_equal_the_per_pair_computation(tiny_lpips):
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(5, 1, 12, 12, generator=g), torch.rand(3, 1, 12, 12, generator=g)
    pairs = tiny_lpips.pairwise(tiny_lpips.embed(a), tiny_lpips.embed(b))
    assert pairs.shape == (5, 3)
    with torch.no_grad():
        expected = torch.tensor([[_direct_lpips(tiny_lpips.stages, tiny_lpips.weights, x[None], y[None],
                                                tiny_lpips.prepare) for y in b] for x in a], dtype=torch.float64)
    assert torch.allclose(pairs, expected, rtol=1e-5, atol=1e-7), (pairs, expected)
    assert expected.abs().min() > 1e-3  # not a degenerate case
    own = tiny_lpips.pairwise(tiny_lpips.embed(a), tiny_lpips.embed(a))
    assert own.diagonal().abs().max() < 1e-9 and torch.allclose(own, own.T, atol=1e-12)


def _lpips_files(tmp_path, net: str = "alex"):
    """An lpips linear-layer file and a torchvision backbone file (only its ``features.*`` entries) for ``net``,
    both randomly initialised: the files' layout, not trained weights."""
    import torchvision

    torch.manual_seed(2)
    features = (torchvision.models.alexnet if net == "alex" else torchvision.models.vgg16)().features
    backbone = tmp_path / BACKBONE_FILES[net]
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, backbone)
    channels = (64, 192, 384, 256, 256) if net == "alex" else (64, 128, 256, 512, 512)
    linear = tmp_path / LINEAR_FILES[net]
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(channels)}, linear)
    return linear, backbone, features


def test_lpips_loads_the_package_layout_from_files(tmp_path):
    linear, backbone, features = _lpips_files(tmp_path)
    config = EvaluationConfig(metrics=["lpips_diversity"], lpips={"net": "alex", "weights": str(linear),
                                                                   "backbone_weights": str(backbone), "size": 32})
    assert check_evaluator(config) is None  # the domain classifier needs no file; both LPIPS files exist
    net = load_lpips(config)
    assert [len(stage) for stage in net.stages] == [2, 3, 3, 2, 2]  # lpips.pretrained_networks.alexnet's slices
    assert torch.equal(net.stages[0][0].weight, features[0].weight)
    assert net.weights[4].shape == (256,)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 28, 28, generator=g)
    with torch.no_grad():
        direct = _direct_lpips(net.stages, net.weights, x[:1], x[1:], net.prepare)
    assert net.pairwise(net.embed(x[:1]), net.embed(x[1:])).item() == pytest.approx(direct, rel=1e-5)


def test_lpips_without_its_files_fails_validation_naming_them(tmp_path, monkeypatch):
    from harness.suite import environment_problems, load_suite

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    config = EvaluationConfig(metrics=["lpips_diversity"], lpips={"weights": str(tmp_path / "nowhere.pth")})
    with pytest.raises(EvaluatorUnavailableError) as info:
        check_evaluator(config)
    message = str(info.value)
    assert info.value.field == "evaluation.lpips"
    assert "nowhere.pth" in message and str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    suite_file = tmp_path / "lpips.yaml"
    smoke = (Path(__file__).resolve().parents[1] / "suites" / "smoke.yaml").read_text()
    suite_file.write_text(smoke.replace("metrics: [is, fid, kid, class_consistency, memorisation]",
                                        f"metrics: [lpips_diversity], lpips: {{weights: {tmp_path}/x.pth}}"))
    [(field, text)] = environment_problems(load_suite(suite_file))
    assert field == "evaluation.lpips" and "x.pth" in text and "vgg16-397923af.pth" in text


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        evaluator_module.clear_memory_cache()
        reference_module.clear_memory_cache()
        dataset = load_dataset(dataset_config(name="mnist", source="embedded"))
        yield dataset, make_split(dataset, [0, 1, 2], [3, 4], 5, 0, eval_images_per_class=50)
    evaluator_module.clear_memory_cache()
    reference_module.clear_memory_cache()


def _score(mnist, samples: LabeledImages, metrics=("diversity",), **config) -> dict[str, float]:
    dataset, split = mnist
    result = evaluate(EvaluationConfig(metrics=list(metrics), **config), dataset, split, samples,
                      evaluator_settings=TINY)
    return {k: v.value for k, v in result.metrics.items()}


def _unseen(dataset, split, per_class: int) -> LabeledImages:
    parts = []
    for c in split.task.novel_classes:
        index = torch.nonzero(dataset.train.labels == c).flatten()
        index = index[~torch.isin(index, torch.tensor(split.shot_indices[c]))][:per_class]
        parts.append(dataset.train.subset(index))
    return LabeledImages.concat(parts)


def test_diversity_of_identical_samples_is_zero_and_of_held_out_images_is_the_reference(mnist):
    dataset, split = mnist
    real = _score(mnist, split.heldout)
    for space in SPACES:
        for key in (f"diversity_{space}", f"intra_cluster_{space}"):
            for label in ("", "/class_3", "/class_4"):
                assert real[key + label] == real[f"{key}_real{label}"] > 0, key + label
    one = split.heldout.of_class(3).images[:1]
    identical = LabeledImages(torch.cat([one.repeat(20, 1, 1, 1), split.heldout.of_class(4).images[:1].repeat(20, 1,
                                                                                                            1, 1)]),
                              torch.tensor([3] * 20 + [4] * 20))
    same = _score(mnist, identical)
    for space in SPACES:
        assert same[f"diversity_{space}"] == pytest.approx(0, abs=1e-6)
        assert same[f"intra_cluster_{space}"] == pytest.approx(0, abs=1e-6)
        assert same[f"diversity_{space}_real"] == real[f"diversity_{space}_real"]  # the reference is the real data's


def test_intra_cluster_diversity_is_low_for_copies_of_the_shots_and_near_real_for_unseen_images(mnist):
    dataset, split = mnist
    g = torch.Generator().manual_seed(0)
    shots = split.task.novel
    copies = LabeledImages((shots.images.repeat_interleave(10, 0)
                            + 0.03 * torch.randn(len(shots) * 10, 1, 28, 28, generator=g)).clamp(0, 1),
                           shots.labels.repeat_interleave(10))
    copied, unseen = _score(mnist, copies), _score(mnist, _unseen(dataset, split, 50))
    for space in SPACES:
        real = copied[f"intra_cluster_{space}_real"]
        assert copied[f"intra_cluster_{space}"] < 0.25 * real, (space, copied[f"intra_cluster_{space}"], real)
        assert 0.8 * real < unseen[f"intra_cluster_{space}"] < 1.25 * real, (space, unseen)
        # overall diversity misses part of the copying: copies of different shots are far apart
        assert copied[f"diversity_{space}"] > 2 * copied[f"intra_cluster_{space}"]


def test_lpips_diversity_end_to_end_from_files(mnist, tmp_path):
    linear, backbone, _ = _lpips_files(tmp_path)
    settings = {"net": "alex", "weights": str(linear), "backbone_weights": str(backbone), "size": 32,
                "images_per_class": 20}
    dataset, split = mnist
    real = _score(mnist, split.heldout, ("lpips_diversity",), lpips=settings)
    assert real["diversity_lpips"] == real["diversity_lpips_real"] > 0
    assert real["intra_cluster_lpips/class_4"] == real["intra_cluster_lpips_real/class_4"]
    repeated = LabeledImages(split.heldout.images[:1].repeat(10, 1, 1, 1), torch.tensor([3] * 5 + [4] * 5))
    assert _score(mnist, repeated, ("lpips_diversity",), lpips=settings)["diversity_lpips"] == \
        pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 31 px"):
        _score(mnist, split.heldout, ("lpips_diversity",), lpips={**settings, "size": None})
    with pytest.raises(EvaluatorUnavailableError, match="not torchvision's vgg"):
        _score(mnist, split.heldout, ("lpips_diversity",), lpips={**settings, "net": "vgg"})
    with pytest.raises(EvaluatorUnavailableError, match="missing.pth"):  # evaluate refuses: never another network
        _score(mnist, split.heldout, ("lpips_diversity",), lpips={**settings, "weights": str(tmp_path / "missing.pth")})
