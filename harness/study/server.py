"""The rating web app of a study: FastAPI pages a person can use, answers stored as they are given.

Routes (every one needs ``?t=TOKEN`` when the study is served with a token, which ``harness study serve`` requires
for any address other than loopback):

* ``GET /`` — the study's instructions and a start button (a new rater id); ``GET /r/{rater}`` — the rater's next
  unanswered trial, or the finish page with the completion code once every trial is answered. Reloading, closing the
  tab or a server restart cost nothing: the next trial is the first of the rater's plan
  (:func:`harness.study.manifest.rater_plan`, a pure function of the manifest and the rater) without a stored answer.
* ``GET /prolific?PROLIFIC_PID=…&STUDY_ID=…&SESSION_ID=…`` — a Prolific participant, registered under their id, with
  the study and session ids kept; their finish page links back to Prolific with the completion code.
* ``POST /r/{rater}/answer`` — one judgement (form fields ``trial``, ``answer``, ``response_ms``). Refused with a
  4xx and nothing stored when the rater is unknown, the trial is not one of theirs, the answer is not one of the
  design's, the response time is out of range, or the trial was answered already (409).
* ``GET /img/{sha256}.png`` — only images the manifest lists, looked up by hash (never by a path from the request).

Pages need no network beyond the server (no CDN: the style and script are inline) and work without JavaScript
(plain form buttons); with it they add keyboard shortcuts, the response time, the exposure limit and a guard
against double submission. Nothing in a page or URL says which image is real or which method made it.
"""

from __future__ import annotations

import re
import secrets
import urllib.parse
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from harness.study.db import DoubleAnswer, Responses
from harness.study.manifest import Manifest, PlannedTrial, load_manifest, rater_plan

__all__ = ["MAX_RESPONSE_MS", "RATER_ID", "create_app", "is_loopback"]

RATER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IMAGE_NAME = re.compile(r"^([0-9a-f]{64})\.png$")
MAX_RESPONSE_MS = 3_600_000  # an hour: beyond it the "response time" measures a break, not a judgement
MAX_FORM_BYTES = 4096
PROLIFIC_COMPLETE = "https://app.prolific.com/submissions/complete?cc="
TEMPLATES = Path(__file__).with_name("templates")


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message
        super().__init__(message)


