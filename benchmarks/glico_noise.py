"""Measurement: does GLICO's noise code ε change its images? Pixel spread across noise draws for fixed codes.

GLICO's generator reads a latent code z and a noise code ε (``methods/glico.py``). If training teaches it to ignore
ε, every image of a code is the same whatever ε is drawn, and the samples' variety comes from the code interpolation
alone. This script fits GLICO on the default protocol (28×28 embedded MNIST, digits 0-4 base, 5-9 novel, 10 shots,
seed 0, batch 64) under several noise and schedule settings and prints, per setting:

* ``noise std``: for every training code z_i (t = 0) and for ``--codes`` interpolated codes as ``sample`` draws them,
  ``--draws`` images G(z, ε_k) with fresh ε_k; the standard deviation over k per pixel, averaged over pixels and
  codes (pixels in [0, 1]);
* ``code std``: the spread the codes themselves make: the per-pixel standard deviation over the codes of one class
  (each with one ε), averaged over pixels and classes: the scale ``noise std`` is compared with;
* ``ratio``: noise std / code std of the interpolated codes; ``rec L1``: mean |G(z_i, 0) − x_i| over the shots.

The header line gives the same per-class spread of the real shots, the scale of a generator that varies as the
shots do.

Settings: ``concat`` (the default: ε concatenated), ``proj`` (official ``--noise_proj``: ε through Linear +
LeakyReLU, then concatenated), ``none`` (``noise_input: official`` without ``noise_proj``: the official default
generator, which takes no ε: its noise std must come out 0, a check of the measurement), each under the official
schedule (``--epochs`` epochs, 202 by default) and ``concat`` also under the long schedule for each of
``--long-steps`` (202 and 1 500 steps by default: the official length and the suites' budget; with 50 codes in
batches of 64 a step is an epoch).

    PYTHONPATH=. python benchmarks/glico_noise.py [--epochs 202] [--long-steps 202,1500] [--draws 16] [--only TEXT]
        [--quick]

Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.api import Budget, FewShotTask, NullHooks  # noqa: E402
from harness.data import dataset_config, load_dataset, make_split  # noqa: E402
from methods.glico import GLICO, GLICOConfig  # noqa: E402

BASE, NOVEL, SHOTS, BATCH = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), 10, 64
SETTINGS: dict[str, dict[str, Any]] = {
    "concat": {},
    "proj": {"noise_proj": True},
    "none": {"noise_input": "official"},
}


@torch.no_grad()
def noise_spread(method: GLICO, z: torch.Tensor, draws: int, generator: torch.Generator) -> float:
    """Mean over codes and pixels of the per-pixel std over ``draws`` images G(z, ε_k) (no ε: G(z) each time)."""
    method.G.eval()
    images = torch.stack([method.G(z, method._noise(len(z), generator, z.device)) for _ in range(draws)])
    return float(images.std(dim=0).mean())


@torch.no_grad()
def code_spread(method: GLICO, z: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> float:
    """Mean over classes and pixels of the per-pixel std over the codes of a class (one ε each)."""
    method.G.eval()
    noise = method._noise(len(z), generator, z.device)
    images = method.G(z, noise)
    return float(torch.stack([images[labels == c].std(dim=0).mean() for c in labels.unique()]).mean())


def measure(task: FewShotTask, params: dict[str, Any], budget: Budget, draws: int, codes: int) -> dict[str, float]:
    method = GLICO(GLICOConfig(**params), task.image_shape, 10, "cpu")
    started = time.perf_counter()
    method.fit(task, budget, NullHooks(log_every=10**9))
    fit_s = time.perf_counter() - started
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor(NOVEL).repeat_interleave(codes // len(NOVEL))
    z_mix, _, _, _ = method.interpolate_codes(labels, g)
    rec = (method.reconstruct() - task.novel.images).abs().mean()
    mixed_noise = noise_spread(method, z_mix, draws, g)
    mixed_codes = code_spread(method, z_mix, labels, g)
    return {
        "steps": method.step, "fit_s": fit_s, "rec_l1": float(rec),
        "noise_std_t0": noise_spread(method, method.codes.detach(), draws, g),
        "noise_std_mix": mixed_noise, "code_std_mix": mixed_codes,
        "ratio": mixed_noise / mixed_codes if mixed_codes else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=202, help="official schedule: epochs (official --epoch 202)")
    parser.add_argument("--long-steps", default="202,1500", help="long schedule: comma-separated step budgets")
    parser.add_argument("--draws", type=int, default=16, help="noise draws per code")
    parser.add_argument("--codes", type=int, default=100, help="interpolated codes (a multiple of 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="run the settings whose label contains this (e.g. 'long 202')")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a check that the script runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs, long_steps, extra = args.epochs, [int(s) for s in args.long_steps.split(",")], {}
    if args.quick:
        epochs, long_steps, extra = 3, [3], {"base_classifier_steps": 5}
    dataset = load_dataset(dataset_config(name="mnist", source="embedded"))
    task = make_split(dataset, BASE, NOVEL, SHOTS, seed=0).task
    runs = [(f"{name}, official {epochs} epochs", {**params, **extra}, Budget(steps=1, epochs=epochs, batch_size=BATCH))
            for name, params in SETTINGS.items()]
    runs += [(f"concat, long {steps} steps", {"schedule": "long", **extra}, Budget(steps=steps, batch_size=BATCH))
             for steps in long_steps]
    shots = task.novel
    real_spread = float(torch.stack([shots.images[shots.labels == c].std(dim=0).mean() for c in NOVEL]).mean())
    print(f"GLICO noise spread: embedded MNIST, {SHOTS} shots of {NOVEL}, seed 0, batch {BATCH}, "
          f"{args.draws} draws, {args.codes} interpolated codes, torch {torch.__version__}, {args.threads} thread(s); "
          f"per-class pixel std of the real shots {real_spread:.4f}")
    print(f"{'setting':<32} {'steps':>6} {'fit s':>7} {'rec L1':>8} {'noise std t=0':>14} {'noise std mix':>14} "
          f"{'code std mix':>13} {'ratio':>7}")
    for label, params, budget in [run for run in runs if args.only in run[0]]:
        r = measure(task, params, budget, args.draws, args.codes)
        print(f"{label:<32} {r['steps']:>6} {r['fit_s']:>7.1f} {r['rec_l1']:>8.4f} {r['noise_std_t0']:>14.5f} "
              f"{r['noise_std_mix']:>14.5f} {r['code_std_mix']:>13.4f} {r['ratio']:>7.4f}", flush=True)


if __name__ == "__main__":
    main()
