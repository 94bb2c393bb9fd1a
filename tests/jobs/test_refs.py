"""`job:ID` references (clean -> train data, train -> infer adapter), against a real database."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmjobs import settings
from vlmjobs.db.models import Job, State
from vlmjobs.db.session import session
from vlmjobs.recipes.refs import is_job_ref, resolve_job_ref


def _job(kind: str, state: str, result: dict | None) -> int:
    with session() as s:
        job = Job(kind=kind, spec={}, state=state, queue="cpu", result=result)
        s.add(job)
        s.flush()
        return job.id


@pytest.mark.parametrize(
    "value, expected",
    [
        ("job:42", True),  # case: the form
        ("job:", False),  # case: no id
        ("job:4x", False),  # case: not a number
        ("jobs/42/data", False),  # case: a relative path that looks alike
        (None, False),  # case: unset
    ],
)
def test_is_job_ref(value: str | None, expected: bool) -> None:
    assert is_job_ref(value) is expected


def test_resolves_a_relative_result_against_the_artifact_root(
    vlmjobs_env: dict[str, str],
) -> None:
    job_id = _job("clean", State.succeeded, {"data_dir": "jobs/7/data"})
    path = resolve_job_ref(f"job:{job_id}", kind="clean", key="data_dir", what="data.path")
    assert path == settings.artifacts_root() / "jobs/7/data"


@pytest.mark.parametrize(
    "kind, state, result, message",
    [
        ("train", State.succeeded, {"data_dir": "x"}, "is a train job; name a clean job"),  # case
        ("clean", State.running, None, "is running and has no data_dir yet"),  # case: not done
        ("clean", State.failed, {"error": "x"}, "is failed and has no data_dir"),  # case: failed
        ("clean", State.succeeded, {"images": 3}, "has no data_dir"),  # case: stopped early
    ],
)
def test_bad_references_say_what_is_wrong(
    vlmjobs_env: dict[str, str], kind: str, state: str, result: dict | None, message: str
) -> None:
    job_id = _job(kind, state, result)
    with pytest.raises(ValueError, match=message):
        resolve_job_ref(f"job:{job_id}", kind="clean", key="data_dir", what="data.path")


def test_missing_job(vlmjobs_env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="no such job; name a clean job's id"):
        resolve_job_ref("job:999999", kind="clean", key="data_dir", what="data.path")


def test_train_spec_keeps_the_reference_and_resolves_it(
    vlmjobs_env: dict[str, str], tmp_path: Path
) -> None:
    from vlmjobs.recipes.train.data import data_path
    from vlmjobs.specs import SpecError, load_spec

    data = settings.artifacts_root() / "jobs/1/data"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("")
    job_id = _job("clean", State.succeeded, {"data_dir": "jobs/1/data"})
    model = tmp_path / "model"
    model.mkdir()  # no config.json: the preflight is skipped, the reference is still checked
    given = [f"model.path={model}", f"data.path=job:{job_id}"]
    spec = load_spec("train", None, given, resolve_job_ref=resolve_job_ref)
    assert spec.data.path == f"job:{job_id}"  # stored as written: each host resolves it
    assert data_path(spec) == data
    with pytest.raises(SpecError) as err:
        bad = [f"model.path={model}", "data.path=job:999999"]
        load_spec("train", None, bad, resolve_job_ref=resolve_job_ref)
    assert err.value.problems[0][0] == "data.path"
