"""NDB / JS (Richardson & Weiss 2018): the z-test and JS on hand-computed shares, the paper's MNIST behaviour on the
embedded MNIST (a subset of the training images: no bin; the same subset without a digit: many), the bins of a split
(class-balanced, held-out training images left out, cached), and the metric end to end."""

from __future__ import annotations

import math

import pytest
import torch

from harness.api import LabeledImages
from harness.data import dataset_config, load_dataset, make_split
from harness.metrics import METRICS, EvaluationConfig, evaluate
from harness.metrics import ndb as ndb_module
from harness.metrics.cache import CACHE_ENV
from harness.metrics.ndb import (
    balanced_index, different_bins, fit_bins, js_divergence, ndb_score, pixel_vectors, training_bins,
)
from harness.metrics.table import LOWER


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        ndb_module.clear_memory_cache()
        yield load_dataset(dataset_config(name="mnist", source="embedded"))
    ndb_module.clear_memory_cache()


def _shares(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_two_proportion_z_test_is_two_tailed_with_the_pooled_share():
    """Shares ½ vs 0.54 of 1 000 images each: pooled share 0.52, z = 0.04 / √(0.52 · 0.48 · 2/1000) = 1.79, two-tailed
    p = 0.073: not significant at 0.05 (one-tailed, p = 0.037, it would be). ½ vs 0.8 of 100: z = 4.45, both bins."""
    assert different_bins(_shares(0.5, 0.5), 1000, _shares(0.54, 0.46), 1000, 0.05) == 0
    assert different_bins(_shares(0.5, 0.5), 1000, _shares(0.54, 0.46), 1000, 0.08) == 2
    assert different_bins(_shares(0.5, 0.5), 100, _shares(0.8, 0.2), 100) == 2
    assert different_bins(_shares(0.5, 0.5, 0.0), 100, _shares(0.5, 0.5, 0.0), 100) == 0  # empty in both: no test


def test_js_divergence_uses_the_natural_log():
    assert js_divergence(_shares(1, 0), _shares(0, 1)) == pytest.approx(math.log(2))
    assert js_divergence(_shares(0.5, 0.5), _shares(1, 0)) == pytest.approx(0.75 * math.log(4 / 3))
    assert js_divergence(_shares(0.2, 0.8), _shares(0.2, 0.8)) == 0.0


def test_balanced_index_takes_the_same_count_of_every_class():
    labels = torch.tensor([3, 3, 3, 4, 4, 3, 4, 3])
    index = balanced_index(labels, (3, 4))
    assert sorted(labels[index].tolist()) == [3, 3, 3, 4, 4, 4]
    assert torch.equal(index, balanced_index(labels, (3, 4)))  # seeded
    with pytest.raises(ValueError, match="class 4 has 3 images, fewer than the 4"):
        balanced_index(labels, (3, 4), per_class=4)


@pytest.fixture(scope="module")
def mnist_bins(mnist):
    """K = 100 bins on the 4 000 embedded training images, all ten digits (the paper's MNIST setting)."""
    return fit_bins(pixel_vectors(mnist.train.images), 100, seed=0)


def test_ndb_of_a_set_against_itself_is_zero_and_a_missing_digit_raises_it(mnist, mnist_bins):
    train = mnist.train
    itself = ndb_score(mnist_bins, pixel_vectors(train.images))
    assert (itself.ndb, itself.js) == (0, 0.0)
    assert mnist_bins.proportions.sum().item() == pytest.approx(1.0) and mnist_bins.count == 4000
    # the paper: a random split of the training images scores NDB 0, JS 0.0014 (here 0, 0.0035: a tenth the images)
    half = train.subset(balanced_index(train.labels, tuple(range(10)), 200, seed=10))
    same = ndb_score(mnist_bins, pixel_vectors(half.images))
    assert same.ndb <= 1 and same.js < 0.006, same
    # without digit 9, bins of 9s are empty: many differ (here 8), and JS is several times larger
    missing = ndb_score(mnist_bins, pixel_vectors(half.images[half.labels != 9]))
    assert missing.ndb >= 5 and missing.js > 3 * same.js, (missing, same)


def test_bins_of_a_split_leave_held_out_training_images_out_and_are_cached(mnist):
    protocol = make_split(mnist, [0, 1, 2], [3, 4], 5, 0, eval_images_per_class=50)
    selection = make_split(mnist, [0, 1, 2], [3, 4], 5, 0, eval_images_per_class=50, heldout_from="train")
    assert protocol.heldout_train_indices == () and len(selection.heldout_train_indices) == 100
    ndb_module.clear_memory_cache()
    first = training_bins(mnist, protocol, 20)
    assert (first.cache_status, first.count) == ("miss", 800)  # 400 training images of each class
    held_out = training_bins(mnist, selection, 20)
    assert (held_out.cache_status, held_out.count) == ("miss", 700)  # 350 each: the held-out 50 are not fitted
    assert training_bins(mnist, protocol, 20).cache_status == "memory"
    ndb_module.clear_memory_cache()
    again = training_bins(mnist, protocol, 20)
    assert again.cache_status == "disk" and torch.equal(again.centres, first.centres)


def test_ndb_metric_end_to_end(mnist):
    spec = METRICS.get("ndb")
    assert not spec.needs_evaluator and spec.key("ndb").direction == LOWER
    assert spec.key("ndb_real").reference_of == "ndb" and spec.key("ndb_js_real").reference_of == "ndb_js"
    split = make_split(mnist, [0, 1, 2], [3, 4], 5, 0, eval_images_per_class=50)
    config = EvaluationConfig(metrics=["ndb"], ndb={"bins": 20})

    def score(samples: LabeledImages) -> dict[str, float]:
        result = evaluate(config, mnist, split, samples)
        assert result.provenance["evaluator"] is None  # no evaluator was built for NDB
        return {k: v.value for k, v in result.metrics.items()}

    real = score(split.heldout)
    assert set(real) == {"ndb", "ndb_js", "ndb_real", "ndb_js_real"}
    assert (real["ndb"], real["ndb_js"]) == (real["ndb_real"], real["ndb_js_real"])
    fours = split.heldout.of_class(4).images
    no_threes = score(LabeledImages(torch.cat([fours, fours]), torch.tensor([3] * len(fours) + [4] * len(fours))))
    assert no_threes["ndb"] >= real["ndb_real"] + 5 and no_threes["ndb_js"] > 3 * real["ndb_js_real"], no_threes
