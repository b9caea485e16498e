"""Crowd platforms: a study exported for Amazon Mechanical Turk or Prolific, and MTurk's results imported back.

**MTurk** runs the HIT itself: one HIT per trial, laid out in MTurk's HTML format (a ``crowd-form`` with a
``crowd-classifier``, whose answer MTurk writes as ``Answer.judgement.label``), fed by an input CSV whose columns are
the trial id and the image URL(s) on the public server that serves the study (``harness study serve --host …``; the
URLs carry the study token). In a 2afc HIT the sides are drawn per trial from the study seed and are readable
back from the URLs (``Input.left_url``/``Input.right_url``) in the results, so nothing else has to be kept. The
workers' ``WorkerId`` is their rater id (``mturk-<WorkerId>``); ``WorkTimeInSeconds`` the response time (HIT
accept-to-submit, so an upper bound).

**Prolific** sends participants to the study's own server: the study URL carries Prolific's ``PROLIFIC_PID``,
``STUDY_ID`` and ``SESSION_ID`` placeholders, the finish page returns them with the completion code.

Importing checks every row before storing any (unknown trial, URL of another image, answer not one of the design's
are refused by row number); a row already imported, or whose assignment was rejected on MTurk, is skipped and
counted — so importing the same batch file twice stores each judgement once.
"""

from __future__ import annotations

import csv
import html
import io
import random
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from harness.files import write_text
from harness.study.db import DoubleAnswer, Responses
from harness.study.manifest import ANSWERS, Manifest, StudyError

__all__ = ["ImportSummary", "export_mturk", "export_prolific", "import_mturk", "mturk_layout", "mturk_rows"]

EXPORT_DIR = "exports"
ANSWER_FIELD = "judgement"
_IMAGE_IN_URL = re.compile(r"/img/([0-9a-f]{64})\.png")
LABELS = {"real": "Real", "generated": "Generated", "left": "Left is real", "right": "Right is real"}


def _image_url(base_url: str, digest: str, token: str | None) -> str:
    query = f"?t={urllib.parse.quote(token)}" if token else ""
    return f"{base_url.rstrip('/')}/img/{digest}.png{query}"


def _check_base_url(base_url: str) -> str:
    parsed = urllib.parse.urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise StudyError("--base-url", f"{base_url!r} is not an http(s) URL (the public address that serves the "
                         "study, e.g. https://study.example.org)")
    if parsed.scheme == "http":
        import warnings

        warnings.warn("--base-url is plain http: MTurk shows HITs over https and browsers block http images in them "
                      "(mixed content); serve the study behind an https proxy", stacklevel=2)
    return base_url


def mturk_rows(manifest: Manifest, base_url: str, token: str | None) -> list[dict[str, str]]:
    """The input CSV's rows, one per trial, in a shuffled order (seeded): ``trial_id`` and ``image_url``
    (real-vs-fake) or ``left_url``/``right_url`` (2afc, sides drawn from the study seed)."""
    rng = random.Random(f"{manifest.seed}:mturk")
    rows = []
    for trial in manifest.trials:
        if manifest.design == "real-vs-fake":
            rows.append({"trial_id": trial.id, "image_url": _image_url(base_url, trial.images[0], token)})
        else:
            left, right = trial.images if rng.random() < 0.5 else trial.images[::-1]
            rows.append({"trial_id": trial.id, "left_url": _image_url(base_url, left, token),
                         "right_url": _image_url(base_url, right, token)})
    rng.shuffle(rows)
    return rows


def mturk_layout(manifest: Manifest) -> str:
    """The HIT layout (MTurk's HTML format: the crowd HTML elements script, a ``crowd-form`` and a
    ``crowd-classifier`` named ``judgement``); ``${…}`` are the input CSV's columns."""
    categories = ", ".join(f"'{LABELS[a]}'" for a in ANSWERS[manifest.design])
    if manifest.design == "real-vs-fake":
        images = ('<img src="${image_url}" alt="image to judge" width="224" height="224" '
                  'style="image-rendering: pixelated; border: 1px solid #ccc">')
    else:
        images = ('<img src="${left_url}" alt="left image" width="224" height="224" '
                  'style="image-rendering: pixelated; border: 1px solid #ccc; margin-right: 24px">'
                  '<img src="${right_url}" alt="right image" width="224" height="224" '
                  'style="image-rendering: pixelated; border: 1px solid #ccc">')
    exposure = ""
    if manifest.exposure_ms:
        exposure = (f"\n<script>document.addEventListener('DOMContentLoaded', function () {{ setTimeout(function () "
                    f"{{ document.querySelectorAll('.stimulus img').forEach(function (im) {{ im.style.visibility = "
                    f"'hidden'; }}); }}, {int(manifest.exposure_ms)}); }});</script>")
    return f"""<!-- fewshot-harness study {html.escape(manifest.name)} ({manifest.design}): MTurk HIT layout.
     Input CSV columns: trial_id, {'image_url' if manifest.design == 'real-vs-fake' else 'left_url, right_url'}.
     Import the batch results with: harness study import STUDY Batch_…_batch_results.csv -->
<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>
<crowd-form answer-format="flatten-objects">
  <input type="hidden" name="trial_id" value="${{trial_id}}">
  <crowd-classifier name="{ANSWER_FIELD}" categories="[{categories}]" header="{html.escape(manifest.question)}">
    <classification-target><div class="stimulus" style="text-align: center">{images}</div></classification-target>
    <full-instructions header="Instructions"><p>{html.escape(manifest.instructions)}</p></full-instructions>
    <short-instructions><p>{html.escape(manifest.question)}</p></short-instructions>
  </crowd-classifier>
</crowd-form>{exposure}
"""