def create_app(folder: str | Path, token: str | None = None, *, responses: Responses | None = None):
    """The app serving the study in ``folder``; with ``token`` every request must carry it (``?t=`` or the form
    field ``t``)."""
    import jinja2

    manifest = load_manifest(folder)
    db = responses or Responses(manifest)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    plans: dict[str, list[PlannedTrial]] = {}
    app = FastAPI(title=f"study {manifest.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.manifest, app.state.responses = manifest, db

    def link(path: str, **query: str) -> str:
        if token:
            query = {"t": token, **query}
        return path + ("?" + urllib.parse.urlencode(query) if query else "")

    def page(template: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = env.get_template(template).render(study=manifest, link=link, **values)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store",
                                                               "Referrer-Policy": "no-referrer",
                                                               "X-Content-Type-Options": "nosniff"})

    def refuse(status: int, message: str) -> HTMLResponse:
        return page("error.html", status=status, message=message)

    def check_token(given: str | None) -> None:
        if token and not (given and secrets.compare_digest(given.encode(), token.encode())):
            raise _Refused(403, "This study needs the access token from your link: open the link you were given.")

    def check_rater(rater: str) -> None:
        if not RATER_ID.match(rater):
            raise _Refused(404, "Unknown rater link.")

    def plan_of(rater_id: str) -> list[PlannedTrial]:
        if rater_id not in plans:
            rater = db.rater(rater_id)
            assert rater is not None
            plans[rater_id] = rater_plan(manifest, rater_id, rater.number)
        return plans[rater_id]

    @app.exception_handler(_Refused)
    async def _refused(_request: Request, exc: _Refused) -> HTMLResponse:
        return refuse(exc.status, exc.message)

    @app.get("/", response_class=HTMLResponse)
    def welcome(t: str | None = None) -> HTMLResponse:
        check_token(t)
        return page("welcome.html", start=link("/start"), count=len(rater_plan(manifest, "preview", 0)))

    @app.get("/start")
    def start(t: str | None = None) -> Response:
        check_token(t)
        return RedirectResponse(link(f"/r/{secrets.token_hex(6)}"), status_code=303)

    @app.get("/prolific")
    def prolific(request: Request) -> Response:
        query = request.query_params
        check_token(query.get("t"))
        pid = query.get("PROLIFIC_PID", "")
        if not RATER_ID.match(pid):
            raise _Refused(400, "This link needs your Prolific ID (PROLIFIC_PID): open it from Prolific.")
        rater_id = f"prolific-{pid}"
        db.rater_for(rater_id, "prolific", {"PROLIFIC_PID": pid, "STUDY_ID": query.get("STUDY_ID", "")[:64],
                                           "SESSION_ID": query.get("SESSION_ID", "")[:64]})
        return RedirectResponse(link(f"/r/{rater_id}"), status_code=303)

    @app.get("/r/{rater_id}", response_class=HTMLResponse)
    def next_trial(rater_id: str, t: str | None = None) -> HTMLResponse:
        check_token(t)
        check_rater(rater_id)
        rater = db.rater_for(rater_id)
        plan = plan_of(rater_id)
        done = db.answered(rater_id)
        remaining = [p for p in plan if p.trial.id not in done]
        if not remaining:
            db.mark_finished(rater_id)
            back = PROLIFIC_COMPLETE + manifest.completion_code if rater.platform == "prolific" else None
            return page("finish.html", code=manifest.completion_code, prolific=back, total=len(plan))
        current = remaining[0]
        return page("trial.html", rater=rater_id, planned=current, number=len(done) + 1, total=len(plan),
                    action=f"/r/{rater_id}/answer", token=token or "",
                    images=[f"/img/{h}.png" + (f"?t={urllib.parse.quote(token)}" if token else "")
                            for h in current.shown])

    @app.post("/r/{rater_id}/answer")
    async def answer(rater_id: str, request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise _Refused(413, "Request too large.")
        form = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        field = {k: v[0] if len(v) == 1 else None for k, v in form.items()}
        check_token(field.get("t") or request.query_params.get("t"))
        check_rater(rater_id)
        if db.rater(rater_id) is None:
            raise _Refused(404, "Unknown rater: open your rater link first.")
        trial_id, value = field.get("trial"), field.get("answer")
        planned = {p.trial.id: p for p in plan_of(rater_id)}.get(trial_id or "")
        if planned is None:
            raise _Refused(404, "Unknown trial for this rater.")
        if value not in manifest.answers:
            raise _Refused(422, f"The answer must be one of {', '.join(manifest.answers)}.")
        response_ms: int | None = None
        raw = field.get("response_ms") or ""
        if raw:
            if not raw.isdigit() or int(raw) > MAX_RESPONSE_MS:
                raise _Refused(422, f"response_ms must be a whole number of milliseconds from 0 to {MAX_RESPONSE_MS}.")
            response_ms = int(raw)
        try:
            db.record(rater_id, planned.trial.id, value, planned.shown, response_ms)
        except DoubleAnswer:
            return page("error.html", status=409, message="This trial was answered already (a second click, or the "
                        "back button); your first answer counts.", resume=link(f"/r/{rater_id}"))
        return RedirectResponse(link(f"/r/{rater_id}"), status_code=303)

    @app.get("/img/{name}")
    def image(name: str, t: str | None = None) -> Response:
        check_token(t)
        match = IMAGE_NAME.match(name)
        if not match or match.group(1) not in manifest.images:
            raise _Refused(404, "No such image.")
        return FileResponse(manifest.image_path(match.group(1)), media_type="image/png",
                            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})

    return app


def rater_links(base_url: str, count: int, token: str | None, manifest: Manifest, start: int = 1) -> list[str]:
    """``count`` personal links (raters r01, r02, …) for colleagues; each link is the rater's identity."""
    width = max(2, len(str(start + count - 1)))
    query = f"?t={urllib.parse.quote(token)}" if token else ""
    return [f"{base_url.rstrip('/')}/r/r{i:0{width}d}{query}" for i in range(start, start + count)]
