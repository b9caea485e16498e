"""The report builder: :class:`ReportData` (two DataFrames) → sections of tables, figures and image grids.

Content, per shots setting: methods × metrics as mean ± 95 % CI over (class split, seed) trials (Student t; n = 1
has no interval and says so), each key marked with its registry direction (↑/↓) or target (≈ 1, never ranked), and
each method's collapse rate (the registry's collapse rules, :func:`harness.metrics.table.collapsed`); a method bold,
and named in the "best (paired)" row, only where it beats every other method in paired comparisons over (class
split, seed) (:func:`harness.report.statistics.compare`), "tied" otherwise — no winner inside the noise; a matrix of
the paired differences per ranked headline metric; reference rows — values the registry declares as the reference
of a generator key (real-data IS ceiling, real-vs-real FID floor, the real-only and classic-augmentation accuracy
baselines) — under the methods, in that key's column; oracle references (``data: full`` entries, trained on every
training image of the novel classes) as rows of their own under those, never ranked, never compared, never "best";
beside memorisation, whether each method's FID beats ``copy_shots``' (paired) — one that does not is reproducing its
training images; when a diversity metric ran, a fidelity / diversity / copying table (FID, diversity, NDB,
memorisation beside their references); per-class tables; bar charts with CIs; metric vs shots when
several shots ran; a sample grid per method × novel class (seed 0, else the lowest seed); final losses and fit
times; failed trials with their errors; the trials (collapsed ones marked); the sweep section
(:mod:`harness.report.sweep`); a provenance footer.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from harness.metrics.table import METRICS, UNKNOWN, Direction, collapsed, key_spec, split_class_key
from harness.report.images import figure_png, split_rows, subplots
from harness.report.load import ReportData
from harness.report.study import study_sections
from harness.report.model import Cell, Figure, ImageGrid, Row, Section, Table, Text, slug
from harness.report.statistics import (
    ALPHA, MIN_WILCOXON_PAIRS, Comparison, compare, fmt, fmt_difference, mean_ci, median_iqr,
)
from harness.report.sweep import sweep_section

__all__ = ["TIME_KEYS", "Report"]

TIME_KEYS = ("fit_s", "sample_s", "evaluate_s", "total_s")
# the metrics of the fidelity / diversity / copying table, in its column order (registry names)
TRADE_OFF_METRICS = ("fid", "diversity", "lpips_diversity", "ndb", "memorisation")
DIVERSITY_METRICS = ("diversity", "lpips_diversity")
BEST_ROW = "best (paired)"
COLLAPSE_COLUMN = "collapsed"
FULL_DATA_MARK = "(reference, full data)"
FULL_DATA_NOTE = (f"rows marked *{FULL_DATA_MARK}*: trained on every training image of the novel classes (`data: "
                  "full`), an oracle upper bound rather than a few-shot method; never ranked, never in the paired "
                  "comparisons or the best row.")
COPY_BASELINE = "copy_shots"  # the method whose samples are the shots themselves
COPY_COLUMN = f"fid vs {COPY_BASELINE}"


def _ranked_arrow(direction: Direction | None) -> str:
    """Figure titles mark ranked directions only (a target is spelled out in the tables' headers)."""
    return direction.arrow if direction is not None and direction.ranked else ""


class Report:
    """Turns :class:`ReportData` into sections of tables, figures and image grids."""

    def __init__(self, data: ReportData) -> None:
        self.data = data
        trials = data.trials.copy()
        # several trials of one method at the same shots, class split and seed (a sweep's samples) are rows of
        # their own; trials on different class splits are the same method's repetitions
        clash = trials.duplicated(["label", "shots", "split", "seed"], keep=False)
        trials["base_label"] = trials["label"]
        trials.loc[clash, "label"] = _distinguishing_labels(trials[clash])
        self.trials = trials
        self.ok = trials[trials.status == "ok"]
        self.values = data.values.merge(trials[["trial_id", "label", "shots", "seed", "split", "status"]],
                                        on="trial_id")
        self.values = self.values[self.values.status == "ok"]
        self.collapsed = self._collapse_verdicts()
        self._comparisons: dict[tuple[int, str, str], Comparison] = {}
        suite_methods = [m.get("label") or m.get("name") for m in self.data.suite.get("methods", [])]
        rank = {m: i for i, m in enumerate(suite_methods)}
        pairs = trials.drop_duplicates("label")[["label", "base_label"]].itertuples(index=False)
        ordered = [label for label, base in sorted(pairs, key=lambda p: (rank.get(p[1], len(rank)), p[1], p[0]))]
        full = set(trials[trials.data == "full"].label)
        # few-shot methods: ranked and compared; `data: full` references: shown apart, never ranked or compared
        self.labels = [label for label in ordered if label not in full]
        self.reference_labels = [label for label in ordered if label in full]
        self.shots = sorted(self.trials.shots.unique().tolist())
        order = self.data.suite.get("evaluation", {}).get("metrics", []) or []
        self.metric_order = {name: i for i, name in enumerate(order)}

    # -- helpers
    def _collapse_verdicts(self) -> dict[str, bool | None]:
        """trial id → collapsed (True/False) or None (unknown: no metric with a collapse rule was computed), for
        every ok trial, by the registry's rules on that trial's own values."""
        metric = self.values[self.values.kind == "metric"]
        by_trial = {tid: dict(zip(g.key, g.value, strict=True)) for tid, g in metric.groupby("trial_id")}
        return {r.trial_id: collapsed(by_trial.get(r.trial_id, {}), len(json.loads(r.novel_classes or "[]")))
                for r in self.ok.itertuples()}

    def _collapse_cell(self, label: str, shots: int) -> Cell:
        """``k/n`` collapsed trials of ``label`` at ``shots`` (n: those a rule could judge), "unknown" when none
        could be; trials without a verdict are counted apart, never as "not collapsed"."""
        ids = self.ok[(self.ok.label == label) & (self.ok.shots == shots)].trial_id
        verdicts = [self.collapsed.get(t) for t in ids]
        known = [v for v in verdicts if v is not None]
        if not known:
            return Cell("unknown", title="no metric with a collapse rule was computed")
        unknown = len(verdicts) - len(known)
        return Cell(f"{sum(known)}/{len(known)}" + (f" (+{unknown} unknown)" if unknown else ""),
                    title=f"{sum(known)} of {len(known)} judged trials collapsed")

    def _comparison(self, shots: int, key: str, direction: Direction, kind: str = "metric") -> Comparison:
        """Every pair of methods on ``key`` at ``shots``, paired over (class split, seed) — a trial's split id when
        its spec has one (old results: none, so seed alone) — from the methods' own (non-reference) values."""
        cache_key = (shots, key, kind)
        if cache_key not in self._comparisons:
            v = self.values[(self.values.shots == shots) & (self.values.kind == kind) & (self.values.key == key)
                            & ~self.values.reference]
            values = {}
            for label in self.labels:
                frame = v[v.label == label]
                if not frame.empty:
                    pairs = frame.groupby([frame.split.fillna(""), frame.seed])["value"].mean()
                    values[label] = dict(pairs.items())
            self._comparisons[cache_key] = compare(values, bool(direction.higher_is_better))
        return self._comparisons[cache_key]

    def _stats(self, frame: pd.DataFrame, per_seed: bool = False) -> tuple[int, float, float]:
        if per_seed:  # reference values depend on the split (seed), not the method: one per seed
            frame = frame.groupby("seed", as_index=False)["value"].first()
        return mean_ci(frame["value"].tolist())

    def _metric_keys(self) -> pd.DataFrame:
        """One row per metric key: base key, class (None: pooled), direction, reference, the key it is the reference
        of and its reference row (both from the registry's declarations), registry metric."""
        m = self.values[self.values.kind == "metric"]
        rows = []
        for key, group in m.groupby("key", sort=False):
            base, label = split_class_key(key)
            directions = set(group.direction.dropna())
            metric = group.metric.dropna().iloc[0] if group.metric.notna().any() else key
            references = group.reference_of.dropna()
            declared = key_spec(key, metric)
            rows.append({"key": key, "base": base, "class": label,
                         "direction": directions.pop() if len(directions) == 1 else UNKNOWN,
                         "reference": bool(group.reference.any()),
                         "reference_of": references.iloc[0] if len(references) else None,
                         "row": declared[1].row if declared is not None else None, "metric": metric})
        frame = pd.DataFrame(rows, columns=["key", "base", "class", "direction", "reference", "reference_of", "row",
                                            "metric"])
        if frame.empty:
            return frame
        frame["order"] = [self.metric_order.get(m, len(self.metric_order)) for m in frame.metric]
        return frame.sort_values(["order", "base", "key"], kind="stable").reset_index(drop=True)

    def _layout(self, keys: pd.DataFrame) -> tuple[list[str], dict[str, tuple[str, str]]]:
        """Columns (generator-metric keys) and, for each pooled reference key, (column, reference row)."""
        pooled = keys[keys["class"].isna()]
        columns = pooled[~pooled.reference].key.tolist()
        return columns, self._place_references(pooled[pooled.reference], columns, grow=True)

    @staticmethod
    def _place_references(references: pd.DataFrame, columns: list[str], *,
                          grow: bool) -> dict[str, tuple[str, str]]:
        """(column, row) of each reference key: the column of the key the registry says it is the reference of,
        in its declared row ("real data (reference)", "<name> (baseline)"). A reference no registered metric
        places (or a second one for the same cell) gets a column of its own when ``grow`` (appended to
        ``columns``), else is left out."""
        placement: dict[str, tuple[str, str]] = {}
        taken: set[tuple[str, str]] = set()
        for ref in references.itertuples():
            column, row = ref.reference_of, ref.row
            if column not in columns or row is None or (column, row) in taken:
                if not grow:
                    continue
                column, row = ref.key, "reference"
                columns.append(column)
            taken.add((column, row))
            placement[ref.key] = (column, row)
        return placement

    def _table(self, tid: str, title: str, shots: int, columns: list[tuple[str, str, Direction | None]],
               kind: str, refs: dict[str, tuple[str, str]] | None = None, *,
               collapse: bool = False) -> Table | None:
        """Rows = methods (+ the "best (paired)" row, reference rows); ``columns`` = (value key, header, direction:
        of a ranked direction, the method that beats every other one in paired comparisons is bold and named in
        the best row, else the row says "tied"); ``collapse``: a last column with each method's collapse rate."""
        v = self.values[(self.values.shots == shots) & (self.values.kind == kind)]
        if v.empty or not columns:
            return None
        single = False
        stats: dict[tuple[str, str], tuple[int, float, float]] = {}
        for label in self.labels + self.reference_labels:
            for key, _, _ in columns:
                frame = v[(v.label == label) & (v.key == key) & ~v.reference]
                if not frame.empty:
                    stats[label, key] = self._stats(frame)
        ranked = {key: self._comparison(shots, key, direction, kind) for key, _, direction in columns
                  if direction is not None and direction.ranked
                  and len({label for label, k in stats if k == key and label in self.labels}) > 1}

        def label_row(label: str, display: str, row_kind: str) -> Row | None:
            nonlocal single
            if not any((label, key) in stats for key, _, _ in columns):
                return None
            cells = []
            for key, _, _ in columns:
                n, mean, ci = stats.get((label, key), (0, math.nan, math.nan))
                single |= n == 1
                cells.append(Cell(fmt(mean, ci), bold=key in ranked and ranked[key].best == label,
                                  title=f"{key}: n={n}" if n else None))
            if collapse:
                cells.append(self._collapse_cell(label, shots))
            return Row(display, cells, kind=row_kind)

        rows = [row for label in self.labels if (row := label_row(label, label, "method")) is not None]
        if ranked and rows:
            cells = [Cell("" if key not in ranked else ranked[key].best or "tied") for key, _, _ in columns]
            rows.append(Row(BEST_ROW, cells + ([Cell("")] if collapse else []), kind="summary"))
        full_data = [row for label in self.reference_labels
                     if (row := label_row(label, f"{label} {FULL_DATA_MARK}", "reference")) is not None]
        rows += full_data
        ref_rows: dict[str, dict[str, Cell]] = {}
        for ref_key, (column, row_name) in (refs or {}).items():
            frame = v[(v.key == ref_key) & v.reference]
            if frame.empty:
                continue
            n, mean, ci = self._stats(frame, per_seed=True)
            single |= n == 1
            ref_rows.setdefault(row_name, {})[column] = Cell(fmt(mean, ci), title=f"{ref_key}: n={n} seeds")
        for row_name, cells in sorted(ref_rows.items(), key=lambda item: (not item[0].startswith("real"), item[0])):
            rows.append(Row(row_name, [cells.get(key, Cell("")) for key, _, _ in columns]
                            + ([Cell("")] if collapse else []), kind="reference"))
        if not rows:
            return None
        notes = ["mean ± 95 % confidence interval over trials, one per (class split, seed) (Student t)."]
        if ranked:
            notes.append(f"**bold** and the \"{BEST_ROW}\" row: the method that beats every other method in paired "
                         "comparisons over (class split, seed) — Holm-corrected Wilcoxon signed-rank "
                         f"p < {ALPHA} and a bootstrap CI of the difference that excludes 0 (↑ higher is better, "
                         "↓ lower is better); \"tied\" where none does.")
        if collapse:
            rules = [METRICS.get(m).collapse for m in METRICS.names() if METRICS.get(m).collapse is not None]
            notes.append(f"`{COLLAPSE_COLUMN}`: trials whose generator collapsed / trials judged ("
                         + "; ".join(r.text for r in rules) + "); \"unknown\" when no such metric was computed. "
                         "Collapsed trials count in the means and are marked in the Trials table.")
        if single:
            notes.append("n = 1 seed: no confidence interval (a single value is shown).")
        if full_data:
            notes.append(FULL_DATA_NOTE)
        if ref_rows:
            used = sorted(k for k, (_, r) in (refs or {}).items() if r in ref_rows)
            notes.append("reference rows describe real data or a baseline, not a generator: " + ", ".join(
                f"`{k}` in column `{refs[k][0]}`" for k in used) + ".")
        return Table(tid, title, ["method", *[h for _, h, _ in columns], *([COLLAPSE_COLUMN] if collapse else [])],
                     rows, notes)

    # -- sections
    def sections(self) -> list[Section]:
        keys = self._metric_keys()
        out = [self._overview(keys)]
        for shots in self.shots:
            out.append(self._shots_section(shots, keys))
        if len(self.shots) > 1 and not keys.empty:
            figure = self._vs_shots_figure(keys)
            if figure is not None:
                out.append(Section("Metrics vs shots", [figure]))
        failed = self._failed()
        if failed is not None:
            out.append(Section("Failed trials", [failed]))
        out.append(Section("Trials", [self._trials_table()]))
        sweep = sweep_section(self.data.sweep_dir)
        if sweep is not None:
            out.append(sweep)
        out += study_sections(self.data.run_dir)
        out.append(self._provenance())
        return out

    def _overview(self, keys: pd.DataFrame) -> Section:
        t = self.trials
        n_ok, n_stopped = int((t.status == "ok").sum()), int((t.status == "stopped").sum())
        n_failed = len(t) - n_ok - n_stopped
        stopped = f"{n_stopped} stopped early by the sweep's scheduler, " if n_stopped else ""
        seeds = sorted(t.seed.unique().tolist())
        methods = (f"methods {', '.join(f'`{m}`' for m in self.labels)}" if self.labels else
                   "no few-shot methods")  # a suite of references only (e.g. a trial of a reference's settings)
        references = (f"; references trained on full data (never ranked): "
                      f"{', '.join(f'`{m}`' for m in self.reference_labels)}" if self.reference_labels else "")
        lines = [f"{len(t)} trials ({n_ok} ok, {stopped}{n_failed} failed or unfinished): {methods}{references}; "
                 f"shots {', '.join(map(str, self.shots))}; seeds {', '.join(map(str, seeds))}."]
        scored = sorted(set(t.selection.dropna()) - {"none"})
        if "validation" in scored:
            classes = ", ".join(sorted(set(t.loc[t.selection == "validation", "novel_classes"].dropna())))
            lines.append("**Scored on validation classes** (`protocol.score_on: validation`): in every trial base "
                         f"classes played the novel role (novel classes per split: {classes}), scored on their own "
                         "held-out training images; no test image and no image of the protocol's novel classes was "
                         "used. These numbers are for choosing (ablations, defaults), not for publishing.")
        if "test" in scored:
            lines.append("**Selection trials scored on test images** (`sweep.select_on: test`): optimistic.")
        if keys.empty:
            lines.append("No evaluation metrics were recorded (the suite's `evaluation.metrics` is empty): the "
                         "tables show final losses and fit times only.")
        return Section("Overview", [Text(" ".join(lines))])

    def _spread_table(self, shots: int, columns: list[tuple[str, str, Direction | None]]) -> Table | None:
        """Median and interquartile range of each method's trials: robust to the one collapsed seed a mean is not."""
        v = self.values[(self.values.shots == shots) & (self.values.kind == "metric") & ~self.values.reference]
        rows = []
        for label in self.labels:
            cells, any_value = [], False
            for key, _, _ in columns:
                n, median, q1, q3 = median_iqr(v[(v.label == label) & (v.key == key)]["value"].tolist())
                any_value |= n > 0
                cells.append(Cell(f"{fmt(median)} [{fmt(q1)}, {fmt(q3)}]" if n else "", title=f"{key}: n={n}"))
            if any_value:
                rows.append(Row(label, cells))
        if not rows:
            return None
        return Table(f"spread-{shots}", f"Median [first, third quartile], {shots} shots", ["method",
                     *[h for _, h, _ in columns]], rows,
                     ["median and interquartile range over the same trials as the means above."])

    def _per_split_table(self, shots: int, columns: list[tuple[str, str, Direction | None]]) -> Table | None:
        """Each method on each class partition (mean ± CI over its seeds), when the suite has more than one: the
        tables above pool the partitions; this one shows whether a method's standing depends on which classes are
        novel."""
        v = self.values[(self.values.shots == shots) & (self.values.kind == "metric") & ~self.values.reference]
        splits = sorted({s for s in v["split"].tolist() if s is not None}, key=int)
        if len(splits) < 2:
            return None
        rows = []
        for label in self.labels:
            for split in splits:
                cells = []
                for key, _, _ in columns:
                    frame = v[(v.label == label) & (v.split == split) & (v.key == key)]
                    n, mean, ci = mean_ci(frame["value"].tolist()) if not frame.empty else (0, math.nan, math.nan)
                    cells.append(Cell(fmt(mean, ci) if n else "", title=f"{key}: n={n} seeds"))
                if any(c.text for c in cells):
                    rows.append(Row(f"{label}, split {split}", cells))
        if not rows:
            return None
        return Table(f"per-split-{shots}", f"Per class split, {shots} shots", ["method, split",
                     *[h for _, h, _ in columns]], rows,
                     ["mean ± 95 % CI over the seeds of one class partition (split 0: the protocol's own classes; "
                      "the partitions are listed in the suite file and in each trial's spec)."])

    def _shots_section(self, shots: int, keys: pd.DataFrame) -> Section:
        blocks: list[Any] = []
        if not keys.empty:
            columns, refs = self._layout(keys)
            directions = dict(zip(keys.key, keys.direction, strict=True))
            cols = [(c, f"{c}{directions[c].arrow}", directions[c]) for c in columns]
            table = self._table(f"metrics-{shots}", f"Metrics, {shots} shots", shots, cols, "metric", refs,
                                collapse=True)
            if table is not None:
                self._add_copy_column(table, shots, cols, keys)
                blocks.append(table)
            trade_off = self._trade_off_table(shots, cols, refs, dict(zip(keys.key, keys.metric, strict=True)))
            if trade_off is not None:
                blocks.append(trade_off)
            spread = self._spread_table(shots, cols)
            if spread is not None:
                blocks.append(spread)
            per_split = self._per_split_table(shots, cols)
            if per_split is not None:
                blocks.append(per_split)
            figure = self._bar_figure(shots, columns, refs, directions)
            if figure is not None:
                blocks.append(figure)
            blocks += self._paired_tables(shots, [(c, d) for c, _, d in cols])
            blocks += self._per_class_tables(shots, keys)
        training = self._training_table(shots)
        if training is not None:
            blocks.append(training)
        if keys.empty:
            figure = self._time_figure(shots)
            if figure is not None:
                blocks.append(figure)
        grid = self._sample_grid(shots)
        if grid is not None:
            blocks.append(grid)
        return Section(f"{shots} shots", blocks)

    def _add_copy_column(self, table: Table, shots: int, columns: list[tuple[str, str, Direction | None]],
                         keys: pd.DataFrame) -> None:
        """Beside memorisation (after its columns; after FID's without them): does each method's FID beat
        ``copy_shots``', whose samples are the shots themselves? The paired difference over the (class split, seed)
        pairs both ran, from the same comparison as the FID matrix (Holm-corrected), "yes" only where it is
        significant (:meth:`~harness.report.statistics.PairedDifference.beats`). A method that does not beat it is
        reproducing its training images, whatever its other numbers say. Nothing when the run has no few-shot
        copy_shots trials or no FID."""
        direction = next((d for key, _, d in columns if key == "fid"), None)
        few = self.trials[(self.trials.method == COPY_BASELINE) & (self.trials.data != "full")]
        baseline = next((label for label in self.labels if label in set(few.label)), None)
        if direction is None or baseline is None:
            return
        comparison = self._comparison(shots, "fid", direction)
        if baseline not in comparison.methods or len(comparison.methods) < 2:
            return
        cells = {baseline: Cell("(the baseline)")}
        for label in comparison.methods:
            if label != baseline:
                d = comparison.pairs[label, baseline]
                verdict = "yes" if d.beats(direction.higher_is_better) else "no"
                cells[label] = Cell(f"{verdict}: {fmt_difference(d)}" if d.n else "–",
                                    title=f"fid({label}) − fid({baseline}), n={d.n} pairs")
        keys_by_column = dict(zip(keys.key, keys.metric, strict=True))
        value_columns = [key for key, _, _ in columns]
        after = [i for i, key in enumerate(value_columns) if keys_by_column.get(key) == "memorisation"]
        position = (after[-1] if after else value_columns.index("fid")) + 1
        table.columns.insert(position + 1, COPY_COLUMN)  # + 1: the label column
        for row in table.rows:
            row.cells.insert(position, cells.get(row.label, Cell("")) if row.kind == "method" else Cell(""))
        notes = [f"`{COPY_COLUMN}`: does the method's FID beat that of `{baseline}`, whose samples are its shots? "
                 "Paired FID difference (method − copy_shots) over the (class split, seed) pairs both ran, as in the "
                 "FID matrix; \"yes\" only where it is significantly lower. A method that does not beat copy_shots "
                 "on FID is reproducing its training images (read its memorisation beside it: < 1 is closer to the "
                 "shots than unseen real images are)."]
        if any(0 < comparison.pairs[label, baseline].n < MIN_WILCOXON_PAIRS for label in comparison.methods
               if label != baseline):
            notes.append(f"with fewer than {MIN_WILCOXON_PAIRS} pairs no method can be shown to beat copy_shots: "
                         "\"no\" then means \"not shown\"; run more seeds (or class splits).")
        table.notes += notes

    def _trade_off_table(self, shots: int, cols: list[tuple[str, str, Direction | None]],
                         refs: dict[str, tuple[str, str]], metric_of: dict[str, str]) -> Table | None:
        """Fidelity (FID), diversity (within-class, intra-cluster, NDB) and copying (memorisation) side by side, each
        with its real-data reference row: the trade-off a method makes, in one table. Only with a diversity
        metric (otherwise the metrics table above is the same thing)."""
        if not any(metric_of.get(key) in DIVERSITY_METRICS for key, _, _ in cols):
            return None
        chosen = sorted((c for c in cols if metric_of.get(c[0]) in TRADE_OFF_METRICS),
                        key=lambda c: TRADE_OFF_METRICS.index(metric_of[c[0]]))
        keys = {key for key, _, _ in chosen}
        table = self._table(f"trade-off-{shots}", f"Fidelity, diversity and copying, {shots} shots", shots, chosen,
                            "metric", {ref: place for ref, place in refs.items() if place[0] in keys})
        if table is not None:
            table.notes.insert(1, "the same values as the metrics table, side by side: a generator near the real "
                               "data's diversity with low FID and memorisation ≈ 1 neither collapses nor copies.")
        return table

    def _paired_tables(self, shots: int, columns: list[tuple[str, Direction]]) -> list[Table]:
        """One matrix per ranked headline key (pooled generator keys; a target such as memorisation's ≈ 1 is not
        ranked): cell (row, column) = row − column paired over (class split, seed), bold where the row method is
        significantly better. None where no two methods share two pairs: one difference has no spread to show."""
        tables = []
        for key, direction in columns:
            if not direction.ranked:
                continue
            comparison = self._comparison(shots, key, direction)
            if len(comparison.methods) < 2:
                continue
            methods = comparison.methods
            rows = [Row(a, [Cell("–") if a == b else Cell(fmt_difference(d := comparison.pairs[a, b]),
                                                          bold=d.beats(comparison.higher_is_better),
                                                          title=f"n={d.n} pairs, Wilcoxon p={d.p:.3g}")
                            for b in methods]) for a in methods]
            upper = [comparison.pairs[a, b] for i, a in enumerate(methods) for b in methods[i + 1:]]
            if max(d.n for d in upper) < 2:  # single pairs (a sweep's samples, one seed): the table says it all
                continue
            counts = sorted({d.n for d in upper})
            over = (f"over {counts[0]} (split, seed) pairs" if len(counts) == 1
                    else f"over {counts[0]}–{counts[-1]} (split, seed) pairs (the pairs both methods ran)")
            notes = [f"cell = mean of (row − column) {over} [95 % percentile bootstrap CI, 10 000 resamples] "
                     f"p = Wilcoxon signed-rank p, Holm-corrected across the {len(upper)} pair(s) of methods "
                     f"on `{key}`; **bold**: the row method is better (p < {ALPHA}, CI excluding 0, "
                     f"{direction.arrow.strip()})."]
            if any(0 < d.n < MIN_WILCOXON_PAIRS for d in upper):
                notes.append(f"fewer than {MIN_WILCOXON_PAIRS} pairs: the exact p-value cannot reach {ALPHA}, so no "
                             "difference can be significant; run more seeds (or class splits).")
            if any(d.note == "all differences 0" for d in upper):
                notes.append("p = –: every paired difference is 0 (no test).")
            notes.append(f"best: {comparison.best or 'tied'}.")
            tables.append(Table(f"paired-{slug(key)}-{shots}",
                                f"{key}{direction.arrow}: paired differences (row − column), {shots} shots",
                                ["method", *methods], rows, notes))
        return tables

    def _per_class_tables(self, shots: int, keys: pd.DataFrame) -> list[Table]:
        """One table per per-class metric (rows: methods, columns: novel classes), with the per-class reference
        values of the same metric (e.g. ``fid_real_floor/class_c`` under ``fid/class_c``) as reference rows."""
        tables = []
        per_class = keys[keys["class"].notna()]
        references = per_class[per_class.reference]
        for base, group in per_class[~per_class.reference].groupby("base", sort=False):
            group = group.sort_values("class")
            direction = group.direction.iloc[0]
            cols = [(k, f"class {int(c)}", direction) for k, c in zip(group.key, group["class"], strict=True)]
            refs = self._place_references(references, group.key.tolist(), grow=False)
            table = self._table(f"per-class-{slug(base)}-{shots}",
                                f"{base}{direction.arrow} per class, {shots} shots",
                                shots, cols, "metric", refs)
            if table is not None:
                table.collapsed = True
                tables.append(table)
        return tables

    def _training_table(self, shots: int) -> Table | None:
        v = self.values[(self.values.shots == shots)]
        losses = sorted(v[v.kind == "final_loss"].key.unique().tolist())
        times = [k for k in TIME_KEYS if k in set(v[v.kind == "time"].key)]
        if not losses and not times:
            return None
        loss_table = self._table(f"training-{shots}", f"Final losses and times, {shots} shots", shots,
                                 [(k, f"final {k}", None) for k in losses], "final_loss")
        time_table = self._table(f"times-{shots}", "", shots, [(k, k, None) for k in times], "time")
        if loss_table is None:
            loss_table, time_table = time_table, None
            if loss_table is None:
                return None
            loss_table.title = f"Final losses and times, {shots} shots"
        if time_table is not None:  # join the two tables' columns row by row
            by_label = {r.label: r.cells for r in time_table.rows}
            loss_table.columns += time_table.columns[1:]
            for row in loss_table.rows:
                row.cells += by_label.get(row.label, [Cell("–") for _ in times])
        single = [n for t in (loss_table, time_table) if t is not None for n in t.notes if n.startswith("n = 1")]
        loss_table.notes = ["mean ± 95 % CI over seeds; final losses are the last logged value of each fitted model "
                            "(averaged over the per-class models of unconditional methods); times in seconds.",
                            *single[:1]]
        return loss_table

    def _failed(self) -> Table | None:
        failed = self.trials[~self.trials.status.isin(["ok", "stopped"])]  # stopped trials: in the sweep section
        if failed.empty:
            return None
        rows = [Row(r.name, [Cell(r.label), Cell(str(r.shots)), Cell(str(r.seed)), Cell(r.status),
                             Cell((r.error or "").splitlines()[0][:300] if r.error else "")])
                for r in failed.itertuples()]
        return Table("failed", "Failed trials", ["trial", "method", "shots", "seed", "status", "error"], rows,
                     align="left")

    def _trials_table(self) -> Table:
        v = self.data.values  # failed trials too
        rows = []
        verdicts = {True: "yes", False: "no", None: "unknown"}
        for r in self.data.trials.itertuples():
            fit = v[(v.trial_id == r.trial_id) & (v.kind == "time") & (v.key == "fit_s")]
            collapse = verdicts[self.collapsed[r.trial_id]] if r.trial_id in self.collapsed else "–"
            fit_cell = Cell(fmt(fit.value.iloc[0]) if len(fit) else "–")
            rows.append(Row(r.name, [Cell(r.trial_id), Cell(r.status), fit_cell,
                                     Cell((r.split_hash or "–")[:12]), Cell(collapse, bold=collapse == "yes")],
                            kind="trial"))
        table = Table("trials", "Trials", ["trial", "id", "status", "fit s", "split", COLLAPSE_COLUMN], rows,
                      align="left")
        table.collapsed = True
        return table

    # -- figures
    def _bar_figure(self, shots: int, columns: list[str], refs: dict[str, tuple[str, str]],
                    directions: dict[str, Direction]) -> Figure | None:
        v = self.values[(self.values.shots == shots) & (self.values.kind == "metric")]
        if v.empty or not columns:
            return None
        fig, axes = subplots(len(columns))
        for ax, column in zip(axes, columns, strict=False):
            labels, means, cis = [], [], []
            for label in self.labels:
                frame = v[(v.label == label) & (v.key == column) & ~v.reference]
                if frame.empty:
                    continue
                n, mean, ci = self._stats(frame)
                labels.append(label)
                means.append(mean)
                cis.append(0 if math.isnan(ci) else ci)
            if labels:
                ax.bar(range(len(labels)), means, yerr=cis, capsize=4, color="#4c72b0")
                ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
            for i, (ref_key, (ref_column, _)) in enumerate(sorted(refs.items())):
                frame = v[(v.key == ref_key) & v.reference]
                if ref_column != column or frame.empty:
                    continue
                _, mean, _ = self._stats(frame, per_seed=True)
                ax.axhline(mean, linestyle="--", color=f"C{i + 1}", label=ref_key)
                ax.legend(fontsize=7)
            ax.set_title(f"{column}{_ranked_arrow(directions.get(column))}", fontsize=9)
        return Figure(f"bars-{shots}", f"Metrics, {shots} shots", figure_png(fig),
                      "bars: mean over seeds, whiskers: 95 % CI; dashed: reference values (real data, baselines)")

    def _time_figure(self, shots: int) -> Figure | None:
        v = self.values[(self.values.shots == shots) & (self.values.kind == "time") & (self.values.key == "fit_s")]
        if v.empty:
            return None
        fig, (ax,) = subplots(1)
        labels = [label for label in self.labels if not v[v.label == label].empty]
        stats = [self._stats(v[v.label == label]) for label in labels]
        ax.bar(range(len(labels)), [s[1] for s in stats], yerr=[0 if math.isnan(s[2]) else s[2] for s in stats],
               capsize=4, color="#55a868")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title("fit time (s)", fontsize=9)
        return Figure(f"fit-time-{shots}", f"Fit time, {shots} shots", figure_png(fig),
                      "mean over seeds, whiskers: 95 % CI")

    def _vs_shots_figure(self, keys: pd.DataFrame) -> Figure | None:
        columns, refs = self._layout(keys)
        v = self.values[self.values.kind == "metric"]
        directions = dict(zip(keys.key, keys.direction, strict=True))
        fig, axes = subplots(len(columns))
        for ax, column in zip(axes, columns, strict=False):
            for i, label in enumerate(self.labels):
                points = [(s, *self._stats(v[(v.shots == s) & (v.label == label) & (v.key == column) & ~v.reference]))
                          for s in self.shots]
                points = [p for p in points if p[1] > 0]
                if points:
                    ax.errorbar([p[0] for p in points], [p[2] for p in points],
                                yerr=[0 if math.isnan(p[3]) else p[3] for p in points], marker="o", capsize=3,
                                label=label, color=f"C{i}")
            for ref_key, (ref_column, _) in refs.items():
                if ref_column != column:
                    continue
                points = [(s, self._stats(v[(v.shots == s) & (v.key == ref_key) & v.reference], per_seed=True))
                          for s in self.shots]
                points = [(s, st[1]) for s, st in points if st[0] > 0]
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], "--", color="gray", label=ref_key)
            ax.set_xscale("log")
            ax.set_xticks(self.shots, [str(s) for s in self.shots])
            ax.set_xticks([], minor=True)
            ax.set_xlabel("shots", fontsize=8)
            ax.set_title(f"{column}{_ranked_arrow(directions.get(column))}", fontsize=9)
            ax.legend(fontsize=7)
        return Figure("vs-shots", "Metrics vs shots", figure_png(fig), "mean over seeds, whiskers: 95 % CI")

    def _sample_grid(self, shots: int) -> ImageGrid | None:
        ok = self.ok[self.ok.shots == shots]
        rows: list[tuple[str, list[tuple[str, bytes | None]]]] = []
        columns: list[str] = []
        notes = []
        shots_row = None
        for label in self.labels + self.reference_labels:
            trials = ok[ok.label == label].sort_values("seed")
            if trials.empty:
                continue
            trial = trials.iloc[0]
            classes = json.loads(trial.novel_classes or "[]")
            png = self.data.image(trial.trial_id, "samples")
            if png is None or not classes:
                continue
            columns = columns or [f"class {c}" for c in classes]
            crops = split_rows(png, len(classes))
            shown = f"{label} {FULL_DATA_MARK}" if label in self.reference_labels else label
            rows.append((f"{shown} (seed {trial.seed})",
                         [(f"samples/{shots}shot-{slug(label)}-class{c}.png", crop)
                          for c, crop in zip(classes, crops, strict=True)]))
            if shots_row is None:
                real = self.data.image(trial.trial_id, "shots")
                if real is not None:
                    shots_row = (f"real shots (seed {trial.seed})",
                                 [(f"samples/{shots}shot-real-seed{trial.seed}-class{c}.png", crop)
                                  for c, crop in zip(classes, split_rows(real, len(classes)), strict=True)])
        if not rows:
            return None
        if shots_row is not None:
            rows.insert(0, shots_row)
            notes.append("first row: the real shots a method was given (first images of each class).")
        notes.append("samples of each novel class from each method's lowest-seed trial.")
        return ImageGrid(f"samples-{shots}", f"Samples, {shots} shots", ["", *columns], rows, notes)

    # -- provenance
    def _provenance(self) -> Section:
        t, run = self.trials, self.data.run
        rows = []

        def unique(column: str) -> str:
            values = sorted({str(x) for x in t[column].dropna()})
            return ", ".join(f"`{x}`" for x in values) if values else "–"

        rows.append(Row("data source", [Cell(unique("data_source"))]))
        rows.append(Row("dataset fingerprint", [Cell(unique("dataset_fingerprint"))]))
        splits = t.dropna(subset=["split_hash"]).drop_duplicates(["shots", "seed"])
        rows.append(Row("split hashes", [Cell("; ".join(f"{r.shots} shots seed {r.seed}: `{r.split_hash[:16]}`"
                                                        for r in splits.itertuples()) or "–")]))
        evaluators = t.dropna(subset=["evaluator"]).drop_duplicates(["evaluator", "evaluator_hash"])
        rows.append(Row("evaluator", [Cell("; ".join(
            f"`{r.evaluator}` (hash `{(r.evaluator_hash or '–')[:16]}`, test accuracy "
            f"{'–' if pd.isna(r.evaluator_test_accuracy) else f'{r.evaluator_test_accuracy:.4f}'})"
            for r in evaluators.itertuples()) or "none (no metrics needing one)")]))
        rows.append(Row("suite", [Cell(f"`{run.get('suite', self.data.suite.get('name', '–'))}` version "
                                       f"{run.get('suite_version', self.data.suite.get('version', '–'))}, hash "
                                       f"`{run.get('suite_hash', '–')}`, file `{run.get('suite_file', '–')}`")]))
        rows.append(Row("git commit", [Cell(f"`{run.get('git_commit') or unique('git_commit')}`")]))
        versions = run.get("versions") or {}
        rows.append(Row("versions", [Cell(", ".join(f"{k} {v}" for k, v in versions.items()) or "–")]))
        rows.append(Row("command", [Cell(f"`{run.get('command', '–')}`")]))
        rows.append(Row("started", [Cell(str(run.get("started", "–")))]))
        rows.append(Row("hosts", [Cell(unique("host"))]))
        return Section("Provenance", [Table("provenance", "Provenance", ["", ""], rows, align="left")])


def _distinguishing_labels(trials: pd.DataFrame) -> list[str]:
    """Labels for trials sharing method label, shots and seed (a sweep's samples): the parameters that differ between
    them (``metacgan (lr_d=1.1e-04, lr_g=3.8e-04, n_c=4)``), else the trial id."""
    params = [json.loads(p) if isinstance(p, str) and p else {} for p in trials["params"]]
    keys = sorted({k for p in params for k in p})
    differing = [k for k in keys if len({json.dumps(p.get(k)) for p in params}) > 1]

    def show(v: Any) -> str:
        try:
            number = float(v)
        except (TypeError, ValueError):
            return str(v)
        return str(v) if number.is_integer() else f"{number:.2g}"

    labels = []
    for (label, trial_id), p in zip(trials[["label", "trial_id"]].itertuples(index=False), params, strict=True):
        shown = ", ".join(f"{k}={show(p[k])}" for k in differing if k in p)
        labels.append(f"{label} ({shown})" if shown else f"{label} ({trial_id[:8]})")
    if len(set(labels)) < len(labels):  # rounding made two equal: fall back to ids
        labels = [f"{label} ({trial_id[:8]})"
                  for label, trial_id in trials[["label", "trial_id"]].itertuples(index=False)]
    return labels
