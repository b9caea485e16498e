"""The report's human-study sections: the scores ``harness study score`` left under ``<run dir>/studies/``, one
section per study — each method's rate with its CI over raters and images, the real images' rate beside them, how
raters were screened, how far they agreed, and the paired comparisons over raters."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.report.model import Cell, Row, Section, Table, Text, slug

__all__ = ["study_sections"]


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f} %"


def _interval(low: Any, high: Any) -> str:
    if low is None or high is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return "–"
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


def study_sections(run_dir: Path | None) -> list[Section]:
    """One section per ``studies/*.json`` of ``run_dir``; unreadable files are named in a section of their own."""
    if run_dir is None or not (Path(run_dir) / "studies").is_dir():
        return []
    out = []
    for path in sorted((Path(run_dir) / "studies").glob("*.json")):
        try:
            data = json.loads(path.read_text())
            out.append(_section(data))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.append(Section(f"Human study {path.stem}", [Text(f"{path} could not be read: {exc}")]))
    return out


def _section(s: dict[str, Any]) -> Section:
    name, score = s["name"], s["score_name"]
    sid = slug(f"study-{name}")
    rows = []
    best = s.get("best")
    for r in s["methods"]:
        rows.append(Row(r["label"], [Cell(_pct(r["rate"]), bold=r["label"] == best), Cell(_interval(r["ci_low"],
                    r["ci_high"])), Cell(str(r["judgements"])), Cell(str(r["raters"])), Cell(str(r["images"]))]))
    if s.get("real"):
        r = s["real"]
        rows.append(Row("real images (judged real)", [Cell(_pct(r["rate"])), Cell(_interval(r["ci_low"], r["ci_high"])),
                        Cell(str(r["judgements"])), Cell(str(r["raters"])), Cell(str(r["images"]))], kind="reference"))
    meaning = ("the share of a method's images that raters judged real (HYPE's fooling rate); the real images' own "
               "share is the ceiling to read it against" if s["design"] == "real-vs-fake" else
               "the share of real-vs-generated pairs in which raters chose the generated image as real (50 % = "
               "indistinguishable)")
    notes = [
        f"{score}: {meaning}. 95 % CI: crossed bootstrap over raters and images. Bold: the method that beats every "
        f"other in the paired comparisons below ({best or 'none: tied'}).",
        f"raters: {s['raters_kept']} of {s['raters_total']} kept — excluded {len(s['excluded'])} with fewer than "
        f"{100 * s['min_catch_accuracy']:.0f} % of their catch trials (noise images) right; {s['raters_unscreened']} "
        f"saw no catch trial (kept, unscreened); kept raters' catch accuracy {_pct(s['catch_accuracy'])}.",
        f"agreement: Krippendorff's α = {_fmt(s['alpha'])} (nominal, all judged images); Fleiss' κ = "
        f"{_fmt(s['kappa'])} over the {s['kappa_items']} images judged by {s['kappa_raters_per_item']} raters.",
    ]
    blocks: list[Any] = [Table(sid, f"Human study {name}: {score}", ["method", score, "95 % CI", "judgements",
                                                                     "raters", "images"], rows, notes=notes)]
    if s.get("comparisons"):
        pair_rows = []
        for c in s["comparisons"]:
            p = "–" if c["p_holm"] is None or math.isnan(c["p_holm"]) else f"{c['p_holm']:.2g}"
            pair_rows.append(Row(f"{c['a']} − {c['b']}", [Cell(f"{100 * c['mean']:+.1f} pp" if c["n"] else "–"),
                                 Cell(_interval(c["ci_low"], c["ci_high"])), Cell(p), Cell(str(c["n"])),
                                 Cell(c.get("note") or "")]))
        blocks.append(Table(f"{sid}-paired", f"Human study {name}: paired differences over raters",
                            ["pair", "mean difference", "95 % CI (pp)", "Holm p", "raters", "note"], pair_rows,
                            notes=["each rater's rate of one method minus their rate of the other, over the raters "
                                   "who judged both; Wilcoxon signed-rank p, Holm-corrected across the pairs."]))
    run = s.get("provenance", {}).get("run", {})
    blocks.append(Text(f"Study {name} ({s['design']}): {s['judgements_used']} judgements scored; made from "
                       f"{len(run.get('trials', []))} trials of suite {run.get('suite')} at git "
                       f"{str(run.get('git_commit'))[:12]}; data {', '.join(run.get('data_sources', [])) or '?'}; "
                       f"manifest sha256 {str(s.get('provenance', {}).get('manifest_sha256'))[:12]}."))
    return Section(f"Human study: {name}", blocks)


def _fmt(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.3f}"
