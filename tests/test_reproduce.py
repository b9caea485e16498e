"""`harness reproduce`: exact match on an unchanged run, a mismatch on an altered record, the statistical fallback
where hardware differs, and the paired test against scipy."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import stats

from harness.reproduce import MIN_PAIRS, ReproduceError, hardware_differences, holm, load_recorded, paired_test
from test_cli import ROOT, harness

RECORDED_FACTS = {"cpu_model": "AMD EPYC", "torch_cpu_capability": "AVX512", "torch_threads": 1,
                  "versions": {"torch": "2.14.1"}, "device": "cpu", "git_commit": "abc", "gpu": "ignored on cpu"}


def test_paired_test_matches_scipys_wilcoxon_and_bootstrap():
    recorded = [10.0, 12.5, 9.0, 11.0, 14.0, 8.5, 10.5, 13.0]
    new = [10.4, 12.0, 9.9, 11.8, 14.1, 9.7, 10.2, 13.9]
    d = np.subtract(new, recorded)
    t = paired_test(recorded, new)
    assert t.n == 8 and t.mean_difference == pytest.approx(d.mean())
    assert t.p_value == pytest.approx(stats.wilcoxon(d).pvalue)
    ci = stats.bootstrap((d,), np.mean, method="percentile", n_resamples=10_000, random_state=0).confidence_interval
    assert t.ci[0] == pytest.approx(ci.low, abs=0.05) and t.ci[1] == pytest.approx(ci.high, abs=0.05)
    assert t.ci[0] < t.mean_difference < t.ci[1]
    assert paired_test(recorded, new).ci == t.ci  # seeded: the same data give the same CI


def test_paired_test_rejects_a_shift_and_says_when_it_cannot():
    base = list(np.linspace(0, 1, 10))
    shifted = paired_test(base, [x + 1 + 0.01 * i for i, x in enumerate(base)])
    assert shifted.p_value < 0.01 and shifted.ci[0] > 0.9
    few = paired_test(base[: MIN_PAIRS - 1], [x + 1 for x in base[: MIN_PAIRS - 1]])
    assert few.p_value is None and not few.can_reject and few.ci == pytest.approx((1.0, 1.0))
    same = paired_test(base, base)
    assert same.p_value == 1.0 and same.ci == (0.0, 0.0)


def test_holm_adjusts_step_down_and_keeps_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_hardware_differences_name_each_fact_and_count_an_unrecorded_one():
    assert hardware_differences(RECORDED_FACTS, {**RECORDED_FACTS, "gpu": "other"}) == []
    changed = {**RECORDED_FACTS, "cpu_model": "Intel Xeon", "versions": {"torch": "2.15.0"}}
    assert hardware_differences(RECORDED_FACTS, changed) == ["cpu_model: AMD EPYC -> Intel Xeon",
                                                             "versions.torch: 2.14.1 -> 2.15.0"]
    old = {k: v for k, v in RECORDED_FACTS.items() if k != "torch_cpu_capability"}
    assert hardware_differences(old, RECORDED_FACTS) == ["torch_cpu_capability: <not recorded> -> AVX512"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The smoke suite, run once in-process: the recorded run every test below reproduces."""
    run_dir = tmp_path_factory.mktemp("recorded") / "run"
    out = harness("run", str(ROOT / "suites" / "smoke.yaml"), "--executor", "inprocess", "--run-dir", str(run_dir),
                  "--no-tracking", "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    return run_dir


def reproduce(source, new_run, *args):
    return harness("reproduce", str(source), "--executor", "inprocess", "--run-dir", str(new_run), "--no-tracking",
                   "--no-progress", *args)


def altered(recorded, tmp_path, **provenance):
    """A copy of the recorded run whose dcgan trial's fid was recorded 1.0 higher (and ``provenance`` set)."""
    copy = tmp_path / "altered"
    shutil.copytree(recorded, copy)
    for path in copy.glob("trials/*/result.json"):
        data = json.loads(path.read_text())
        data["provenance"].update(provenance)
        if data["spec"]["label"] == "dcgan":
            data["metrics"]["fid"]["value"] += 1.0
        path.write_text(json.dumps(data))
    return copy


@pytest.fixture(scope="module")
def reproduced(recorded, tmp_path_factory):
    """The recorded run reproduced once; later reproductions reuse its finished trials (``--run-dir``)."""
    new_run = tmp_path_factory.mktemp("reproduced") / "run"
    return new_run, reproduce(recorded, new_run)


def test_an_unchanged_run_reproduces_bit_identically(reproduced):
    new_run, out = reproduced
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "dcgan-5shot-seed0: exact match; same hardware and versions" in lines
    assert "cgan-5shot-seed0: exact match; same hardware and versions" in lines
    assert lines[-1] == "REPRODUCED (bit-identical)"
    assert len(list(new_run.glob("trials/*/result.json"))) == 2


def test_an_altered_result_on_the_same_hardware_is_not_reproduced(recorded, reproduced, tmp_path):
    out = reproduce(altered(recorded, tmp_path), reproduced[0])
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("dcgan-5shot-seed0: differs: fid ") for line in lines), out.stdout
    assert "cgan-5shot-seed0: exact match; same hardware and versions" in lines
    assert "2 already finished" in out.stdout  # compared with the new run's own trials, none re-run
    assert lines[-1].startswith("NOT REPRODUCED: dcgan-5shot-seed0 differ(s) on the same hardware")


def test_on_other_hardware_only_statistical_agreement_is_checked(recorded, reproduced, tmp_path):
    out = reproduce(altered(recorded, tmp_path, cpu_model="Intel(R) Xeon(R) CPU"), reproduced[0],
                    "--methods", "dcgan", "--seeds", "0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hardware differs: cpu_model: Intel(R) Xeon(R) CPU -> " in out.stdout
    assert not any(line.startswith("cgan-5shot-seed0") for line in out.stdout.splitlines())  # --methods dcgan
    assert "dcgan fid: -1 [-1, -1], 1 pair(s) < 6: the test cannot reject, CI only" in out.stdout
    assert out.stdout.splitlines()[-1] == ("REPRODUCED (statistically: no significant difference on any headline "
                                           "metric)")


def test_a_published_report_folder_is_refused_with_the_run_directory_to_pass():
    with pytest.raises(ReproduceError, match="is a report folder: it holds no trial results") as exc:
        load_recorded(ROOT / "reports" / "fewshot_mnist")
    assert "pass the run directory it was built from: " in str(exc.value)
