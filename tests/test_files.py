"""What the harness reads back: atomic writes, checked reads, no code from data, damaged files named (harness.files
and its users: results, checkpoints, samples, caches, run.json, tracking.json)."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from harness.files import (
    DamagedFile, load_samples, load_tensors, read_json_object, save_samples, save_tensors, set_aside, write_json,
)
from harness.results import TrialResult
from harness.trial import FileCheckpoint


class _RunsCode:
    """A pickle that runs code when loaded: what a crafted checkpoint.pt in a shared bucket would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def _crafted(path: Path, marker: Path) -> Path:
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, path)
    return path


def test_a_crafted_tensor_file_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "marker"
    crafted = _crafted(tmp_path / "checkpoint.pt", marker)
    with pytest.raises(DamagedFile) as refused:
        load_tensors(crafted, advice="delete it")
    assert not marker.exists()
    message = str(refused.value)
    assert str(crafted) in message and "would run code" in message and message.endswith("delete it")
    torch.load(crafted, weights_only=False)  # the file does carry code: the unchecked load of before ran it
    assert marker.read_text() == "code ran"


def test_a_crafted_checkpoint_is_set_aside_and_the_trial_starts_over(tmp_path, caplog):
    marker = tmp_path / "marker"
    _crafted(tmp_path / "checkpoint.pt", marker)
    with caplog.at_level("WARNING"):
        assert FileCheckpoint(tmp_path).load() is None
    assert not marker.exists()
    [kept] = list(tmp_path.glob("checkpoint.pt.damaged-*"))  # kept for inspection, not deleted
    assert not (tmp_path / "checkpoint.pt").exists()
    assert "checkpoint.pt" in caplog.text and "starts again from step 0" in caplog.text and kept.name in caplog.text


def test_a_checkpoint_round_trips_and_a_state_that_could_not_be_read_back_is_refused_when_saved(tmp_path):
    state = {"model": {"G": {"w": torch.randn(3, 2)}, "rng": torch.get_rng_state(), "step": 7,
                       "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3}]}},
             "losses": [{"step": 0, "d": 0.5}], "evaluations": []}
    checkpoint = FileCheckpoint(tmp_path)
    checkpoint.on_checkpoint(None, state)
    loaded = checkpoint.load()
    assert torch.equal(loaded["model"]["G"]["w"], state["model"]["G"]["w"])
    assert loaded["model"]["opt"]["state"][0]["step"].item() == 3.0 and loaded["losses"] == state["losses"]
    with pytest.raises(TypeError, match=r"state\['model'\]\['sampler'\] is a .*Random"):
        save_tensors(tmp_path / "other.pt", {"model": {"sampler": __import__("random").Random(0)}})
    assert not (tmp_path / "other.pt").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_a_damaged_tensor_file_names_itself(tmp_path, damage):
    path = save_tensors(tmp_path / "state.pt", {"w": torch.randn(100, 100)})
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a torch file"}[damage])
    with pytest.raises(DamagedFile) as damaged:
        load_tensors(path)
    assert damaged.value.path == path and "not a readable torch file" in str(damaged.value)


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize(("text", "problem"), [
    ("", "is empty"), ('{"a": 1', "is not valid JSON"), ("[1, 2]", "holds a JSON list, not an object"),
    ('{"b": 1}', "lacks the field(s) a"),
])
def test_json_reads_name_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(DamagedFile) as damaged:
        read_json_object(path, required=("a",))
    assert str(damaged.value).startswith(f"{path}: {problem}")


def test_set_aside_never_overwrites(tmp_path):
    path = tmp_path / "result.json"
    kept = []
    for content in ("first", "second"):
        path.write_text(content)
        kept.append(set_aside(path, "damaged"))
    assert sorted(p.read_text() for p in kept) == ["first", "second"] and not path.exists()


def _result(**overrides) -> dict:
    data = TrialResult(trial_id="abc", name="dcgan-5shot-seed0", status="ok", spec={}).to_dict()
    return {**data, **overrides}


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda d: json.dumps(d)[:40], "is not valid JSON"),
    (lambda d: json.dumps({**d, "metrics": [1]}), "field(s) of the wrong type: metrics (a list)"),
    (lambda d: json.dumps({**d, "status": "okay"}), "status 'okay' is not one of"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "trial_id"}), "missing field(s) trial_id"),
])
def test_a_damaged_result_names_the_file_and_how_to_recompute_it(tmp_path, damage, problem):
    path = tmp_path / "trials" / "dcgan-5shot-seed0-abc" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(damage(_result()))
    with pytest.raises(DamagedFile) as damaged:
        TrialResult.load(path)
    message = str(damaged.value)
    assert message.startswith(f"{path}: {problem}") and "--recompute dcgan-5shot-seed0-abc" in message


