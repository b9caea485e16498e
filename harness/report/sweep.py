"""The report's sweep section: the Optuna studies a sweep left under ``<run dir>/sweep/`` (sqlite or journal
storage) — best configuration, every complete trial, trials pruned early, and Optuna's own plots."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

from harness.report.model import Cell, Figure, Row, Section, Table, Text, slug
from harness.report.statistics import fmt

__all__ = ["sweep_section"]


def sweep_section(directory: Path | None) -> Section | None:
    """A "Sweep" section with every study of every Optuna storage under ``directory`` (None: no sweep)."""
    if directory is None:
        return None
    blocks: list[Any] = _selection_blocks(directory)
    for storage_name, storage in _optuna_storages(directory):
        import optuna

        try:
            names = optuna.get_all_study_names(storage)
        except Exception as exc:  # noqa: BLE001 - a broken storage is reported, not fatal
            blocks.append(Text(f"could not read the Optuna storage {storage_name}: {exc}"))
            continue
        for name in names:
            blocks += _study_blocks(optuna.load_study(study_name=name, storage=storage), name)
    return Section("Sweep", blocks) if blocks else None


def _selection_blocks(directory: Path) -> list[Any]:
    """What the sweep's configurations were scored on, from ``best.json`` (sweeps before validation classes did not
    record it, and get no line)."""
    import json

    try:
        best = json.loads((Path(directory) / "best.json").read_text())
    except (OSError, ValueError):
        return []
    if best.get("select_on") == "test":
        return [Text("**Chosen on test images** (`sweep.select_on: test`): every configuration was scored on the "
                     "novel classes' held-out test images, the images the final scores use — the best value is "
                     "optimistic, and results of the chosen configuration are not unseen.")]
    if best.get("select_on") == "validation":
        classes = ", ".join(str(c) for c in best.get("scored_classes") or [])
        return [Text(f"Scored on validation classes {classes}: base classes playing the novel role, on their own "
                     "held-out training images; the novel classes and every test image were unseen while choosing.")]
    return []


def _optuna_storages(directory: Path) -> list[tuple[str, Any]]:
    out = []
    for path in sorted(directory.rglob("*")):
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            out.append((path.name, f"sqlite:///{path.resolve()}"))
        elif path.suffix in (".log", ".journal") or path.name.endswith(".jsonl"):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            out.append((path.name, JournalStorage(JournalFileBackend(str(path)))))
    return out


def _param_cell(value: Any) -> Cell:
    return Cell(fmt(value) if isinstance(value, float) else str(value))


def _study_blocks(study, name: str) -> list[Any]:
    import optuna
    from optuna.visualization import matplotlib as ov

    blocks: list[Any] = []
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    direction = "max" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "min"
    if complete:
        best = study.best_trial
        rows = [Row(k, [_param_cell(v)]) for k, v in best.params.items()]
        rows.append(Row(f"objective ({direction})", [Cell(fmt(best.value), bold=True)]))
        blocks.append(Table(f"sweep-best-{slug(name)}", f"Study `{name}`: best of {len(complete)} complete trials "
                            f"({len(study.trials)} in all)", ["parameter", "value"], rows))
        ranked = sorted(complete, key=lambda t: t.value, reverse=direction == "max")
        names = list(best.params)
        all_rows = [Row(str(t.number), [_param_cell(t.params.get(k, "–")) for k in names]
                        + [Cell(fmt(t.value), bold=t.number == best.number)]) for t in ranked]
        table = Table(f"sweep-all-{slug(name)}", f"Study `{name}`: every complete trial, best first",
                      ["trial", *names, f"objective ({direction})"], all_rows)
        table.collapsed = True
        blocks.append(table)
    else:
        blocks.append(Text(f"Study `{name}`: no complete trial yet ({len(study.trials)} in all)."))
        return blocks
    if pruned:
        blocks.append(_pruned_table(pruned, names, name, direction))
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plots = [("optimisation history", ov.plot_optimization_history),
                 ("parameter importances", ov.plot_param_importances)]
        intermediate = [v for t in study.trials for v in t.intermediate_values.values()]
        if intermediate:
            plots.append(("intermediate values", ov.plot_intermediate_values))
        for title, plot in plots:
            try:
                ax = plot(study)
            except Exception as exc:  # noqa: BLE001 - e.g. too few trials for importances
                blocks.append(Text(f"{title}: not available ({exc})."))
                continue
            if plot is ov.plot_intermediate_values and min(intermediate) > 0:
                ax.set_yscale("log")  # early values of a GAN metric span orders of magnitude
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(7, 3.5)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
            plt.close(fig)
            blocks.append(Figure(f"sweep-{slug(title)}-{slug(name)}", f"{name}: {title}", buffer.getvalue()))
    return blocks


def _pruned_table(pruned: list, names: list[str], study_name: str, direction: str) -> Table:
    """Trials the sweep's scheduler stopped early: how far they got and their last intermediate value (not comparable
    with complete trials' final values, measured after the whole budget)."""
    sign = -1 if direction == "max" else 1
    reached = []  # (trial, last step, value there)
    for trial in pruned:
        step = max(trial.intermediate_values, default=0)
        reached.append((trial, step, trial.intermediate_values.get(step, float("nan"))))
    reached.sort(key=lambda r: (-r[1], sign * r[2]))
    rows = [Row(str(t.number), [_param_cell(t.params.get(k, "–")) for k in names]
                + [Cell(str(step)), Cell(fmt(value))]) for t, step, value in reached]
    table = Table(f"sweep-pruned-{slug(study_name)}", f"Study `{study_name}`: {len(pruned)} trials stopped early "
                  "(pruned), furthest first", ["trial", *names, "steps reached", f"last value ({direction})"], rows)
    table.notes = ["last values were measured after fewer steps than the complete trials' objectives: not comparable."]
    table.collapsed = True
    return table
