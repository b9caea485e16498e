"""The metrics pipeline on the embedded MNIST (no download): evaluator cache, torch-fidelity plugin, reference cache,
class consistency, memorisation, downstream accuracy and an end-to-end ``evaluate``.

Evaluators here are trained with tiny settings (a few seconds); the accuracy target of the default evaluator is
checked by the slow test at the end. Every cache lives in a temporary ``$FEWSHOT_CACHE``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from harness.api import LabeledImages
from harness.data import Dataset, dataset_config, load_dataset, make_split
from harness.metrics import METRICS, evaluate, headline_values
from harness.metrics import accuracy as accuracy_module
from harness.metrics import evaluator as evaluator_module
from harness.metrics import reference as reference_module
from harness.metrics.cache import CACHE_ENV
from harness.metrics.evaluator import DomainClassifierSettings, get_domain_classifier
from harness.metrics.table import HIGHER, LOWER, direction_of, target
from harness.metrics.value import metrics_to_json
from harness.suite import EvaluationConfig, TrialSpec, expand, load_suite

ROOT = Path(__file__).resolve().parents[1]
TINY = DomainClassifierSettings(min_steps=120, max_steps=120, epochs=1)
ALL_METRICS = ["is", "fid", "kid", "prc", "class_consistency", "accuracy", "memorisation"]


def _clear_memory() -> None:
    evaluator_module.clear_memory_cache()
    reference_module.clear_memory_cache()
    accuracy_module.clear_memory_cache()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as a trial with resources.cpu: 1 has: on a busy 2-core machine two threads that wait for
    each other make these small networks many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(root))
        _clear_memory()
        yield root
    _clear_memory()


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset(dataset_config(name="mnist", source="embedded"))


@pytest.fixture(scope="module")
def tiny_mnist(mnist) -> Dataset:
    """200 training and 50 test images of the embedded MNIST (for the cache tests)."""
    index = torch.arange(0, len(mnist.train), 20)
    return dataclasses.replace(mnist, train=mnist.train.subset(index),
                               test=mnist.test.subset(torch.arange(0, len(mnist.test), 20)),
                               fingerprint=mnist.fingerprint + "-every20th")


@pytest.fixture(scope="module")
def evaluator(cache, mnist):
    return get_domain_classifier(mnist, "cpu", settings=TINY)


@pytest.fixture(scope="module")
def smoke_spec() -> TrialSpec:
    """The first trial of suites/smoke.yaml (novel digits 3 and 4, 5 shots, 50 held-out images each)."""
    return expand(load_suite(ROOT / "suites" / "smoke.yaml"))[0]


def _with_evaluation(spec: TrialSpec, **changes) -> TrialSpec:
    return spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update=changes)})


def _split(dataset, spec):
    return make_split(dataset, spec.base_classes, spec.novel_classes, spec.shots, spec.seed,
                      eval_images_per_class=spec.eval_images_per_class)


def _unseen_real(dataset, split, per_class: int) -> LabeledImages:
    """Training images of the novel classes that are not shots (real images the "generator" never saw)."""
    parts = []
    for c in split.task.novel_classes:
        index = torch.nonzero(dataset.train.labels == c).flatten()
        index = index[~torch.isin(index, torch.tensor(split.shot_indices[c]))][:per_class]
        parts.append(dataset.train.subset(index))
    return LabeledImages.concat(parts)


# --------------------------------------------------------------------------------------------- evaluator cache


def test_evaluator_cache_loads_instead_of_training_and_is_keyed_by_the_dataset(cache, tiny_mnist, monkeypatch):
    calls = []
    real_train = evaluator_module.train_domain_classifier

    def spy(*args, **kwargs):
        calls.append(args[0].fingerprint)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(evaluator_module, "train_domain_classifier", spy)
    settings = DomainClassifierSettings(min_steps=20, max_steps=20)
    first = get_domain_classifier(tiny_mnist, "cpu", settings=settings)
    assert first.cache_status == "trained" and len(calls) == 1
    sidecar = json.loads(Path(first.path).with_suffix(".json").read_text())
    assert sidecar["hash"] == first.hash and sidecar["test_accuracy"] == first.test_accuracy
    assert 0.0 <= first.test_accuracy <= 1.0

    evaluator_module.clear_memory_cache()
    second = get_domain_classifier(tiny_mnist, "cpu", settings=settings)
    assert second.cache_status == "disk" and len(calls) == 1  # loaded, not trained
    assert second.hash == first.hash and second.test_accuracy == first.test_accuracy
    images = tiny_mnist.test.images[:16]
    assert torch.equal(first.extract(images)[1], second.extract(images)[1])
    assert get_domain_classifier(tiny_mnist, "cpu", settings=settings).cache_status == "memory"

    from harness.files import load_tensors, save_tensors
    from harness.metrics.cache import CacheEntryDamaged

    assert sidecar["weights_sha256"] == hashlib.sha256(Path(first.path).read_bytes()).hexdigest()
    edited = load_tensors(first.path)  # same hash inside, other weights: a replaced file, not this classifier
    edited["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in edited["state_dict"].items()}
    save_tensors(first.path, edited)
    evaluator_module.clear_memory_cache()
    with pytest.warns(CacheEntryDamaged, match=r"domain-.*\.pt: does not have the sha256 recorded.*trained again"):
        retrained = get_domain_classifier(tiny_mnist, "cpu", settings=settings)
    assert retrained.cache_status == "trained" and len(calls) == 2
    assert torch.equal(retrained.extract(images)[1], first.extract(images)[1])  # deterministic: the same network
    calls.pop()

    changed = dataclasses.replace(tiny_mnist, fingerprint=tiny_mnist.fingerprint + "-changed")
    third = get_domain_classifier(changed, "cpu", settings=settings)
    assert third.cache_status == "trained" and len(calls) == 2 and third.hash != first.hash
    reseeded = get_domain_classifier(tiny_mnist, "cpu", settings=dataclasses.replace(settings, seed=1))
    assert reseeded.cache_status == "trained" and len(calls) == 3


def test_evaluator_training_is_deterministic_for_its_seed(tiny_mnist):
    settings = DomainClassifierSettings(min_steps=15, max_steps=15)
    a, facts_a = evaluator_module.train_domain_classifier(tiny_mnist, settings)
    b, facts_b = evaluator_module.train_domain_classifier(tiny_mnist, settings)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert facts_a["test_accuracy"] == facts_b["test_accuracy"]


def test_torch_fidelity_plugin_matches_the_harness_bridge(evaluator, mnist):
    """calculate_metrics with the registered extractor (uint8 input) gives what evaluate's arrays give."""
    import torch_fidelity

    from harness.metrics.fidelity import DOMAIN_EXTRACTOR, UInt8Images, fid, inception_score, kid, \
        register_domain_extractor

    register_domain_extractor()
    register_domain_extractor()  # idempotent
    gen, real = mnist.train.images[:200], mnist.test.images[:200]
    out = torch_fidelity.calculate_metrics(
        input1=UInt8Images(gen), input2=UInt8Images(real), feature_extractor=DOMAIN_EXTRACTOR,
        feature_extractor_weights_path=evaluator.path, isc=True, fid=True, kid=True, kid_subset_size=100,
        cuda=False, cache=False, save_cpu_ram=True, verbose=False,
    )
    gen_logits, gen_features = evaluator.extract(gen)
    _, real_features = evaluator.extract(real)
    assert out["inception_score_mean"] == pytest.approx(inception_score(gen_logits)[0], rel=1e-4)
    assert out["frechet_inception_distance"] == pytest.approx(fid(gen_features, real_features), rel=1e-3)
    assert out["kernel_inception_distance_mean"] == pytest.approx(kid(gen_features, real_features, 100)[0], rel=1e-3)


