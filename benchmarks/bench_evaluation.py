"""Benchmark: evaluation time of one trial's samples, cold vs warm reference cache.

5 000 samples (1 000 per novel class × 5, embedded MNIST, digits 5-9 novel, 5 shots) are evaluated with the domain
evaluator on the metrics that use it (is, fid, kid, prc, class_consistency, memorisation); downstream accuracy is
timed separately (its baselines are the cached part). The "samples" are randomly warped training images — any
images cost the same to evaluate.

    .venv/bin/python benchmarks/bench_evaluation.py [--threads 2] [--repeats 3] [--cache-root DIR]

Columns: ``first in process`` also pays imports (torch-fidelity) and kernel warm-up; ``cold reference`` is a later
trial of a new split (held-out features extracted, reference statistics computed, evaluator loaded from disk);
``warm (memory)`` a further trial of the same split; ``warm (disk)`` the same split in a new process (reference file
read from disk). Goal: ≤ 10 s per 5 000 samples; ≥ 3× from the warm cache.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.api import Budget, LabeledImages  # noqa: E402
from harness.data import DatasetConfigBase, dataset_config, load_dataset, make_split  # noqa: E402
from harness.metrics import accuracy as accuracy_module  # noqa: E402
from harness.metrics import evaluate  # noqa: E402
from harness.metrics import evaluator as evaluator_module  # noqa: E402
from harness.metrics import reference as reference_module  # noqa: E402
from harness.metrics.evaluator import get_domain_classifier, random_affine  # noqa: E402
from harness.suite import EvaluationConfig, ResourcesConfig, TrialSpec  # noqa: E402

METRICS = ["is", "fid", "kid", "prc", "class_consistency", "memorisation"]
BASE, NOVEL, SHOTS, PER_CLASS = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), 5, 1000


def make_spec(dataset_cfg: DatasetConfigBase, metrics: list[str], seed: int) -> TrialSpec:
    return TrialSpec(
        suite="bench", suite_version=1, method="none", label="bench", params={}, dataset=dataset_cfg,
        base_classes=BASE, novel_classes=NOVEL, shots=SHOTS, seed=seed, eval_images_per_class=None,
        base_images_per_class=None, budget=Budget(steps=1),
        evaluation=EvaluationConfig(samples_per_class=PER_CLASS, metrics=metrics), resources=ResourcesConfig(),
    )


def make_samples(dataset) -> LabeledImages:
    g = torch.Generator().manual_seed(0)
    parts = []
    for c in NOVEL:
        pool = dataset.train.of_class(c).images
        index = torch.randint(len(pool), (PER_CLASS,), generator=g)
        images = random_affine(pool[index], g, rotate_degrees=15, scale=0.1, translate=0.08)
        parts.append(LabeledImages(images.clamp(0, 1), torch.full((PER_CLASS,), c, dtype=torch.long)))
    return LabeledImages.concat(parts)


def clear_memory() -> None:
    evaluator_module.clear_memory_cache()
    reference_module.clear_memory_cache()
    accuracy_module.clear_memory_cache()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a trial uses resources.cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each timing (median reported)")
    parser.add_argument("--cache-root", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.cache_root or Path(tempfile.mkdtemp(prefix="bench-evaluation-"))
    refs = root / "references"

    cfg = dataset_config(name="mnist", source="embedded")
    dataset = load_dataset(cfg)
    samples = make_samples(dataset)
    print(f"torch {torch.__version__}, {args.threads} thread(s); {len(samples)} samples "
          f"({PER_CLASS} × {len(NOVEL)} classes); cache {root}")

    seconds, evaluator = timed(lambda: get_domain_classifier(dataset, "cpu", cache_root=root))
    print(f"evaluator: {evaluator.cache_status} in {seconds:.1f} s, test accuracy {evaluator.test_accuracy:.4f} "
          f"(one-off per dataset; cached as {Path(evaluator.path).name})")

    def run(seed: int, metrics: list[str] = METRICS):
        spec = make_spec(cfg, metrics, seed)
        split = make_split(dataset, BASE, NOVEL, SHOTS, seed)
        return timed(lambda: evaluate(spec.evaluation, dataset, split, samples, cache_root=root))

    clear_memory()
    shutil.rmtree(refs, ignore_errors=True)
    first, result = run(seed=100)
    cold, warm, disk = [], [], []
    breakdown = {}
    for r in range(args.repeats):
        clear_memory()
        shutil.rmtree(refs, ignore_errors=True)
        t, res = run(seed=r)  # a new split: reference extracted
        assert res.provenance["reference_cache"] == "miss"
        cold.append(t)
        breakdown["cold"] = res.provenance["metric_seconds"]
        t, res = run(seed=r)  # same split again: reference in memory
        assert res.provenance["reference_cache"] == "memory"
        warm.append(t)
        breakdown["warm"] = res.provenance["metric_seconds"]
        clear_memory()
        t, res = run(seed=r)  # same split in a "new process": reference read from disk
        assert res.provenance["reference_cache"] == "disk"
        disk.append(t)

    med = statistics.median
    print()
    print(f"{'evaluation of 5 000 samples':<34}{'first in process':>18}{'cold reference':>16}{'warm (memory)':>15}"
          f"{'warm (disk)':>13}")
    print(f"{'seconds (median of %d)' % args.repeats:<34}{first:>18.2f}{med(cold):>16.2f}{med(warm):>15.2f}"
          f"{med(disk):>13.2f}")
    print(f"{'speed-up vs cold reference':<34}{'':>18}{'1.00×':>16}{med(cold) / med(warm):>14.2f}×"
          f"{med(cold) / med(disk):>12.2f}×")
    print(f"{'speed-up vs first in process':<34}{'1.00×':>18}{first / med(cold):>15.2f}×{first / med(warm):>14.2f}×"
          f"{first / med(disk):>12.2f}×")
    print()
    stages = [k for k in breakdown["cold"] if k != "total"]
    print(f"{'stage (s)':<20}" + "".join(f"{k:>19}" for k in stages))
    for name in ("cold", "warm"):
        print(f"{name:<20}" + "".join(f"{breakdown[name].get(k, 0.0):>19.3f}" for k in stages))
    print(f"pooled: fid {result.metrics['fid'].value:.2f} (floor {result.metrics['fid_real_floor'].value:.2f}), "
          f"is {result.metrics['is'].value:.2f} (real {result.metrics['is_real'].value:.2f}), "
          f"kid {result.metrics['kid'].value:.4f}, class consistency "
          f"{result.metrics['class_consistency'].value:.3f}")

    if not args.skip_accuracy:
        clear_memory()
        t_cold, res_cold = run(seed=0, metrics=["accuracy"])
        t_warm, res_warm = run(seed=0, metrics=["accuracy"])
        assert res_cold.provenance["accuracy_baseline_cache"] in ("miss", "disk")
        assert res_warm.provenance["accuracy_baseline_cache"] == "memory"
        s = EvaluationConfig().accuracy
        print()
        print(f"downstream accuracy ({s.seeds} seeds × {s.steps} steps; baselines real-only + classic-aug cached):")
        print(f"  baselines computed ({res_cold.provenance['accuracy_baseline_cache']}): {t_cold:.2f} s   "
              f"baselines cached: {t_warm:.2f} s   speed-up {t_cold / t_warm:.2f}×")
        m = res_warm.metrics
        print(f"  accuracy {m['accuracy'].value:.3f} ± {m['accuracy'].std:.3f}, real only "
              f"{m['accuracy_real_only'].value:.3f}, classic aug {m['accuracy_classic_aug'].value:.3f}")
    if args.cache_root is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
