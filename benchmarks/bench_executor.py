"""Benchmark: harness efficiency of the Ray Tune executor on a suite's trial list.

The same trials run twice through ``run_ray`` (a fresh local Ray each time, fresh run directories): with 1 worker
(``num_cpus=1``: one trial at a time) and with ``--workers`` (default 2: trials one thread each, side by side).
Printed side by side:

* ``efficiency = wall ÷ (Σ trial compute ÷ workers)``: how close the executor comes to packing the trials' own time
  (``total_s`` in each result.json: fit + sample + evaluate) onto the workers. Goal ≤ 1.1. What is over 1 is Ray's
  start, the driver's data/evaluator preparation, scheduling gaps and the tail where fewer trials than workers remain.
* ``speed-up = wall(1 worker) ÷ wall(N workers)``. Goal ≥ 1.8× for 2 workers on this 2-core machine.

Budgets are scaled down (``--steps``, ``--samples-per-class``) so both passes fit in minutes; the trial list, methods,
widths, metrics and seeds are the suite's. The evaluator is trained (or loaded from the cache) before timing, and each
pass starts from a copy of that cache, so neither pass finds the other's cached reference statistics or accuracy
baselines.

    .venv/bin/python benchmarks/bench_executor.py [suites/fewshot_mnist.yaml] [--steps 100] [--workers 2]
        [--suite-budgets]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.executors.common import prepare  # noqa: E402
from harness.executors.ray_tune import run_ray  # noqa: E402
from harness.metrics.cache import CACHE_ENV, cache_root  # noqa: E402
from harness.suite import expand, load_suite  # noqa: E402


def scaled_specs(suite_file: Path, steps: int | None, samples_per_class: int | None, methods: list[str] | None):
    """The suite's trials, budgets scaled to ``steps`` and ``samples_per_class`` (None: the suite's own)."""
    suite = load_suite(suite_file)
    specs = expand(suite, methods)
    if steps is None:
        return specs
    return [s.model_copy(update={
        "budget": s.budget.model_copy(update={"steps": steps, "checkpoint_every": 0}),
        "evaluation": s.evaluation.model_copy(update={"samples_per_class": samples_per_class}),
    }) for s in specs]


def one_pass(specs, workers: int, warm_cache: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-executor-") as scratch:
        cache = Path(scratch) / "cache"
        shutil.copytree(warm_cache, cache)
        os.environ[CACHE_ENV] = str(cache)  # inherited by the local Ray started below, hence by its workers
        started, started_unix = time.perf_counter(), time.time()
        results = run_ray(specs, Path(scratch) / "run", num_cpus=workers, verbose=0)
        wall = time.perf_counter() - started
        ended_unix = time.time()
    ok = [r for r in results if r.status == "ok"]
    if len(ok) != len(specs):
        raise RuntimeError(f"{len(specs) - len(ok)} trials did not finish ok with {workers} worker(s)")
    compute = sum(r.wall_times["total_s"] for r in ok)
    fit = sum(r.wall_times["fit_s"] for r in ok)
    first = min(r.wall_times["started_at"] for r in ok)
    last = max(r.wall_times["finished_at"] for r in ok)
    return {"workers": workers, "trials": len(ok), "wall_s": wall, "compute_s": compute, "fit_s": fit,
            "efficiency": wall / (compute / workers),
            # Ray start, data and evaluator preparation, first trial process up to run_trial
            "startup_s": first - started_unix,
            # after the last trial: Tune's shutdown, results read back
            "drain_s": ended_unix - last,
            # worker time between trials (process start, imports, scheduling) and idle workers in the tail
            "gaps_s": (last - first) * workers - compute}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", nargs="?", default="suites/fewshot_mnist.yaml", type=Path)
    parser.add_argument("--steps", type=int, default=100, help="budget.steps of every trial (scaled down)")
    parser.add_argument("--samples-per-class", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", default=None, help="comma-separated method labels (default: all)")
    parser.add_argument("--suite-budgets", action="store_true",
                        help="the suite's own budgets and sample counts (ignores --steps, --samples-per-class)")
    args = parser.parse_args()
    if args.suite_budgets:
        args.steps = args.samples_per_class = None
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local Ray, no token file needed

    specs = scaled_specs(args.suite, args.steps, args.samples_per_class,
                         args.methods.split(",") if args.methods else None)
    warm_cache = Path(tempfile.mkdtemp(prefix="bench-executor-cache-"))
    source = cache_root()
    if (source / "evaluators").is_dir():  # reuse a trained evaluator; prepare() trains one if it is not there
        shutil.copytree(source / "evaluators", warm_cache / "evaluators")
    os.environ[CACHE_ENV] = str(warm_cache)
    prepare(specs)  # evaluator trained or loaded once, outside the timed passes
    scale = ("the suite's budgets" if args.steps is None else
             f"{args.steps} steps each, {args.samples_per_class} samples/class")
    print(f"{args.suite}: {len(specs)} trials, {scale}, "
          f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}")
    rows = [one_pass(specs, 1, warm_cache), one_pass(specs, args.workers, warm_cache)]
    shutil.rmtree(warm_cache, ignore_errors=True)
    print(f"{'workers':>7} {'wall s':>8} {'Σ trial s':>10} {'Σ fit s':>8} {'wall ÷ (Σ÷workers)':>19} "
          f"{'startup s':>9} {'drain s':>8} {'gaps+tail worker·s':>18}")
    for r in rows:
        print(f"{r['workers']:>7} {r['wall_s']:>8.1f} {r['compute_s']:>10.1f} {r['fit_s']:>8.1f} "
              f"{r['efficiency']:>19.3f} {r['startup_s']:>9.1f} {r['drain_s']:>8.1f} {r['gaps_s']:>18.1f}")
    one, many = rows
    print(f"speed-up {many['workers']} workers vs 1: {one['wall_s'] / many['wall_s']:.2f}× (goal ≥ 1.8×); "
          f"efficiency with {many['workers']} workers: {many['efficiency']:.3f} (goal ≤ 1.1); per-trial compute "
          f"grows {many['compute_s'] / one['compute_s']:.2f}× when trials share the machine")


if __name__ == "__main__":
    main()