def test_samples_are_checked_on_read(tmp_path):
    images, labels = torch.rand(6, 1, 8, 8), torch.tensor([3, 3, 3, 4, 4, 4])
    loaded = load_samples(save_samples(tmp_path / "samples.pt", images, labels))
    assert loaded["images"].dtype == torch.uint8 and torch.equal(loaded["labels"], labels)
    assert torch.equal(loaded["images"], (images * 255).round().byte())
    for bad, problem in [({"images": torch.zeros(6, 8, 8, dtype=torch.uint8), "labels": labels}, "not a 4-d tensor"),
                         ({"images": torch.zeros(5, 1, 8, 8, dtype=torch.uint8), "labels": labels},
                          "5 images but 6 labels"),
                         ({"images": torch.zeros(6, 1, 8, 8, dtype=torch.uint8), "labels": labels.float()},
                          "labels are not a 1-d integer tensor"),
                         ({"pixels": images}, "is not a samples file")]:
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(DamagedFile, match=problem):
            load_samples(tmp_path / "bad.pt")


def test_a_damaged_cache_entry_is_a_miss_with_a_warning(tmp_path):
    from harness.metrics.cache import CacheEntryDamaged, read_json, read_tensors, write_json, write_tensors

    write_json(tmp_path / "a.json", {"x": 1})
    write_tensors(tmp_path / "a.pt", {"x": torch.ones(2)})
    assert read_json(tmp_path / "a.json") == {"x": 1} and torch.equal(read_tensors(tmp_path / "a.pt")["x"],
                                                                       torch.ones(2))
    (tmp_path / "a.json").write_text("{")
    _crafted(tmp_path / "a.pt", tmp_path / "marker")
    with pytest.warns(CacheEntryDamaged, match=r"a\.json: is not valid JSON.*computed again"):
        assert read_json(tmp_path / "a.json") is None
    with pytest.warns(CacheEntryDamaged, match=r"a\.pt: holds objects other than tensors"):
        assert read_tensors(tmp_path / "a.pt") is None
    assert not (tmp_path / "marker").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_json(tmp_path / "missing.json") is None  # a plain miss is not a warning


def test_a_damaged_tracking_file_is_set_aside_with_a_warning(tmp_path, caplog):
    from harness.tracking.runs import _read_tracking_file, _write_tracking_file

    _write_tracking_file(tmp_path, {"parent_run_id": "r1"})
    assert _read_tracking_file(tmp_path) == {"parent_run_id": "r1"}
    (tmp_path / "tracking.json").write_text('{"parent_run_id": "r')
    with caplog.at_level("WARNING"):
        assert _read_tracking_file(tmp_path) == {}
    assert "tracking.json: is not valid JSON" in caplog.text and "new parent run" in caplog.text
    assert len(list(tmp_path.glob("tracking.json.damaged-*"))) == 1


@pytest.mark.parametrize(("host", "exposed"), [("127.0.0.1", False), ("::1", False), ("localhost", False),
                                               ("0.0.0.0", True), ("10.1.2.3", True), ("myhost", True)])
def test_servers_say_what_binding_beyond_loopback_exposes(host, exposed):
    from harness.tracking.ui import exposure_warning

    warning = exposure_warning(host, "the MLflow UI", "read every run")
    assert (warning is not None) == exposed
    if exposed:
        assert host in warning and "without a password" in warning and "127.0.0.1" in warning


def test_pickle_is_not_used_to_read_back_results(tmp_path):
    """result.json files are JSON: a pickle written in their place is a damaged result, not something to load."""
    path = tmp_path / "t-1" / "result.json"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(_result()))
    with pytest.raises(DamagedFile, match="cannot be read|not valid JSON"):
        TrialResult.load(path)
    assert os.path.exists(path)  # reading never moves or deletes a result


def test_the_sweep_searchers_snapshot_is_read_back_checked(tmp_path):
    """The searcher's own snapshot (Tune calls save/restore) restores a searcher that goes on with the same study;
    one crafted to call anything but the searcher's classes is refused before it runs."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    from harness.executors.sweep import FinalMetricOptunaSearch

    def searcher():
        return FinalMetricOptunaSearch(
            space={"lr": FloatDistribution(1e-4, 1e-2, log=True), "n": IntDistribution(1, 5)}, metric="fid",
            mode="min", study_name="s", storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"),
            sampler=optuna.samplers.TPESampler(seed=3))

    first = searcher()
    for i in range(3):
        first.suggest(f"t{i}")
    first.on_trial_complete("t0", {"fid": 1.0})
    first.save(str(tmp_path / "snapshot.pkl"))
    restored, unchecked = searcher(), searcher()
    restored.restore(str(tmp_path / "snapshot.pkl"))
    unchecked.__setstate__(pickle.loads((tmp_path / "snapshot.pkl").read_bytes()))
    assert set(restored._ot_trials) == {"t0", "t1", "t2"}
    assert restored.suggest("t3") == unchecked.suggest("t4")  # the sampler's state came back as it was saved

    marker = tmp_path / "marker"
    (tmp_path / "crafted.pkl").write_bytes(pickle.dumps({"_ot_trials": {}, "_storage": None,
                                                         "x": _RunsCode(marker)}))
    with pytest.raises(DamagedFile) as refused:
        searcher().restore(str(tmp_path / "crafted.pkl"))
    assert not marker.exists()
    assert "crafted.pkl: asks to load pathlib" in str(refused.value) and "ray/sweep" in str(refused.value)
