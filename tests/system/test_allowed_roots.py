"""VLMJOBS_ALLOWED_ROOTS: spec paths outside the roots are refused at submit (exit 2) and
again by the worker; symlinks are resolved first; the artifact root must be a path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlmjobs import settings
from vlmjobs.scheduler.submit import submit
from vlmjobs.specs import load_spec
from vlmjobs.specs.common import ModelSpec, check_allowed


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """allowed/{data,link-out -> ../outside}, outside/secret, artifacts/x."""
    for d in ("allowed/data", "outside", "artifacts/x"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "outside" / "secret").write_text("s")
    (tmp_path / "allowed" / "link-out").symlink_to(tmp_path / "outside")
    return tmp_path


@pytest.mark.parametrize(
    "roots, path, refused",
    [
        ("", "outside/secret", False),  # case: no roots set: anything goes
        ("allowed", "allowed/data", False),  # case: inside the root
        ("allowed", "allowed", False),  # case: the root itself
        ("allowed", "outside/secret", True),  # case: outside
        ("allowed", "allowed/link-out/secret", True),  # case: a symlink escaping the root
        ("allowed", "allowed/../outside", True),  # case: dot-dot escaping the root
        ("allowed", "artifacts/x", False),  # case: the artifact root is always allowed
        ("allowed" + os.pathsep + "outside", "outside/secret", False),  # case: second root
    ],
)
def test_check_allowed(
    tree: Path, monkeypatch: pytest.MonkeyPatch, roots: str, path: str, refused: bool
) -> None:
    monkeypatch.setenv("VLMJOBS_ARTIFACTS", str(tree / "artifacts"))
    joined = os.pathsep.join(str(tree / r) for r in roots.split(os.pathsep) if r)
    monkeypatch.setenv("VLMJOBS_ALLOWED_ROOTS", joined)
    if refused:
        with pytest.raises(ValueError, match="outside the allowed roots"):
            check_allowed(tree / path, "input")
    else:
        check_allowed(tree / path, "input")


def test_model_paths_and_hub_ids_are_checked(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMJOBS_ARTIFACTS", str(tree / "artifacts"))
    assert ModelSpec(path="Qwen/Qwen2.5-VL-3B-Instruct").path == "Qwen/Qwen2.5-VL-3B-Instruct"
    monkeypatch.setenv("VLMJOBS_ALLOWED_ROOTS", str(tree / "allowed"))
    assert ModelSpec(path=str(tree / "allowed" / "data")).path == str(tree / "allowed" / "data")
    with pytest.raises(ValueError, match="outside the allowed roots"):
        ModelSpec(path=str(tree / "outside"))
    with pytest.raises(ValueError, match="hub ids are refused"):
        ModelSpec(path="Qwen/Qwen2.5-VL-3B-Instruct")


def test_infer_adapter_outside_roots_is_refused(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmjobs.specs.infer import InferModelSpec

    monkeypatch.setenv("VLMJOBS_ARTIFACTS", str(tree / "artifacts"))
    monkeypatch.setenv("VLMJOBS_ALLOWED_ROOTS", str(tree / "allowed"))
    model = str(tree / "allowed" / "data")
    assert InferModelSpec(path=model, adapter="job:42").adapter == "job:42"
    with pytest.raises(ValueError, match="outside the allowed roots"):
        InferModelSpec(path=model, adapter=str(tree / "allowed" / "link-out"))


@pytest.mark.parametrize(
    "value",
    [
        "s3://bucket/vlmjobs",  # case: object store
        "file:///srv/artifacts",  # case: even file:// (mount paths are given bare)
    ],
)
def test_artifact_root_url_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("VLMJOBS_ARTIFACTS", value)
    with pytest.raises(ValueError, match="mount it") as err:
        settings.artifacts_root()
    assert value in str(err.value)


def test_submit_exits_2_outside_roots(
    tree: Path, vlmjobs_env: dict[str, str], vlmjobs_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMJOBS_ALLOWED_ROOTS", str(tree / "allowed"))
    ok = vlmjobs_cli("submit", "sleepy", "--set", f"data_dir={tree / 'allowed' / 'data'}")
    assert ok.exit_code == 0, ok.output
    bad = vlmjobs_cli("submit", "sleepy", "--set", f"data_dir={tree / 'allowed' / 'link-out'}")
    assert bad.exit_code == 2
    assert "outside the allowed roots" in bad.stderr
    assert str(tree / "outside") in bad.stderr  # names where the link really goes


@pytest.mark.slow
def test_worker_refuses_outside_roots(
    tree: Path, vlmjobs_env: dict[str, str], start_worker, wait_for_state
) -> None:
    # Submitted without roots (e.g. a stale CLI config); the worker's own setting still holds.
    job_id = submit(load_spec("sleepy", None, [f"data_dir={tree / 'outside'}"]))
    start_worker(env={"VLMJOBS_ALLOWED_ROOTS": str(tree / "allowed")})
    job = wait_for_state(job_id, {"failed", "succeeded"})
    assert job.state == "failed"
    assert "outside the allowed roots" in (job.error or "")
    assert job.attempts == 1  # refused for good: a retry cannot fix it


@pytest.fixture
def images(tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """allowed/data/{in.png, out.png -> outside/out.png, list.txt}; roots = allowed."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tree / "allowed" / "data" / "in.png")
    Image.new("RGB", (8, 8)).save(tree / "outside" / "out.png")
    (tree / "allowed" / "data" / "out.png").symlink_to(tree / "outside" / "out.png")
    monkeypatch.setenv("VLMJOBS_ARTIFACTS", str(tree / "artifacts"))
    monkeypatch.setenv("VLMJOBS_ALLOWED_ROOTS", str(tree / "allowed"))
    return tree / "allowed" / "data"


def test_infer_refuses_each_file_outside_roots(images: Path, tree: Path) -> None:
    from vlmjobs.recipes.infer.inputs import iter_items

    listing = tree / "allowed" / "list.txt"
    listing.write_text(f"data/in.png\n{tree / 'outside' / 'out.png'}\n")
    folder = {Path(i.source).name: i for i in iter_items([str(images)], ["*.png"], [])}
    assert folder["in.png"].data and folder["in.png"].error is None
    assert folder["out.png"].data is None and "outside the allowed roots" in folder["out.png"].error
    listed = list(iter_items([str(listing)], [], []))
    assert [i.error is None for i in listed] == [True, False]


def test_clean_and_train_refuse_images_outside_roots(images: Path, tree: Path) -> None:
    from vlmjobs.errors import DataError
    from vlmjobs.recipes.clean.images import check_image
    from vlmjobs.recipes.train.data import read_samples

    assert check_image(images / "in.png", None)[0] == (8, 8)
    size, (kind, message) = check_image(images / "out.png", None)
    assert size is None and kind == "outside_roots" and str(tree / "outside") in message
    line = '{"image": "%s", "prefix": "p", "suffix": "s"}\n'
    good, bad = images / "good.jsonl", images / "bad.jsonl"
    good.write_text(line % "in.png")
    bad.write_text(line % "in.png" + line % "../../outside/out.png")
    assert len(read_samples(good)) == 1
    with pytest.raises(DataError, match="record 2: image .* outside the allowed roots"):
        read_samples(bad)
