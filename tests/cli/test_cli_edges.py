"""The CLI refuses bad values with exit 2, the choices and no traceback; cancel reports per id."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url  # argument checking does not depend on the backend


@pytest.fixture(autouse=True)
def _test_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "system"))
    monkeypatch.setenv("VLMJOBS_PLUGINS", "vlmjobs_testkinds")


@pytest.mark.parametrize(
    "args, says",
    [
        pytest.param(["status", "--state", "runing"], "'runing' is not one of", id="state-typo"),
        pytest.param(["status", "--kind", "trian"], "'trian' is not a job kind", id="kind-typo"),
        pytest.param(["status", "99999999999999999999"], "99999999999999999999", id="id-too-big"),
        pytest.param(["status", "0"], "not in the range", id="id-zero"),
        pytest.param(["logs", "2147483648"], "not in the range", id="logs-id-over-int32"),
        pytest.param(["cancel", "1", "-5"], "No such option", id="cancel-negative"),
        pytest.param(["submit", "trian", "x.yaml"], "'trian' is not a job kind", id="submit-kind"),
        pytest.param(["submit", "sleepy", "--priority", "12"], "priority:", id="priority"),
        pytest.param(["results", "4294967296"], "not in the range", id="results-id"),
    ],
)
def test_bad_arguments_exit_2_with_the_choices(vlmjobs_cli, args: list[str], says: str) -> None:
    res = vlmjobs_cli(*args)
    assert res.exit_code == 2, res.output
    assert says in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_state_choices_are_listed(vlmjobs_cli) -> None:
    res = vlmjobs_cli("status", "--state", "done")
    assert res.exit_code == 2
    for state in ("queued", "running", "succeeded", "failed", "cancelled"):
        assert state in res.stderr


def test_submit_help_lists_the_kinds(vlmjobs_cli) -> None:
    res = vlmjobs_cli("submit", "--help")
    assert res.exit_code == 0
    assert "KIND is one of: clean, eval, infer, noop, sleepy, train" in " ".join(res.output.split())


def test_missing_model_path_is_refused_at_submit(vlmjobs_cli, tmp_path: Path) -> None:
    spec = tmp_path / "infer.yaml"
    spec.write_text(f"kind: infer\nmodel:\n  path: ./no/such/model\ninputs: [{tmp_path}]\n")
    res = vlmjobs_cli("submit", "infer", str(spec))
    assert res.exit_code == 2, res.output
    assert "model.path" in res.stderr and "does not exist locally" in res.stderr


def test_cancel_reports_per_id(vlmjobs_cli) -> None:
    first = vlmjobs_cli("submit", "sleepy", "--set", "items=1")
    assert first.exit_code == 0, first.output
    job = first.stdout.strip()
    res = vlmjobs_cli("cancel", job, job, "999")
    lines = res.stdout.splitlines()
    assert lines == [f"job {job}: cancelled", f"job {job}: already cancelled, nothing to do"]
    assert res.exit_code == 2 and "no job(s) [999]" in res.stderr