# --------------------------------------------------------------------------------------------- end to end


def test_evaluate_end_to_end_on_the_smoke_suite(cache, evaluator, mnist, smoke_spec):
    spec = _with_evaluation(smoke_spec, metrics=ALL_METRICS,
                            accuracy=EvaluationConfig.Accuracy(steps=30, seeds=2, batch_size=32))
    split = _split(mnist, spec)
    g = torch.Generator().manual_seed(0)
    samples = _unseen_real(mnist, split, spec.evaluation.samples_per_class)
    samples = LabeledImages((samples.images + 0.1 * torch.randn(samples.images.shape, generator=g)).clamp(0, 1),
                            samples.labels)
    result = evaluate(spec.evaluation, mnist, split, samples, device=torch.device("cpu"), evaluator_settings=TINY)

    expected = {"is", "is_real", "fid", "fid_real_floor", "kid", "precision", "recall", "f_score", "class_consistency",
                "class_consistency_real", "accuracy", "accuracy_real_only", "accuracy_classic_aug", "memorisation",
                "memorisation_close_share"}
    for c in spec.novel_classes:
        expected |= {f"{k}/class_{c}" for k in ("fid", "fid_real_floor", "kid", "precision", "recall", "f_score",
                                                   "class_consistency", "memorisation", "memorisation_close_share")}
    assert set(result.metrics) == expected
    for key, v in result.metrics.items():
        assert math.isfinite(v.value), key
        assert v.std is None or math.isfinite(v.std), key
        assert v.metric in METRICS and v.direction in (HIGHER, LOWER, target("≈ 1")), key
        assert (v.novel_class is None) == ("/" not in key), key
    json.dumps(metrics_to_json(result.metrics), allow_nan=False)  # what the trial writes
    m = result.metrics
    assert m["is"].std is not None and m["accuracy"].std is not None
    assert m["fid"].direction == LOWER and m["is"].direction == HIGHER
    assert m["memorisation"].direction == target("≈ 1") and m["memorisation_close_share"].direction == LOWER
    assert m["fid_real_floor"].reference and not m["fid"].reference
    assert m["fid_real_floor/class_3"].reference_of == "fid/class_3" and m["is_real"].reference_of == "is"
    assert {k for k, v in m.items() if v.reference} == {"is_real", "fid_real_floor", "class_consistency_real",
                                                        "accuracy_real_only", "accuracy_classic_aug",
                                                        *(f"fid_real_floor/class_{c}" for c in spec.novel_classes)}
    assert set(headline_values(m)) == {"is", "fid", "kid", "precision", "recall", "f_score", "class_consistency",
                                       "accuracy", "memorisation", "memorisation_close_share"}
    assert 1.0 <= result.metrics["is"].value <= 10 + 1e-9  # over the evaluator's 10 classes
    p = result.provenance
    assert p["evaluator"] == "domain_classifier" and p["evaluator_hash"] == evaluator.hash
    assert p["evaluator_test_accuracy"] == evaluator.test_accuracy
    assert p["reference_cache"] in ("miss", "disk", "memory") and p["accuracy_baseline_cache"] == "miss"

    again = evaluate(spec.evaluation, mnist, split, samples, evaluator_settings=TINY)
    assert again.provenance["reference_cache"] == "memory"
    assert again.provenance["accuracy_baseline_cache"] == "memory"
    assert again.metrics == result.metrics  # deterministic

    reference_module.clear_memory_cache()
    accuracy_module.clear_memory_cache()
    third = evaluate(_with_evaluation(spec, metrics=["fid", "accuracy"]).evaluation, mnist, split, samples,
                     evaluator_settings=TINY)
    assert third.provenance["reference_cache"] == "disk"
    assert third.provenance["accuracy_baseline_cache"] == "disk"
    assert third.metrics["fid"] == result.metrics["fid"]
    assert third.metrics["accuracy_real_only"] == result.metrics["accuracy_real_only"]


