"""The web dashboard: a Starlette app, pages rendered on the server with Jinja.

Endpoints are plain functions: Starlette runs them in its thread pool, so a slow query
or an overlay being drawn never blocks the other requests.

Read-only unless a token is configured: then cancel and retry accept a POST carrying
the token (a form field or ``Authorization: Bearer``). Pages that change (the job list,
a running job) re-fetch their own fragment every few seconds with the small script in
``static/`` (no CDN, no framework).
"""

from __future__ import annotations

import hmac
import io
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from vlmjobs.dashboard import charts, queries
from vlmjobs.db.models import State
from vlmjobs.errors import JobNotFound, VlmjobsError

HERE = Path(__file__).parent
POLL_MS = 2000
OVERLAY_MAX_SIDE = 640  # px; gallery tiles are small, the full image is one click away
PER_PAGE = 12


TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
TEMPLATES.env.globals.update(poll_ms=POLL_MS)
STATES = {str(s) for s in State}


def create_app(token: str | None = None) -> Starlette:
    """The dashboard. ``token``: the secret that enables cancel/retry (None: read-only)."""
    routes = [
        Route("/", jobs_page),
        Route("/fragments/jobs", jobs_fragment),
        Route("/jobs/{job_id}", job_page),
        Route("/fragments/jobs/{job_id}", job_fragment),
        Route("/jobs/{job_id}/gallery", gallery_page),
        Route("/jobs/{job_id}/overlay/{output_id}.png", overlay),
        Route("/jobs/{job_id}/{verb:str}", action, methods=["POST"]),
        Route("/workers", workers_page),
        Route("/schedules", schedules_page),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: error_page})
    app.state.token = token
    return app


def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    context["actions"] = request.app.state.token is not None
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status)


def _state_filter(request: Request) -> str | None:
    state = request.query_params.get("state") or None
    if state is not None and state not in STATES:
        raise HTTPException(400, f"state {state!r} is not one of {', '.join(sorted(STATES))}")
    return state


def jobs_page(request: Request) -> HTMLResponse:
    state = _state_filter(request)
    return page(request, "jobs.html", jobs=queries.job_list(state=state), state=state or "")


def jobs_fragment(request: Request) -> HTMLResponse:
    return page(request, "_jobs_rows.html", jobs=queries.job_list(state=_state_filter(request)))


def job_page(request: Request) -> HTMLResponse:
    return page(request, "job.html", **_job_context(request))


def job_fragment(request: Request) -> HTMLResponse:
    context = _job_context(request)
    response = page(request, "_job_body.html", **context)
    if context["job"]["ended"]:
        response.headers["X-Poll-Stop"] = "1"  # nothing more will change
    return response


def _job_context(request: Request) -> dict[str, Any]:
    job_id = _int(request.path_params["job_id"], "job id")
    data = queries.job_page(job_id)
    if data is None:
        raise HTTPException(404, f"no job {job_id}: see the job list")
    data["charts"] = [charts.line_chart(n, pts) for n, pts in data["series"].items()]
    return data


def gallery_page(request: Request) -> HTMLResponse:
    job_id = _int(request.path_params["job_id"], "job id")
    job = queries.job_row(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}: see the job list")
    q = queries.GalleryQuery(
        job_id=job_id,
        page=max(1, _int(request.query_params.get("page", "1"), "page")),
        per_page=PER_PAGE,
        parse_status=request.query_params.get("status", ""),
        phrase=request.query_params.get("phrase", "").strip(),
    )
    g = queries.gallery(q)
    hist = charts.histogram("region scores", g["scores"])
    return page(request, "gallery.html", job=job, q=q, g=g, hist=hist)


def overlay(request: Request) -> Response:
    job_id = _int(request.path_params["job_id"], "job id")
    out = queries.output_for_overlay(job_id, _int(request.path_params["output_id"], "output"))
    if out is None:
        raise HTTPException(404, "no such output")
    return Response(_overlay_png(out), media_type="image/png")


def workers_page(request: Request) -> HTMLResponse:
    return page(request, "workers.html", workers=queries.worker_list())


def schedules_page(request: Request) -> HTMLResponse:
    return page(request, "schedules.html", schedules=queries.schedule_list())


async def action(request: Request) -> Response:
    """POST /jobs/ID/cancel|retry with the token (form field, or Authorization: Bearer)."""
    token: str | None = request.app.state.token
    if token is None:
        raise HTTPException(403, "read-only dashboard: start it with VLMJOBS_DASHBOARD_TOKEN")
    form = await request.form()
    given = str(form.get("token") or request.headers.get("authorization", ""))
    given = given.removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(403, "wrong token")
    job_id = _int(request.path_params["job_id"], "job id")
    verb = request.path_params["verb"]
    if verb not in ("cancel", "retry"):
        raise HTTPException(404, f"no action {verb!r}: cancel or retry")
    from vlmjobs.scheduler.submit import cancel, retry

    try:
        await run_in_threadpool(cancel if verb == "cancel" else retry, job_id)
    except JobNotFound as e:
        raise HTTPException(404, str(e)) from e
    except VlmjobsError as e:
        raise HTTPException(409, str(e)) from e
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


async def error_page(request: Request, exc: Exception) -> HTMLResponse:
    assert isinstance(exc, HTTPException)
    code = exc.status_code
    return page(request, "error.html", status=code, code=code, detail=exc.detail)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise HTTPException(400, f"{what} {text!r} is not a number") from None


def _overlay_png(out: dict[str, Any]) -> bytes:
    """The output's image with its regions drawn (the same drawing as `vlmjobs render`),
    scaled down to a tile. 404 when the source cannot be read any more."""
    import sys

    from vlmjobs.recipes.infer.inputs import decode_image, read_sources
    from vlmjobs.render import draw_regions

    [(source, data, error)] = list(read_sources([out["source"]]))
    if data is None:
        raise HTTPException(404, f"{source}: {error}")
    if out.get("t_start") is not None:  # a video's row: its frame at that time
        from vlmjobs.vision.video import VideoError, frames_at

        try:
            [frame] = frames_at(data, [float(out["t_start"])])
        except VideoError as e:
            raise HTTPException(404, f"{source}: {e}") from None
        if frame is None:
            raise HTTPException(404, f"{source}: no frame at {out['t_start']} s")
        picture = frame
    else:
        decoded = decode_image(data, max_image_pixels=sys.maxsize)
        if decoded.image is None:
            raise HTTPException(404, f"{source}: {decoded.error}")
        picture = decoded.image
    image = draw_regions(picture, out["regions"])
    image.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
