"""Suite schema, cross-field validation (every error names its file and field) and expansion."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from harness.suite import _SUITE_ADDED, SuiteError, _without_defaults, expand, load_suite, parse_suite, suite_hash

SUITES = Path(__file__).resolve().parents[1] / "suites"

VALID = {
    "name": "unit",
    "dataset": {"name": "mnist", "source": "embedded"},
    "protocol": {"base_classes": [0, 1, 2], "novel_classes": [3, "four"], "shots": [1, 5], "seeds": [0, 1, 2]},
    "methods": [{"name": "dcgan"}, {"name": "cgan", "params": {"width": 16}}],
    "budget": {"steps": 10},
}


def _with(path: str, value, base=VALID):
    """A copy of ``base`` with the dotted ``path`` set to ``value`` (``...=DELETE`` removes the key)."""
    data = copy.deepcopy(base)
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()


def test_valid_suite_expands_to_method_x_shots_x_seed():
    suite = parse_suite(copy.deepcopy(VALID), "unit.yaml")
    trials = expand(suite)
    assert len(trials) == 2 * 2 * 3
    assert [t.method for t in trials[:6]] == ["dcgan"] * 6
    assert trials[0].novel_classes == (3, 4)  # "four" resolved by name
    assert {t.trial_id for t in trials} == {t.trial_id for t in expand(parse_suite(copy.deepcopy(VALID)))}
    assert len({t.trial_id for t in trials}) == len(trials)
    assert trials[0].name == "dcgan-1shot-seed0"


def test_trial_id_changes_with_anything_that_changes_the_computation():
    base = expand(parse_suite(copy.deepcopy(VALID)))[0]
    for path, value in [("budget.steps", 11), ("methods.0.params", {"width": 8}), ("dataset.image_size", 32)]:
        other = expand(parse_suite(_with(path, value)))[0]
        assert other.trial_id != base.trial_id, path


def test_data_full_makes_reference_trials_and_the_default_changes_no_hash():
    plain = parse_suite(copy.deepcopy(VALID))
    explicit = parse_suite(_with("methods.0.data", "few"))
    full = parse_suite(_with("methods.0.data", "full"))
    assert suite_hash(explicit) == suite_hash(plain) != suite_hash(full)
    ids = [t.trial_id for t in expand(plain)]
    assert [t.trial_id for t in expand(explicit)] == ids
    trials = expand(full)
    assert [(t.data, t.reference) for t in trials] == [("full", True)] * 6 + [("few", False)] * 6
    assert not {t.trial_id for t in trials[:6]} & set(ids) and [t.trial_id for t in trials[6:]] == ids[6:]


def test_an_epoch_budget_enters_the_trial_id_and_suite_hash_only_when_set():
    """Budget.epochs came after version 1: unset, the hashes are those of before (the pinned suites below); set, it
    is part of what the trial computes."""
    base = _with("methods.0.budget", {"steps": 4})  # an entry budget without epochs: hashed as before too
    steps = _with("methods.1", {"name": "glico"}, base)
    epochs = _with("methods.1", {"name": "glico", "budget": {"epochs": 2}}, base)
    assert "epochs" not in json.dumps(_without_defaults(parse_suite(steps).model_dump(mode="json"), _SUITE_ADDED))
    assert suite_hash(parse_suite(epochs)) != suite_hash(parse_suite(steps))
    with_epochs, without = expand(parse_suite(epochs)), expand(parse_suite(steps))
    assert [t.budget.epochs for t in with_epochs if t.method == "glico"] == [2] * 6
    assert [a.trial_id == b.trial_id for a, b in zip(with_epochs, without)] == [True] * 6 + [False] * 6


def test_method_budget_override_applies_to_that_method_only():
    data = _with("methods.1.budget", {"steps": 3})
    trials = expand(parse_suite(data))
    assert {t.budget.steps for t in trials if t.method == "cgan"} == {3}
    assert {t.budget.steps for t in trials if t.method == "dcgan"} == {10}


def test_expand_subset_of_methods_and_unknown_label():
    suite = parse_suite(copy.deepcopy(VALID))
    assert {t.method for t in expand(suite, ["cgan"])} == {"cgan"}
    with pytest.raises(SuiteError, match="no method labelled"):
        expand(suite, ["nope"])


MALFORMED = [
    ("unknown top-level key", _with("colour", "red"), "colour", "unknown field"),
    ("missing name", _with("name", DELETE), "name", "required"),
    ("bad name", _with("name", "Bad Name"), "name", "pattern"),
    ("unknown dataset", _with("dataset.name", "mnits"), "dataset.name", "did you mean 'mnist'"),
    ("unknown dataset lists the registered", _with("dataset.name", "cifar"), "dataset.name",
     "registered: celeba, fashion_mnist, image_folder, mnist"),
    ("dataset name not a string", _with("dataset.name", 3), "dataset.name", "a dataset name is a string"),
    ("dataset without name", _with("dataset", {"source": "embedded"}), "dataset.name", "required field is missing"),
    ("dataset not a mapping", _with("dataset", "mnist"), "dataset", "dict"),
    ("unknown dataset key", _with("dataset.colour", 1), "dataset.colour", "unknown field"),
    # each dataset's config has only its own fields: another dataset's field is refused by name
    ("source on non-mnist", _with("dataset", {"name": "fashion_mnist", "source": "embedded"}), "dataset.source",
     "unknown field"),
    ("test_fraction on mnist", _with("dataset.test_fraction", 0.3), "dataset.test_fraction",
     "unknown field of dataset 'mnist' (its fields: name, root, image_size, channels, max_images_per_class, "
     "download, source)"),
    ("download on celeba", _with("dataset", {"name": "celeba", "download": False}), "dataset.download",
     "unknown field"),
    ("image_folder without root", _with("dataset", {"name": "image_folder"}), "dataset.root", "required"),
    ("bad field of the named dataset", _with("dataset.source", "web"), "dataset.source", "'embedded'"),
    ("unsupported image size", _with("dataset.image_size", 48), "dataset.image_size", "28, 32 or 64"),
    ("missing novel classes", _with("protocol.novel_classes", DELETE), "protocol.novel_classes", "required"),
    ("empty shots", _with("protocol.shots", []), "protocol.shots", "at least 1"),
    ("negative shots", _with("protocol.shots", [-1]), "protocol.shots[0]", "greater than 0"),
    ("empty seeds", _with("protocol.seeds", []), "protocol.seeds", "at least 1"),
    ("duplicate seeds", _with("protocol.seeds", [1, 1]), "protocol.seeds", "unique"),
    ("overlapping classes", _with("protocol.novel_classes", [2, 3]), "protocol.novel_classes", "disjoint"),
    ("class out of range", _with("protocol.novel_classes", [12]), "protocol.novel_classes[0]", "12"),
    ("unknown class name", _with("protocol.base_classes", ["sevn"]), "protocol.base_classes[0]", "did you mean"),
    ("too many shots", _with("protocol.shots", [401]), "protocol.shots[0]", "exceed the 400 training images"),
    ("too many eval images", _with("protocol.eval_images_per_class", 101), "protocol.eval_images_per_class", "100"),
    ("no methods", _with("methods", []), "methods", "at least 1"),
    ("unknown method", _with("methods.0.name", "dcgna"), "methods[0].name", "did you mean 'dcgan'"),
    ("unknown method param", _with("methods.0.params", {"widht": 8}), "methods[0].params.widht", "unknown field"),
    ("wrong param type", _with("methods.0.params", {"lr_g": "fast"}), "methods[0].params.lr_g", "number"),
    ("duplicate labels", _with("methods.1", {"name": "dcgan"}), "methods[1].label", "twice"),
    ("bad label", _with("methods.0.label", "a b"), "methods[0].label", "pattern"),
    ("unknown data", _with("methods.0.data", "all"), "methods[0].data", "'few' or 'full'"),
    ("full data no more than the shots", _with("methods.0.data", "full", _with("protocol.shots", [400])),
     "methods[0].data", "no more than the 400 shots for novel class(es) '3': 400"),
    ("missing budget", _with("budget", DELETE), "budget", "required"),
    ("zero steps", _with("budget.steps", 0), "budget.steps", "greater than or equal to 1"),
    ("unknown budget key", _with("budget.epoch", 3), "budget.epoch", "unknown field"),
    ("epochs for a method that counts steps", _with("methods.1.budget", {"epochs": 3}), "methods[1].budget.epochs",
     "'cgan' counts generator steps"),
    ("suite epochs for a method that counts steps", _with("budget.epochs", 3), "budget.epochs",
     "'dcgan' counts generator steps"),
    ("epochs and steps in one entry", _with("methods.1", {"name": "glico", "budget": {"steps": 3, "epochs": 2}}),
     "methods[1].budget.steps", "give one of steps and epochs"),
    ("asha with an epoch budget", _with("sweep", {
        "method": "glico", "metric": "m", "mode": "min", "space": {"lr_g": {"uniform": [0, 1]}},
        "asha": {"grace_period": 2}}, _with("methods.1", {"name": "glico", "budget": {"epochs": 2}})),
     "methods[1].budget.epochs", "ASHA's rungs count steps"),
    ("zero cpu", _with("resources", {"cpu": 0}), "resources.cpu", "greater than 0"),
    ("unknown metric", _with("evaluation", {"metrics": ["fidd"]}), "evaluation.metrics[0]", "unknown metric"),
    ("sweep over a missing label", _with("sweep", {"method": "x", "metric": "m", "mode": "min",
                                                   "space": {"lr_g": {"loguniform": [1e-5, 1e-3]}}}),
     "sweep.method", "not a method label"),
    ("sweep space with two kinds", _with("sweep", {"method": "dcgan", "metric": "m", "mode": "min",
                                                   "space": {"lr_g": {"int": [1, 2], "uniform": [0, 1]}}}),
     "sweep.space.lr_g", "exactly one"),
    ("sweep loguniform at zero", _with("sweep", {"method": "dcgan", "metric": "m", "mode": "min",
                                                 "space": {"lr_g": {"loguniform": [0, 1]}}}),
     "sweep.space.lr_g", "positive"),
    ("sweep over a non-parameter", _with("sweep", {"method": "dcgan", "metric": "m", "mode": "min",
                                                   "space": {"n_c": {"int": [1, 8]}}}),
     "sweep.space.n_c", "not a parameter"),
    ("sweep bad mode", _with("sweep", {"method": "dcgan", "metric": "m", "mode": "low",
                                       "space": {"lr_g": {"uniform": [0, 1]}}}), "sweep.mode", "min"),
    ("asha grace period of the whole budget", _with("sweep", {
        "method": "cgan", "metric": "m", "mode": "min", "space": {"lr_g": {"uniform": [0, 1]}},
        "asha": {"grace_period": 10}}), "sweep.asha.grace_period", "not below the 10 steps"),
    ("asha evaluations sparser than the first rung", _with("sweep", {
        "method": "cgan", "metric": "m", "mode": "min", "space": {"lr_g": {"uniform": [0, 1]}},
        "asha": {"grace_period": 4, "eval_every": 5}}), "sweep.asha.eval_every", "exceeds grace_period"),
    ("asha on a per-class method", _with("sweep", {
        "method": "dcgan", "metric": "m", "mode": "min", "space": {"lr_g": {"uniform": [0, 1]}},
        "asha": {"grace_period": 2}}), "sweep.asha", "needs a conditional method"),
    ("asha reduction factor 1", _with("sweep", {
        "method": "cgan", "metric": "m", "mode": "min", "space": {"lr_g": {"uniform": [0, 1]}},
        "asha": {"grace_period": 2, "reduction_factor": 1}}), "sweep.asha.reduction_factor", "greater than 1"),
]


@pytest.mark.parametrize("data,field,message", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_suite_is_rejected_naming_file_and_field(tmp_path, data, field, message):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    matching = [msg for loc, msg in info.value.problems if loc == field]
    assert matching, f"no problem at {field!r}; got {info.value.problems}"
    assert any(message.lower() in m.lower() for m in matching), matching
    assert all(line.startswith(f"{path}: ") for line in str(info.value).splitlines())


def test_all_cross_field_problems_are_reported_at_once():
    data = _with("methods.0.name", "dcgna", _with("protocol.shots", [401]))
    with pytest.raises(SuiteError) as info:
        parse_suite(data, "x.yaml")
    assert {loc for loc, _ in info.value.problems} >= {"methods[0].name", "protocol.shots[0]"}


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SuiteError, match=r"bad.yaml: invalid YAML: line \d+"):
        load_suite(bad)
    with pytest.raises(SuiteError, match="cannot read"):
        load_suite(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(SuiteError, match="must be a mapping"):
        load_suite(listing)


def test_relative_image_folder_root_is_relative_to_the_suite_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    data = _with("dataset", {"name": "image_folder", "root": "imgs"})
    with pytest.raises(SuiteError) as info:
        parse_suite(data, "s.yaml", base_dir=tmp_path)
    # the folder is empty, so validation fails, but it looked in the right place
    assert str(tmp_path / "imgs") in str(info.value)


REPORT_SUITES = sorted(SUITES.parent.glob("reports/*/suite.yaml"))


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")) + REPORT_SUITES,
                         ids=lambda p: str(p.relative_to(SUITES.parent)))
def test_shipped_suites_validate(path):
    suite = load_suite(path)
    assert expand(suite)
    assert suite_hash(suite) == suite_hash(load_suite(path))


# suite_hash and sha256(",".join(trial ids))[:16] of every shipped suite, computed by the code before each dataset had
# its own config (commit 3b13645, one flat DatasetConfig) and checked equal to today's. Run directories are resumed by
# comparing suite hashes and trial directories are named by trial id: a change here orphans every existing run.
PINNED_HASHES = {
    # WGAN-GP defaults version 2 (bf16 + channels-last, reports/bf16_paired_wgan_gp): the trial ids of the bare
    # wgan_gp entries moved (celeba was 8c3cec6b8b0ac449, fashion 5e12835d1fdcec75, mnist_full ba496683f927fccd;
    # suite hashes did not); the wgan-gp-full references are ADDED_ENTRIES, out of the trial-id hash.
    # MetaCGAN defaults version 4 (fold_output + label_lookup + fused Adam, reports/fast_paths_metacgan): every bare
    # metacgan entry's trial ids moved (suite hashes did not). The validity suite's two metacgan entries, the seed-
    # methods ablation's six and bf16_paired's three write the three settings out as off (what ran): their suite
    # hashes moved too (validity was 08b9b37bbf96 / 441ff39b2cca797b, ablation_seed_methods be82f541698e /
    # 3e92c57cd553c15d, bf16_paired 119a335a004d / df2762271a8fa2d1).
    # CGAN defaults version 2 (bf16 + channels-last + fold_output + label_lookup + fused Adam,
    # reports/bf16_paired_cgan):
    # every bare cgan entry's trial ids moved (suite hashes did not). The published validity suite's cgan entry and
    # every bench_bf16 arm now write out what ran (fp32 or bf16 with those three off): their suite hashes moved too
    # (validity was 8d4d123fb46b / 3c152ce066227a46, bench_bf16 88246848be54 / 8b389c5d9fe3b52f).
    # DCGAN defaults version 2 and MetaCGAN / GLICO defaults version 3 (bf16 + channels-last, issue #16's trial,
    # reports/bf16_paired): the trial ids of every entry that leaves precision or channels_last to the default
    # moved (suite hashes did not: the files did not change), CGAN's and WGAN's did not.
    # MetaCGAN defaults version 2 (encoder_update: generator, chosen by reports/seed_methods_ablation): every bare
    # metacgan entry's trial ids moved, so no run directory reuses a result of the old reading as one of the new.
    # The two published suites (fewshot_mnist_validity: was 23f8d23784e0 / d31d1933a3a8c427; ablation_seed_methods,
    # issue #18, scored on validation: was 20495c0b52a3 / f0a194ca9503fe5e) now write out encoder_update:
    # discriminator, what ran, so the files keep giving their published numbers: their hashes and MetaCGAN ids moved
    # the ASHA sweep record now says it chose on test images (select_on: test); the default suite got validation
    # classes: both suite hashes moved, their trial ids did not. The record's bare `glico` entry (then the long
    # schedule) is now GLICO defaults version 2 (the official schedule): its trial ids moved (were e02cce127cdb2643),
    # so re-running the record no longer passes off the new default's results as the old ones
    "reports/fewshot_mnist_sweep_asha/suite.yaml": ("a9cbb66414f6", "60e2170ab8a34e2e"),
    "suites/ablation_metacgan_nc.yaml": ("9194b33d3976", "98285f6b798f32d0"),
    "suites/bench_bf16.yaml": ("b105915c122e", "139e95c26f8122b8"),
    # the copy/augment baselines and the full-data references joined these four (ADDED_ENTRIES, out of the trial-id
    # hash), and GLICO moved to its official schedule (budget.epochs: 202) with glico-long (and glico-midpoint in the
    # MNIST suites) beside it: the suite hashes and GLICO's trial ids moved, every other trial id did not
    "suites/fewshot_celeba.yaml": ("4fd1c6d507df", "9756ec2cc16cfee2"),
    "suites/fewshot_fashion.yaml": ("7aaeec3f2872", "6fbf5891a22876b9"),
    "suites/fewshot_mnist.yaml": ("e710cbe748b9", "1cfa40a81046d463"),
    "suites/fewshot_mnist_full.yaml": ("9bd116793b19", "c3fb60e091800d8b"),
    # version 1 published as reports/fewshot_mnist_validity with ("21c4adb1d652", "96ea44f10333dc78"), pinned to its
    # defaults as ("b9a2ce29ca22", "8d52353daf72d66b"); version 2 runs every method at the current defaults
    "suites/fewshot_mnist_validity.yaml": ("a9afe7e64623", "74a7b287cfa76c5d"),
    # was ("86c43c762968", "1d5829a6dede8b6c"): its MetaCGAN and GLICO entries now write out precision: fp32,
    # channels_last: false (what ran), so the file keeps giving the published numbers; their ids moved
    "suites/ablation_seed_methods.yaml": ("912d0ce1953f", "d5443a821919ef75"),
    # the bf16 trial (issue #16); every arm writes out precision and channels_last (the defaults moved on its result)
    "suites/bf16_paired.yaml": ("5661f4081475", "eecb17de11330e7e"),
    # the same trial for CGAN, with the slow-spot settings (fold_output, label_lookup, fused Adam) as a third arm
    "suites/bf16_paired_cgan.yaml": ("ecfc68782cc1", "c67fe2d30eab2b86"),
    # MetaCGAN's slow-spot settings (fold_output, label_lookup, fused Adam) against its bf16 + channels-last default
    "suites/fast_paths_metacgan.yaml": ("15600d65dd74", "e734f4f0bc4b6051"),
    # the same trial for WGAN-GP's full-data reference: fp32 vs bf16 + channels-last
    "suites/bf16_paired_wgan_gp.yaml": ("5ca646776dfa", "a992e4ac5ca9e2a2"),
    "suites/smoke.yaml": ("a3c8ef8fd8e0", "038d7dcaa7a65054"),
}


# labels of method entries added to a suite after it was pinned: left out of the trial-id hash, which so shows that
# the trials that were there keep their ids
_BASELINES_AND_REFERENCES = ("copy_shots", "augment_shots", "dcgan-full", "wgan-gp-full")
ADDED_ENTRIES = {suite: _BASELINES_AND_REFERENCES for suite in (
    "suites/fewshot_celeba.yaml", "suites/fewshot_fashion.yaml", "suites/fewshot_mnist.yaml",
    "suites/fewshot_mnist_full.yaml")}


@pytest.mark.parametrize("relative", sorted(PINNED_HASHES))
def test_suite_hash_and_trial_ids_are_pinned(relative):
    import hashlib

    suite = load_suite(SUITES.parent / relative)
    added = ADDED_ENTRIES.get(relative, ())
    assert set(added) <= {m.display for m in suite.methods}
    ids = [t.trial_id for t in expand(suite) if t.label not in added]
    assert (suite_hash(suite), hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]) == PINNED_HASHES[relative]
    if relative == "suites/smoke.yaml":
        assert ids == ["568c53229566", "e7db0260f9c6"]  # dcgan's moved with its defaults version 2 (was e9341e38366c),
        # cgan's with its own (was 5bd5c2f166ad)


def test_every_shipped_suite_is_pinned():
    shipped = {str(p.relative_to(SUITES.parent)) for p in [*SUITES.glob("*.yaml"), *REPORT_SUITES]}
    assert shipped == set(PINNED_HASHES)


def _fashion(dataset=None):
    return _with("protocol.novel_classes", [3, 4], _with("dataset", dataset or {"name": "fashion_mnist"}))


V1_DUMP = {"name": "fashion_mnist", "source": "auto", "root": None, "download": True, "image_size": None,
           "channels": None, "test_fraction": 0.2, "max_images_per_class": None}


def test_version1_dumps_load_with_the_same_trial_id():
    """Run directories, result.json specs and Tune's stored param space hold the flat version-1 dataset dump (every
    field of every dataset); it must still load, and to the same trial."""
    from harness.suite import TrialSpec

    spec = expand(parse_suite(_fashion()))[0]
    dump = spec.model_dump(mode="json")
    assert "source" not in dump["dataset"] and "test_fraction" not in dump["dataset"]  # only its own fields
    assert TrialSpec.model_validate(dump).trial_id == spec.trial_id  # the round trip the Ray executor makes
    legacy = TrialSpec.model_validate({**dump, "dataset": V1_DUMP})
    assert legacy == spec and legacy.trial_id == spec.trial_id
    assert suite_hash(parse_suite(_fashion(V1_DUMP))) == suite_hash(parse_suite(_fashion()))


def test_version1_dump_with_a_foreign_field_set_is_refused():
    with pytest.raises(SuiteError) as info:
        parse_suite(_fashion({**V1_DUMP, "test_fraction": 0.5}), "old.yaml")
    assert [loc for loc, _ in info.value.problems] == ["dataset.test_fraction"]
    # an incomplete dump is a hand-written section: a foreign field is refused even at its old default
    with pytest.raises(SuiteError, match="dataset.test_fraction: unknown field"):
        parse_suite(_fashion({"name": "fashion_mnist", "test_fraction": 0.2}), "new.yaml")


def test_dataset_section_is_the_named_datasets_config():
    from harness.data.readers import FashionMNISTConfig, MNISTConfig

    suite = parse_suite(copy.deepcopy(VALID))
    assert type(suite.dataset) is MNISTConfig and suite.dataset.source == "embedded"
    fashion = parse_suite(_fashion()).dataset
    assert type(fashion) is FashionMNISTConfig and fashion.source == "auto"  # what MLflow's `source` param records


# ---- selection apart from testing (issue #13): validation classes

_SWEEP = {"method": "dcgan", "metric": "fid", "mode": "min", "space": {"lr_g": {"uniform": [0.0001, 0.001]}}}
_SCORED = {"metrics": ["fid"]}


def _problems(data) -> list[tuple[str, str]]:
    try:
        parse_suite(data, "x.yaml")
    except SuiteError as exc:
        return exc.problems
    return []


def test_a_sweep_without_validation_classes_is_refused_unless_it_says_select_on_test():
    scored = _with("evaluation", _SCORED)
    problems = _problems(_with("sweep", _SWEEP, scored))
    assert [loc for loc, _ in problems] == ["protocol.validation_classes"]
    assert "sweep.select_on: test" in problems[0][1]
    assert _problems(_with("sweep", {**_SWEEP, "select_on": "test"}, scored)) == []
    with_validation = _with("protocol.validation_classes", [VALID["protocol"]["base_classes"][-1]],
                            _with("sweep", _SWEEP, scored))
    assert _problems(with_validation) == []


def test_validation_classes_must_be_base_classes_and_leave_one_base_class():
    base, novel = VALID["protocol"]["base_classes"], VALID["protocol"]["novel_classes"]
    problems = _problems(_with("protocol.validation_classes", [base[0], novel[0]]))
    assert [loc for loc, _ in problems] == ["protocol.validation_classes[1]"]
    assert "is not a base class" in problems[0][1]
    problems = _problems(_with("protocol.validation_classes", list(base)))
    assert ("protocol.validation_classes", "every base class is a validation class: at least one must stay a base "
            "class while choosing") in problems


def test_selection_spec_puts_the_validation_classes_in_the_novel_role():
    from harness.suite import selection_spec

    base = VALID["protocol"]["base_classes"]
    data = _with("protocol.validation_classes", [base[-1]], _with("sweep", _SWEEP, _with("evaluation", _SCORED)))
    suite = parse_suite(data, "x.yaml")
    spec = selection_spec(suite, suite.methods[0], suite.protocol.shots[0], suite.protocol.seeds[0])
    assert spec.novel_classes == (base[-1],) and spec.base_classes == tuple(base[:-1])
    assert spec.selection == "validation" and spec.heldout_from == "train"
    assert not set(spec.novel_classes) & {3, 4}
    on_test = parse_suite(_with("sweep", {**_SWEEP, "select_on": "test"}, _with("evaluation", _SCORED)), "x.yaml")
    flagged = selection_spec(on_test, on_test.methods[0], 5, 0)
    assert flagged.selection == "test" and flagged.novel_classes == (3, 4)  # "four" resolves to 4
    # the protocol's own trials do not change: same ids as before the field existed
    plain = parse_suite(_with("evaluation", _SCORED))
    assert expand(suite)[0].selection == "none" and expand(suite)[0].trial_id == expand(plain)[0].trial_id
    assert spec.trial_id != trial_spec_id(suite)


def test_score_on_validation_makes_every_trial_a_selection_trial_of_its_split():
    data = _with("protocol.score_on", "validation", _with(
        "protocol.class_splits", [{"base": [0, 2, 3], "novel": [1, "four"], "validation": [0]}],
        _with("protocol.validation_classes", [2])))
    suite = parse_suite(data, "x.yaml")
    specs = expand(suite)
    assert len(specs) == len(expand(parse_suite(VALID))) * 2
    for spec in specs:
        assert spec.selection == "validation" and spec.heldout_from == "train"
        expected = (2,) if spec.split == 0 else (0,)
        assert spec.novel_classes == expected and expected[0] not in spec.base_classes
        original = (3, 4) if spec.split == 0 else (1, 4)  # the split's novel classes are absent altogether
        assert not set(original) & (set(spec.base_classes) | set(spec.novel_classes))
    # the default (test) keeps the protocol's trials and their ids
    assert [s.trial_id for s in expand(parse_suite(_with("protocol.score_on", "test", VALID)))] == [
        s.trial_id for s in expand(parse_suite(VALID))]


def test_score_on_validation_needs_validation_classes_in_every_split():
    data = _with("protocol.score_on", "validation", _with(
        "protocol.class_splits", [{"base": [0, 2, 3], "novel": [1, "four"]}],
        _with("protocol.validation_classes", [2])))
    assert [loc for loc, _ in _problems(data)] == ["protocol.class_splits[0].validation"]
    bare = _with("protocol.score_on", "validation", VALID)
    assert [loc for loc, _ in _problems(bare)] == ["protocol.validation_classes"]
    assert [loc for loc, _ in _problems(_with("protocol.score_on", "train", VALID))] == ["protocol.score_on"]


def trial_spec_id(suite) -> str:
    from harness.suite import trial_spec

    return trial_spec(suite, suite.methods[0], suite.protocol.shots[0], suite.protocol.seeds[0]).trial_id


# ---- class splits (issue #13): more than one choice of novel classes

def test_random_class_splits_are_deterministic_distinct_and_disjoint():
    from harness.suite import class_partitions

    data = _with("protocol.class_splits", {"random": 3, "novel_count": 2, "seed": 7},
                 _with("protocol.validation_classes", [2]))
    suite = parse_suite(data, "x.yaml")
    partitions = class_partitions(suite)
    assert partitions == class_partitions(parse_suite(data, "x.yaml"))  # the same on any run
    assert partitions[0].base == (0, 1, 2) and partitions[0].novel == (3, 4) and partitions[0].validation == (2,)
    assert len(partitions) == 4 and len({(p.base, p.novel) for p in partitions}) == 4
    for part in partitions:
        assert set(part.base) | set(part.novel) == {0, 1, 2, 3, 4} and not set(part.base) & set(part.novel)
        assert len(part.novel) == 2 and len(part.validation) == 1 and set(part.validation) <= set(part.base)
    other_seed = class_partitions(parse_suite(_with("protocol.class_splits.seed", 8, data), "x.yaml"))
    assert other_seed[1:] != partitions[1:]


def test_trials_are_method_by_split_by_shots_by_seed_and_split_0_keeps_its_ids():
    data = _with("protocol.class_splits", [{"base": [2, 3, "four"], "novel": [0, 1]}])
    suite = parse_suite(data, "x.yaml")
    specs = expand(suite)
    plain = expand(parse_suite(VALID))
    assert len(specs) == 2 * len(plain)  # two partitions
    first = [s for s in specs if s.split == 0]
    assert [s.trial_id for s in first] == [s.trial_id for s in plain]  # the protocol's own trials are unchanged
    second = [s for s in specs if s.split == 1]
    assert all(s.novel_classes == (0, 1) and s.base_classes == (2, 3, 4) for s in second)
    assert second[0].name == "dcgan-1shot-split1-seed0" and first[0].name == "dcgan-1shot-seed0"
    assert len({s.trial_id for s in specs}) == len(specs)
    assert suite_hash(suite) != suite_hash(parse_suite(VALID))


@pytest.mark.parametrize(("split", "field", "message"), [
    ({"base": [0, 1], "novel": [1, 3]}, "protocol.class_splits[0].novel", "also base classes"),
    ({"base": [0, 1], "novel": [3, "nine-ish"]}, "protocol.class_splits[0].novel[1]", "nine-ish"),
    ({"base": [0, 1], "novel": [3], "validation": [3]}, "protocol.class_splits[0].validation[0]", "not a base class"),
])
def test_each_explicit_class_split_is_checked_like_the_protocol(split, field, message):
    problems = _problems(_with("protocol.class_splits", [split]))
    assert any(loc == field and message in msg for loc, msg in problems), problems


def test_random_splits_need_room_for_base_classes():
    problems = _problems(_with("protocol.class_splits", {"random": 2, "novel_count": 5}))
    assert [loc for loc, _ in problems] == ["protocol.class_splits.novel_count"]
    problems = _problems(_with("protocol.class_splits", {"random": 20, "novel_count": 4}))  # only 4 more exist
    assert [loc for loc, _ in problems] == ["protocol.class_splits.random"]


def test_a_changed_method_default_changes_the_ids_of_the_trials_left_to_it_only():
    """GLICO's defaults changed twice (version 2: the schedule; 3: bf16 + channels-last): an entry that leaves a
    changed setting unset means something else than before and gets a new id; one that sets them all keeps its id."""
    from harness.registry import METHODS
    from harness.suite import TrialSpec

    glico = METHODS.get("glico")
    assert glico.defaults_version({}) == 3 and glico.defaults_version({"schedule": "long"}) == 3
    assert glico.defaults_version({"precision": "fp32", "channels_last": False}) == 2
    assert glico.defaults_version({"schedule": "long", "precision": "bf16", "channels_last": True}) == 1
    assert METHODS.get("dcgan").defaults_version({}) == 2 and METHODS.get("cgan").defaults_version({}) == 2
    metacgan = METHODS.get("metacgan")
    assert metacgan.defaults_version({}) == 4
    assert metacgan.defaults_version({"fused_optimizer": False, "fold_output": False, "label_lookup": False}) == 3

    def first(params):
        text = (SUITES / "smoke.yaml").read_text().replace("  - {name: dcgan, params: {width: 16}}\n", "").replace(
            "  - {name: cgan, params: {width: 16}}", f"  - {{name: glico, params: {params}}}")
        return expand(parse_suite(yaml.safe_load(text)))[0]

    bare, pinned = first("{}"), first("{schedule: official, precision: bf16, channels_last: true}")
    assert bare.method_defaults == 3 and pinned.method_defaults == 1
    as_before = bare.model_copy(update={"method_defaults": 2})  # what the bare entry hashed to before the change
    assert bare.trial_id != as_before.trial_id
    assert TrialSpec.model_validate(bare.model_dump(mode="json")).trial_id == bare.trial_id
