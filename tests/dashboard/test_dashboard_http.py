"""The dashboard over HTTP, without a browser: bad input, read-only mode, the token."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from vlmjobs.db.models import Job
from vlmjobs.db.session import session
from vlmjobs.scheduler.submit import submit
from vlmjobs.specs import load_spec

pytestmark = pytest.mark.slow  # a server process each


def _get(url: str | urllib.request.Request) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _post(url: str, token: str | None = None, form: bytes = b"") -> tuple[int, str]:
    request = urllib.request.Request(url, data=form, method="POST")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    return _get(request)


def _state(job_id: int) -> str:
    with session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.state


@pytest.mark.parametrize(
    "path, code, says",
    [
        pytest.param(
            "/jobs/abc", 400, "job id &#39;abc&#39; is not a number", id="id-not-a-number"
        ),
        pytest.param("/jobs/999", 404, "no job 999", id="unknown-job"),
        pytest.param(
            "/jobs/1/gallery?page=x", 400, "page &#39;x&#39; is not a number", id="bad-page"
        ),
        pytest.param("/?state=done", 400, "state &#39;done&#39; is not one of", id="bad-state"),
        pytest.param("/nope", 404, "Not Found", id="unknown-page"),
    ],
)
def test_bad_input_gets_a_page_that_says_why(start_dashboard, path, code, says) -> None:
    submit(load_spec("noop", None, []))  # job 1 exists, queued (no worker)
    status, body = _get(start_dashboard() + path)
    assert status == code and says in body


def test_read_only_unless_a_token_is_set(start_dashboard) -> None:
    job_id = submit(load_spec("noop", None, []))
    url = start_dashboard()
    status, body = _post(f"{url}/jobs/{job_id}/cancel", token="anything")
    assert status == 403 and "read-only" in body
    assert 'name="token"' not in _get(f"{url}/jobs/{job_id}")[1]  # no form offered
    assert _state(job_id) == "queued"


def test_token_cancels_and_retries(start_dashboard) -> None:
    job_id = submit(load_spec("noop", None, []))
    url = start_dashboard(token="t0ken")
    assert 'name="token"' in _get(f"{url}/jobs/{job_id}")[1]
    assert _post(f"{url}/jobs/{job_id}/cancel", token="wrong")[0] == 403
    assert _post(f"{url}/jobs/{job_id}/cancel", form=b"token=")[0] == 403
    assert _state(job_id) == "queued"
    status, body = _post(f"{url}/jobs/{job_id}/cancel", form=b"token=t0ken")
    assert status == 200 and f"Job {job_id}" in body  # redirected to the job's page
    assert _state(job_id) == "cancelled"
    status, body = _post(f"{url}/jobs/{job_id}/cancel", token="t0ken")
    assert status == 200 and _state(job_id) == "cancelled"  # cancelling again: no change
    assert _post(f"{url}/jobs/{job_id}/retry", token="t0ken")[0] == 200
    assert _state(job_id) == "queued"
    status, body = _post(f"{url}/jobs/{job_id}/retry", token="t0ken")
    assert status == 409 and "only failed or cancelled jobs can be retried" in body
    assert _post(f"{url}/jobs/{job_id}/delete", token="t0ken")[0] == 404


def test_busy_port_is_refused_with_exit_2(start_dashboard, vlmjobs_env) -> None:
    port = start_dashboard().rsplit(":", 1)[1]
    argv = [sys.executable, "-c", "from vlmjobs.cli.main import cli; cli()", "dashboard"]
    res = subprocess.run(
        [*argv, "--port", port], env=vlmjobs_env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and f"127.0.0.1:{port} is in use" in res.stderr