def test_evaluate_rejects_samples_of_other_classes(cache, evaluator, mnist, smoke_spec):
    spec = _with_evaluation(smoke_spec, metrics=["fid"])
    split = _split(mnist, spec)
    with pytest.raises(ValueError, match="novel classes"):
        evaluate(spec.evaluation, mnist, split, mnist.test.of_class(3), evaluator_settings=TINY)


def test_reference_features_are_extracted_once_per_split(cache, evaluator, mnist, smoke_spec, monkeypatch):
    spec = _with_evaluation(smoke_spec, metrics=["fid", "kid"]).model_copy(update={"seed": 7})  # a new split
    split = _split(mnist, spec)
    extracted = []
    real_extract = evaluator_module.Evaluator.extract

    def spy(self, images, *args, **kwargs):
        extracted.append(len(images))
        return real_extract(self, images, *args, **kwargs)

    monkeypatch.setattr(evaluator_module.Evaluator, "extract", spy)
    samples = _unseen_real(mnist, split, 30)
    first = evaluate(spec.evaluation, mnist, split, samples, evaluator_settings=TINY)
    n_first = len(extracted)
    second = evaluate(spec.evaluation, mnist, split, samples, evaluator_settings=TINY)
    assert n_first == 3  # held-out, shots, samples
    assert extracted[n_first:] == [len(samples)]  # the second trial extracts only its samples
    assert (first.provenance["reference_cache"], second.provenance["reference_cache"]) == ("miss", "memory")
    assert first.metrics == second.metrics