def export_mturk(manifest: Manifest, base_url: str, token: str | None) -> tuple[Path, Path]:
    """``exports/mturk_layout.html`` and ``exports/mturk_input.csv`` in the study folder."""
    _check_base_url(base_url)
    folder = Path(manifest.folder) / EXPORT_DIR
    rows = mturk_rows(manifest, base_url, token)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return (write_text(folder / "mturk_layout.html", mturk_layout(manifest)),
            write_text(folder / "mturk_input.csv", buffer.getvalue()))


def export_prolific(manifest: Manifest, base_url: str, token: str | None) -> Path:
    """``exports/prolific.txt``: the study URL to paste into Prolific (its placeholders in braces) and the
    completion code."""
    _check_base_url(base_url)
    query = "PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"
    if token:
        query += f"&t={urllib.parse.quote(token)}"
    url = f"{base_url.rstrip('/')}/prolific?{query}"
    text = (f"Prolific settings for study {manifest.name} ({manifest.design})\n\n"
            f"Study URL (\"I'll use URL parameters\" on):\n  {url}\n\n"
            f"Completion: \"I'll redirect them using a URL\" with completion code {manifest.completion_code}\n"
            f"  (the finish page links to https://app.prolific.com/submissions/complete?cc="
            f"{manifest.completion_code})\n\n"
            f"Serve the study where that URL reaches it, e.g. behind an https proxy:\n"
            f"  harness study serve {manifest.folder} --host 0.0.0.0\n")
    return write_text(Path(manifest.folder) / EXPORT_DIR / "prolific.txt", text)


# ------------------------------------------------------------------------------------------------------ import


@dataclass
class ImportSummary:
    stored: int = 0
    already: int = 0  # imported before (same worker, same trial)
    rejected: int = 0  # AssignmentStatus Rejected on MTurk
    workers: set[str] = field(default_factory=set)


def _answer(row: dict[str, str], design: str) -> str | None:
    """The design's answer from one results row: ``Answer.judgement.label`` (crowd-classifier), else
    ``Answer.judgement`` (a plain input), else ``Answer.judgement.<answer>`` = true (radio buttons)."""
    by_label = {v: k for k, v in LABELS.items() if k in ANSWERS[design]}
    for column in (f"Answer.{ANSWER_FIELD}.label", f"Answer.{ANSWER_FIELD}"):
        value = (row.get(column) or "").strip()
        if value:
            return by_label.get(value, value)
    ticked = [a for a in ANSWERS[design] if (row.get(f"Answer.{ANSWER_FIELD}.{a}") or "").strip().lower() == "true"]
    return ticked[0] if len(ticked) == 1 else None


def import_mturk(manifest: Manifest, responses: Responses, csv_path: str | Path) -> ImportSummary:
    """Store the judgements of an MTurk batch-results CSV; :class:`StudyError` naming the file and row, with
    nothing stored, when any row cannot be read as a judgement of this study."""
    path = Path(csv_path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(str(path), f"cannot be read ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    needed = ["WorkerId", "Input.trial_id"]
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        raise StudyError(str(path), f"no column {missing[0]!r}: not an MTurk batch-results CSV of a layout "
                         "exported by `harness study export --to mturk`")
    trials = manifest.trial_index
    url_columns = ["Input.image_url"] if manifest.design == "real-vs-fake" else ["Input.left_url", "Input.right_url"]
    parsed, summary = [], ImportSummary()
    for number, row in enumerate(reader, start=2):  # line 1 is the header
        where = f"{path}: row {number}"
        if (row.get("AssignmentStatus") or "").strip() == "Rejected":
            summary.rejected += 1
            continue
        trial = trials.get((row.get("Input.trial_id") or "").strip())
        if trial is None:
            raise StudyError(where, f"trial {row.get('Input.trial_id')!r} is not one of this study's")
        shown = []
        for column in url_columns:
            match = _IMAGE_IN_URL.search(row.get(column) or "")
            if not match:
                raise StudyError(where, f"{column} is not a study image URL")
            shown.append(match.group(1))
        if sorted(shown) != sorted(trial.images):
            raise StudyError(where, f"the image URL(s) are not trial {trial.id}'s images")
        answer = _answer(row, manifest.design)
        if answer not in ANSWERS[manifest.design]:
            raise StudyError(where, f"no answer of {', '.join(ANSWERS[manifest.design])} in Answer.{ANSWER_FIELD}"
                             "(.label)")
        worker = (row.get("WorkerId") or "").strip()
        if not re.fullmatch(r"[A-Za-z0-9]{1,60}", worker):
            raise StudyError(where, f"WorkerId {worker!r} is not an MTurk worker id")
        seconds = (row.get("WorkTimeInSeconds") or "").strip()
        response_ms = int(float(seconds) * 1000) if re.fullmatch(r"\d+(\.\d+)?", seconds) else None
        parsed.append((worker, trial.id, answer, tuple(shown), response_ms, (row.get("SubmitTime") or "").strip(),
                       (row.get("AssignmentId") or "").strip()))
    for worker, trial_id, answer, shown, response_ms, submitted, assignment in parsed:
        rater = f"mturk-{worker}"
        responses.rater_for(rater, "mturk", {"WorkerId": worker})
        try:
            responses.record(rater, trial_id, answer, shown, response_ms, source=f"mturk:{path.name}",
                             answered_at=submitted or None)
            summary.stored += 1
        except DoubleAnswer:
            summary.already += 1
        summary.workers.add(worker)
    return summary
