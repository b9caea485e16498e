"""Metric arithmetic against independent numpy/scipy computations, the registry table, typed metric values (their
JSON form, old result files) and the evaluation config.

Nothing here trains a network or loads a dataset: these tests run in well under a second each.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest
import scipy.linalg
import torch

from harness.metrics import METRICS, check_evaluator, headline_values
from harness.metrics.evaluator import INCEPTION_WEIGHTS_FILE, EvaluatorUnavailableError
from harness.metrics.fidelity import FIDELITY_SEED, fid, inception_score, kid, precision_recall
from harness.metrics.memorisation import memorisation, nearest_distances
from harness.metrics.table import HIGHER, LOWER, Key, direction_of, key_spec, register_metric, target
from harness.metrics.value import MetricValue, metrics_from_json
from harness.registry import UnknownNameError
from harness.results import TrialResult
from harness.suite import EvaluationConfig

# ---------------------------------------------------------------------------------------------------- IS


def _numpy_is(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """Salimans et al.: exp(E_x KL(p(y|x) || p(y))) per consecutive split; mean and (population) std."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(p)
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


@pytest.mark.parametrize("k", [2, 5, 10])
def test_is_of_confident_uniform_classifier_is_number_of_classes(k):
    n = k * 10 * 7  # every split of 10 holds every class equally often
    logits = torch.nn.functional.one_hot(torch.arange(n) % k, k).double() * 60.0
    mean, std = inception_score(logits, splits=10, shuffle=False)
    assert mean == pytest.approx(k, abs=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)
    shuffled, _ = inception_score(torch.nn.functional.one_hot(torch.arange(20000) % k, k).double() * 60.0, 10)
    assert shuffled == pytest.approx(k, rel=0.01)  # random splits are balanced up to sampling noise


def test_is_of_identical_predictions_is_one():
    logits = torch.randn(1, 7, generator=torch.Generator().manual_seed(0)).repeat(300, 1)
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_is_equals_independent_numpy_computation():
    logits = torch.randn(1000, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    ours = inception_score(logits, splits=10, shuffle=False)
    assert ours == pytest.approx(_numpy_is(logits.numpy(), 10), rel=1e-10)
    # the default shuffles with torch-fidelity's seed before splitting
    permuted = logits.numpy()[np.random.RandomState(FIDELITY_SEED).permutation(1000)]
    assert inception_score(logits, splits=10) == pytest.approx(_numpy_is(permuted, 10), rel=1e-10)
    assert ours[0] > 1.5  # not a degenerate case


def test_is_caps_splits_at_the_sample_count():
    mean, _ = inception_score(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), splits=10)
    assert math.isfinite(mean)