# --------------------------------------------------------------------------------------------- class consistency


def test_class_consistency_of_right_and_wrong_labels(cache, evaluator, mnist, smoke_spec):
    spec = _with_evaluation(smoke_spec, metrics=["class_consistency"])
    split = _split(mnist, spec)
    right = evaluate(spec.evaluation, mnist, split, split.heldout, evaluator_settings=TINY).metrics
    assert right["class_consistency"].value == right["class_consistency_real"].value > 0.8
    swapped = LabeledImages(split.heldout.images, 7 - split.heldout.labels)  # 3 <-> 4
    wrong = evaluate(spec.evaluation, mnist, split, swapped, evaluator_settings=TINY).metrics
    assert wrong["class_consistency"].value < 0.2
    assert wrong["class_consistency/class_3"].value < 0.2


# --------------------------------------------------------------------------------------------- memorisation


def test_memorisation_flags_copied_shots_not_unseen_real_images(cache, evaluator, mnist, smoke_spec):
    spec = _with_evaluation(smoke_spec, metrics=["memorisation"])
    split = _split(mnist, spec)
    g = torch.Generator().manual_seed(1)
    shots = split.task.novel
    reps = 60 // spec.shots
    copies = LabeledImages(
        (shots.images.repeat_interleave(reps, 0) + 0.03 * torch.randn(len(shots) * reps, 1, 28, 28, generator=g))
        .clamp(0, 1), shots.labels.repeat_interleave(reps))
    copied = evaluate(spec.evaluation, mnist, split, copies, evaluator_settings=TINY).metrics
    unseen = evaluate(spec.evaluation, mnist, split, _unseen_real(mnist, split, 60), evaluator_settings=TINY).metrics
    assert copied["memorisation"].value < 0.4, copied["memorisation"]
    assert copied["memorisation_close_share"].value > 0.6
    for c in spec.novel_classes:
        assert copied[f"memorisation/class_{c}"].value < 0.4
    assert 0.7 < unseen["memorisation"].value < 1.4, unseen["memorisation"]
    assert unseen["memorisation_close_share"].value < 0.2


# --------------------------------------------------------------------------------------------- downstream accuracy


def _accuracy_case(mnist, shots: int, settings):
    split = make_split(mnist, [0, 1, 2, 3, 4], [5, 6, 7, 8, 9], shots, 0)
    g = torch.Generator().manual_seed(2)
    noise = LabeledImages(torch.rand(len(split.heldout), 1, 28, 28, generator=g), split.heldout.labels.clone())
    from_test = accuracy_module.downstream_accuracy(split, split.heldout, settings, "mnist")
    from_noise = accuracy_module.downstream_accuracy(split, noise, settings, "mnist")
    return from_test, from_noise