# ---------------------------------------------------------------------------------------------------- FID


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _features(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + torch.randn(d, generator=g)


def test_fid_of_a_set_against_itself_is_zero():
    a = _features(400, 16, 0)
    assert abs(fid(a, a)) < 1e-6
    assert fid(a, _features(400, 16, 1)) > 1.0  # while two different sets are clearly apart


def test_fid_grows_monotonically_with_noise():
    a = _features(600, 12, 2)
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    values = [fid(a, a + sigma * noise) for sigma in (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)]
    assert values[0] < 1e-6
    assert all(later > earlier for earlier, later in zip(values, values[1:])), values


def test_fid_equals_scipy_frechet_distance():
    a, b = _features(300, 10, 4), _features(250, 10, 5) * 0.7 + 0.3
    expected = _scipy_fid(a.numpy(), b.numpy())
    assert fid(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid(a.float(), b.float()) == pytest.approx(expected, rel=1e-4)


def test_fid_of_fewer_than_two_images_is_nan():
    assert math.isnan(fid(_features(1, 4, 0), _features(10, 4, 1)))


# ---------------------------------------------------------------------------------------------------- KID


def _numpy_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(a, b):
        return (a @ b.T / d + 1) ** 3

    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2)


def test_kid_with_fewer_samples_than_the_subset_size():
    a, b = _features(60, 8, 6).float(), _features(45, 8, 7).float()
    mean, std, size = kid(a, b, subset_size=1000, subsets=20)
    assert size == 45
    assert math.isfinite(mean) and math.isfinite(std)


def test_kid_equals_independent_mmd_and_separates_distributions():
    a, b = _features(50, 8, 8).float(), (_features(50, 8, 9) + 2.0).float()
    mean, std, size = kid(a, b, subset_size=50, subsets=3)  # a subset of all 50 is a permutation: MMD unchanged
    assert size == 50 and std == pytest.approx(0.0, abs=1e-3 * abs(mean))
    assert mean == pytest.approx(_numpy_mmd2_unbiased(a.double().numpy(), b.double().numpy()), rel=1e-3)
    same, _, _ = kid(_features(300, 8, 10).float(), _features(300, 8, 10).float() + 1e-4, 100, 50)
    assert abs(same) < 0.05 * mean


# ---------------------------------------------------------------------------------------------------- PRC


def test_precision_recall_of_identical_and_disjoint_sets():
    a = _features(200, 6, 11).float()
    assert precision_recall(a, a.clone()) == pytest.approx((1.0, 1.0, 1.0))
    far = precision_recall(a + 1e4, a)
    assert far == pytest.approx((0.0, 0.0, 0.0), abs=1e-6)


def test_precision_recall_uses_equal_set_sizes():
    real = _features(100, 6, 12).float()
    collapsed = real[:5].repeat(200, 1)  # 1000 samples on 5 real points: precise, no recall
    p, r, _ = precision_recall(collapsed, real)
    assert p == 1.0 and r < 0.3


# ---------------------------------------------------------------------------------------------------- memorisation


def test_memorisation_ratio_and_close_share():
    g = torch.Generator().manual_seed(13)
    shots = torch.randn(5, 8, generator=g)
    real = torch.randn(400, 8, generator=g)
    copies = shots.repeat(40, 1) + 0.01 * torch.randn(200, 8, generator=g)
    unseen = torch.randn(300, 8, generator=g)
    d_real = nearest_distances(real, shots)
    copied = memorisation(nearest_distances(copies, shots), d_real)
    fresh = memorisation(nearest_distances(unseen, shots), d_real)
    assert copied.ratio < 0.05 and copied.close_share == 1.0
    assert 0.8 < fresh.ratio < 1.25 and fresh.close_share < 0.15


# ---------------------------------------------------------------------------------------------------- registry/config


def test_registry_names_directions_and_descriptions():
    assert set(METRICS.names()) == {"is", "fid", "kid", "prc", "class_consistency", "accuracy", "memorisation",
                                    "diversity", "lpips_diversity", "ndb"}
    lower = {name for name in METRICS.names() if METRICS.get(name).direction == LOWER}
    assert lower == {"fid", "kid", "ndb"}
    memorisation = METRICS.get("memorisation")
    assert memorisation.direction == target("≈ 1") and not memorisation.direction.ranked
    assert memorisation.key("memorisation_close_share").direction == LOWER  # a key's own direction
    for name in METRICS.names():
        spec = METRICS.get(name)
        assert spec.description and spec.keys and spec.name == name and callable(spec.compute)
        for key in spec.keys:  # every reference names a generator key of its own metric
            assert key.reference_of is None or not spec.key(key.reference_of).reference, key
    references = {k.name: (k.reference_of, k.row) for name in METRICS.names() for k in METRICS.get(name).keys
                  if k.reference and name not in ("diversity", "lpips_diversity")}  # test_diversity.py: those
    assert references == {
        "is_real": ("is", "real data (reference)"), "fid_real_floor": ("fid", "real data (reference)"),
        "class_consistency_real": ("class_consistency", "real data (reference)"),
        "accuracy_real_only": ("accuracy", "real data (reference)"),
        "accuracy_classic_aug": ("accuracy", "classic_aug (baseline)"),
        "ndb_real": ("ndb", "real data (reference)"), "ndb_js_real": ("ndb_js", "real data (reference)"),
    }
    assert {n for n in METRICS.names() if not METRICS.get(n).needs_evaluator} == {"accuracy", "lpips_diversity",
                                                                                  "ndb"}
    assert memorisation.describe_keys() == ("memorisation (≈ 1) (+ /class_<c>), memorisation_close_share ↓ "
                                            "(+ /class_<c>)")
    assert METRICS.get("is").describe_keys() == "is ↑, is_real ↑ (reference of is)"
    with pytest.raises(UnknownNameError, match="did you mean 'fid'"):
        METRICS.get("fdi")


def test_key_spec_finds_per_class_keys_from_the_declarations():
    spec, key = key_spec("fid_real_floor/class_12")
    assert (spec.name, key.name, key.reference_of) == ("fid", "fid_real_floor", "fid")
    assert key_spec("is_real/class_3") is None  # is_real is pooled only: no per-class variant is declared
    assert key_spec("accuracy_best") is None and direction_of("accuracy_best") is None
    assert direction_of("memorisation/class_4") == target("≈ 1")


def test_registering_a_metric_checks_its_declarations():
    with pytest.raises(ValueError, match="reference of 'b', which it does not declare"):
        register_metric("bad", "d", Key("a", HIGHER), Key("a_ref", HIGHER, reference_of="b"))
    with pytest.raises(ValueError, match="has no per-class values"):
        register_metric("bad", "d", Key("a", HIGHER), Key("a_ref", HIGHER, per_class=True, reference_of="a"))
    with pytest.raises(ValueError, match="declares a key twice"):
        register_metric("bad", "d", Key("a", HIGHER), Key("a", LOWER))
    with pytest.raises(ValueError, match="already registered"):
        register_metric("fid", "again", Key("fid", LOWER))(lambda ctx: {})
    assert "bad" not in METRICS


def test_measure_takes_direction_and_reference_from_the_declaration():
    fid = METRICS.get("fid")
    key, value = fid.measure("fid_real_floor", 2.5, label=4, n=10)
    assert key == "fid_real_floor/class_4"
    assert value == MetricValue(2.5, "fid", LOWER, novel_class=4, reference=True, reference_of="fid/class_4", n=10)
    with pytest.raises(ValueError, match="not declared per_class"):
        METRICS.get("is").measure("is_real", 1.0, label=3)
    with pytest.raises(KeyError, match="declares no key 'fdi'"):
        fid.measure("fdi", 1.0)


def test_registry_table_and_results_import_no_torch():
    """The report, the CLI and validation read the table in processes that never compute a metric."""
    code = ("import sys, harness.metrics.table, harness.metrics, harness.results, harness.metrics.config; "
            "from harness.metrics.table import METRICS; "
            "print(len(METRICS.names()), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10", "False"]


# ---------------------------------------------------------------------------------------------------- values


def _old_entry(value, higher, metric, *, reference=False, label=None, std=None):
    """A metric value as result.json files stored it before ``reference_of`` existed."""
    return {"value": value, "std": std, "higher_is_better": higher, "metric": metric, "class": label,
            "reference": reference, "n": 20}


def test_metric_value_json_round_trip():
    for value in (MetricValue(1.5, "is", HIGHER, std=0.25, n=100),
                  MetricValue(3.0, "fid", LOWER, novel_class=3, reference=True, reference_of="fid/class_3", n=40),
                  MetricValue(0.9, "memorisation", target("≈ 1"), novel_class=None, n=10)):
        key = {"is": "is", "fid": "fid_real_floor/class_3", "memorisation": "memorisation"}[value.metric]
        stored = json.loads(json.dumps(value.to_json()))
        assert set(stored) == {"value", "std", "higher_is_better", "metric", "class", "reference", "reference_of",
                               "n"}
        assert MetricValue.from_json(key, stored) == value
    assert MetricValue(0.9, "memorisation", target("≈ 1")).to_json()["higher_is_better"] is None


def test_old_format_values_take_reference_of_and_direction_from_the_registry():
    old = {
        "fid_real_floor/class_3": _old_entry(3.0, False, "fid", reference=True, label=3),
        "accuracy_classic_aug": _old_entry(0.6, True, "accuracy", reference=True),
        "memorisation": _old_entry(0.95, True, "memorisation"),  # stored as higher-is-better before the target
        "fid": _old_entry(12.0, True, "fid"),  # a wrong stored flag: the registry says lower is better
        # not registered: the stored flag is all there is, and the name's spelling is not evidence of anything
        "score_real": _old_entry(0.1, False, "score", reference=True),
    }
    values = metrics_from_json(old)
    assert values["fid_real_floor/class_3"].reference_of == "fid/class_3"
    assert values["accuracy_classic_aug"].reference_of == "accuracy"
    assert values["memorisation"].direction == target("≈ 1")
    assert values["fid"].direction == LOWER
    assert values["score_real"].reference and values["score_real"].reference_of is None
    assert values["score_real"].direction == LOWER


def test_bad_metric_values_are_named():
    with pytest.raises(ValueError, match=r"metric 'fid': field 'value' must be a number, got 'x'"):
        MetricValue.from_json("fid", {**_old_entry(1.0, False, "fid"), "value": "x"})
    with pytest.raises(ValueError, match=r"metric 'fid': field 'value' is missing or null"):
        MetricValue.from_json("fid", {"metric": "fid"})
    with pytest.raises(ValueError, match=r"metric 'fid': unknown field\(s\) higher"):
        MetricValue.from_json("fid", {**_old_entry(1.0, False, "fid"), "higher": True})
    with pytest.raises(ValueError, match=r"metric 'fid/class_3': field 'class' must be an integer, got '3'"):
        MetricValue.from_json("fid/class_3", {**_old_entry(1.0, False, "fid"), "class": "3"})
    with pytest.raises(ValueError, match="must be a reference"):
        MetricValue(1.0, "fid", LOWER, reference_of="fid")


def test_trial_result_keeps_the_on_disk_format_and_loads_old_files(tmp_path):
    fid = METRICS.get("fid")
    metrics = dict([fid.measure("fid", 10.0, n=5), fid.measure("fid_real_floor", 2.0, n=5)])
    result = TrialResult("abc", "m-5shot-seed0", "ok", {"label": "m"}, metrics=metrics)
    path = result.write(tmp_path / "new")
    on_disk = json.loads(path.read_text())["metrics"]
    assert on_disk["fid_real_floor"] == {"value": 2.0, "std": None, "higher_is_better": False, "metric": "fid",
                                         "class": None, "reference": True, "reference_of": "fid", "n": 5}
    assert TrialResult.load(path) == result
    old = json.loads(path.read_text())
    for entry in old["metrics"].values():
        del entry["reference_of"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert TrialResult.load(tmp_path / "old.json") == result
    old["metrics"]["fid"]["value"] = None
    (tmp_path / "bad.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"bad.json: metric 'fid': field 'value' is missing or null"):
        TrialResult.load(tmp_path / "bad.json")
    (tmp_path / "extra.json").write_text(json.dumps({**old, "metrics": {}, "colour": "red"}))
    with pytest.raises(ValueError, match=r"extra.json: unknown field\(s\) colour"):
        TrialResult.load(tmp_path / "extra.json")


def test_headline_values_are_pooled_generator_values_in_order():
    metrics = metrics_from_json({
        "kid": _old_entry(0.5, False, "kid"),
        "fid/class_3": _old_entry(11.0, False, "fid", label=3),
        "fid": _old_entry(10.0, False, "fid"),
        "fid_real_floor": _old_entry(2.0, False, "fid", reference=True),
        "is_real": _old_entry(4.0, True, "is", reference=True),
        "memorisation": _old_entry(math.nan, True, "memorisation"),
    })
    headline = headline_values(metrics)
    assert list(headline) == ["kid", "fid", "memorisation"]
    assert headline["kid"] == 0.5 and headline["fid"] == 10.0 and math.isnan(headline["memorisation"])


def test_evaluation_config_defaults_and_strictness():
    cfg = EvaluationConfig()
    assert cfg.evaluator == "domain_classifier" and cfg.inception_weights is None
    assert cfg.kid_subset_size == 1000 and cfg.accuracy.seeds == 3 and cfg.accuracy.generated_fraction == 0.5
    assert EvaluationConfig.model_validate({"accuracy": {"steps": 5}}).accuracy.steps == 5
    with pytest.raises(pydantic.ValidationError):
        EvaluationConfig.model_validate({"accuracy": {"stepz": 5}})
    with pytest.raises(pydantic.ValidationError, match="class_consistency needs evaluator"):
        EvaluationConfig(evaluator="inception_v3", metrics=["fid", "class_consistency"])
    with pytest.raises(pydantic.ValidationError, match="only used with evaluator: inception_v3"):
        EvaluationConfig(inception_weights="/x.pth")
    for model in (EvaluationConfig, EvaluationConfig.Diversity, EvaluationConfig.Lpips, EvaluationConfig.Ndb):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
    assert (cfg.ndb.bins, cfg.ndb.alpha, cfg.lpips.net) == (100, 0.05, "vgg")  # the papers' settings


# ---------------------------------------------------------------------------------------------------- InceptionV3


def test_inception_weights_file_name_matches_torch_fidelity():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert URL_INCEPTION_V3.rsplit("/", 1)[1] == INCEPTION_WEIGHTS_FILE


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub dir, and a download function that fails the test if anything tries to download."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_inception_without_weights_fails_clearly_before_anything_runs(empty_hub, tmp_path):
    cfg = EvaluationConfig(evaluator="inception_v3", metrics=["fid"])
    with pytest.raises(EvaluatorUnavailableError) as info:
        check_evaluator(cfg)
    message = str(info.value)
    assert INCEPTION_WEIGHTS_FILE in message
    assert str(empty_hub / "checkpoints" / INCEPTION_WEIGHTS_FILE) in message
    assert "inception_weights" in message
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(EvaluatorUnavailableError, match="nowhere.pth"):
        check_evaluator(EvaluationConfig(evaluator="inception_v3", inception_weights=str(missing)))


def test_inception_weights_found_in_hub_cache_or_given_path(empty_hub, tmp_path):
    target = empty_hub / "checkpoints" / INCEPTION_WEIGHTS_FILE
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not really weights")
    assert check_evaluator(EvaluationConfig(evaluator="inception_v3")) == target
    given = tmp_path / "my-inception.pth"
    given.write_bytes(b"x")
    assert check_evaluator(EvaluationConfig(evaluator="inception_v3", inception_weights=str(given))) == given
    assert check_evaluator(EvaluationConfig()) is None  # the domain classifier needs no file


def test_kid_equals_torch_fidelity_kid_features_to_metric():
    from torch_fidelity.metric_kid import kid_features_to_metric

    for n1, n2, size in ((300, 120, 100), (80, 200, 1000), (2100, 300, 200)):  # the last: kernel per subset
        a, b = _features(n1, 8, 14), _features(n2, 8, 15) * 0.8 + 0.2
        ours = kid(a, b, subset_size=size, subsets=7, seed=3)
        theirs = kid_features_to_metric(a, b, kid_subset_size=min(size, n1, n2), kid_subsets=7, rng_seed=3,
                                        verbose=False)
        assert ours[0] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-9)
        assert ours[1] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-7)


def _imports_metrics(source: str) -> list[str]:
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("harness.metrics")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("harness.metrics") or (
                    node.module == "harness" and any(a.name == "metrics" for a in node.names)):
                found.append(node.module)
    return found


def test_no_method_imports_the_metrics_or_the_evaluator():
    """The evaluator has seen the novel classes: nothing under methods/ may import harness.metrics."""
    from pathlib import Path

    assert _imports_metrics("from harness.metrics.evaluator import get_evaluator")  # the check itself works
    assert _imports_metrics("from harness import metrics") and _imports_metrics("import harness.metrics")
    offenders = {path.name: found for path in (Path(__file__).resolve().parents[1] / "methods").rglob("*.py")
                 if (found := _imports_metrics(path.read_text()))}
    assert not offenders, offenders