def test_accuracy_uses_the_generated_samples_fast(cache, mnist, monkeypatch):
    runs = []
    real_run = accuracy_module.train_and_test
    monkeypatch.setattr(accuracy_module, "train_and_test", lambda *a, **k: runs.append(k) or real_run(*a, **k))
    settings = EvaluationConfig.Accuracy(steps=80, seeds=1, batch_size=32)
    from_test, from_noise = _accuracy_case(mnist, 1, settings)
    real_only = from_test.real_only[0]
    assert from_test.accuracy[0] > real_only + 0.2, (from_test, real_only)
    assert from_noise.accuracy[0] < real_only + 0.1, (from_noise, real_only)
    assert from_test.baseline_cache == "miss" and from_noise.baseline_cache == "memory"
    assert len(runs) == 4  # 2 baseline runs once per split, 1 run per evaluated sample set
    assert from_noise.real_only == from_test.real_only


def test_classic_augmentation_flips_only_where_they_fit():
    assert not accuracy_module.flips_fit("mnist") and accuracy_module.flips_fit("fashion_mnist")
    assert accuracy_module.flips_fit("mnist", True) and not accuracy_module.flips_fit("celeba", False)


@pytest.mark.slow
def test_accuracy_uses_the_generated_samples_default_settings(cache, mnist):
    from_test, from_noise = _accuracy_case(mnist, 5, EvaluationConfig.Accuracy())
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(from_test.accuracy) > mean(from_test.real_only) + 0.1
    assert mean(from_noise.accuracy) < mean(from_test.real_only) + 0.05


@pytest.mark.slow
def test_default_evaluator_reaches_97_percent_on_embedded_mnist(tmp_path, mnist):
    evaluator = get_domain_classifier(mnist, "cpu", cache_root=tmp_path)
    assert evaluator.cache_status == "trained"
    assert evaluator.test_accuracy >= 0.97


@pytest.mark.slow
def test_run_trial_records_every_metric_with_direction(cache, mnist, smoke_spec, tmp_path):
    """The trial path: default evaluator (trained into the temporary cache), metrics and provenance in result.json."""
    from harness.trial import RESULT_FILE, TrialResult, run_trial, trial_dir_for

    spec = _with_evaluation(smoke_spec, metrics=ALL_METRICS,
                            accuracy=EvaluationConfig.Accuracy(steps=30, seeds=2, batch_size=32))
    run_trial(spec, tmp_path, dataset=mnist, device="cpu")
    stored = TrialResult.load(trial_dir_for(tmp_path, spec) / RESULT_FILE)
    assert stored.status == "ok"
    assert {"fid", "is", "kid", "precision", "class_consistency", "accuracy", "memorisation"} <= set(stored.metrics)
    for key, v in stored.metrics.items():
        assert math.isfinite(v.value) and direction_of(key) is not None and v.direction == direction_of(key), key
    assert stored.provenance["evaluator"] == "domain_classifier"
    assert stored.provenance["evaluator_test_accuracy"] >= 0.97
    assert stored.provenance["reference_cache"] == "miss"


def test_collapse_rule_fires_on_noise_and_not_on_real_images(cache, evaluator, mnist, smoke_spec):
    """The registry's collapse rule on class consistency computed by the (tiny) evaluator: uniform noise labelled
    as the novel classes is collapsed, unseen real images of those classes are not, and a trial without the metric
    is unknown."""
    from harness.metrics.table import collapsed

    spec = _with_evaluation(smoke_spec, metrics=["class_consistency"])
    split = _split(mnist, spec)
    real = _unseen_real(mnist, split, 50)
    g = torch.Generator().manual_seed(0)
    noise = LabeledImages(torch.rand(real.images.shape, generator=g), real.labels)
    n = len(spec.novel_classes)
    real_values = headline_values(evaluate(spec.evaluation, mnist, split, real, evaluator_settings=TINY).metrics)
    noise_values = headline_values(evaluate(spec.evaluation, mnist, split, noise, evaluator_settings=TINY).metrics)
    assert collapsed(real_values, n) is False and real_values["class_consistency"] > 0.8
    assert collapsed(noise_values, n) is True and noise_values["class_consistency"] <= 1.5 / n
    assert collapsed({k: v for k, v in noise_values.items() if not k.startswith("class_consistency")}, n) is None
