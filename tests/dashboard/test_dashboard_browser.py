"""The web dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright),
against a real stack: Redis, a `vlmjobs worker` process running jobs, SQLite, and a
`vlmjobs dashboard` process. Every page is loaded, its content checked, a screenshot
saved; any console error or failed request fails the test.

Screenshots go to the test's temp dir, and also to $VLMJOBS_SCREENSHOTS when set (that is
how the README's pictures are made).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image, ImageDraw

from vlmjobs.dev.build import make_model
from vlmjobs.dev.shapes import make_shapes

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "s3cret-for-tests"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    # CI installs chromium (deploy/setup.sh --with-postgres): there a missing browser fails.
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="no /usr/bin/chromium: apt-get install -y chromium",
    ),
]


@pytest.fixture
def dashboard(start_dashboard: Callable[..., str]) -> str:
    return start_dashboard(token=TOKEN)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


class Checked:
    """A page that records console errors, uncaught exceptions and failed requests."""

    def __init__(self, browser: Any, shots: list[Path]) -> None:
        self.page = browser.new_page(viewport={"width": 1200, "height": 760})
        self.problems: list[str] = []
        self.shots = shots
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", self._response)

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.problems.append(f"console: {msg.text}")

    def _failed(self, request: Any) -> None:
        # A poll in flight when the test navigates away is aborted by the browser: not a fault.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"failed: {request.url} ({request.failure})")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")

    def goto(self, url: str) -> Any:
        self.page.goto(url, wait_until="networkidle")
        return self.page

    def shot(self, name: str, whole: bool = False) -> None:
        """A PNG of the viewport, or of the whole page (grown from a short viewport)."""
        if whole:
            self.page.set_viewport_size({"width": 1200, "height": 320})
        for folder in self.shots:
            self.page.screenshot(path=str(folder / f"dashboard-{name}.png"), full_page=whole)
        self.page.set_viewport_size({"width": 1200, "height": 760})


def _submit(vlmjobs_cli: Any, *args: str) -> int:
    res = vlmjobs_cli("submit", *args)
    assert res.exit_code == 0, res.stderr
    return int(res.stdout)


def _train_config(tmp_path: Path) -> Path:
    """A 3-epoch LoRA run of the tiny model on 8 images of one box each (9 steps, seconds)."""
    model = make_model(tmp_path / "tiny", arch="tiny", seed=0)
    folder = tmp_path / "boxes"
    folder.mkdir()
    lines = []
    for i in range(8):
        x, y = 4 + 3 * i, 6 + 2 * i
        image = Image.new("RGB", (84, 56 + 28 * (i % 2)), "white")
        ImageDraw.Draw(image).rectangle([x, y, x + 20, y + 16], fill="red")
        image.save(folder / f"{i}.png")
        answer = json.dumps([{"bbox_2d": [x, y, x + 20, y + 16], "label": "red box"}])
        lines.append(json.dumps({"image": f"{i}.png", "prefix": "Find it.", "suffix": answer}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    config = {
        "name": "tiny lora",
        "model": {"path": str(model), "quantization": "none", "dtype": "fp32",
                  "min_pixels": 28 * 28, "max_pixels": 112 * 112},
        "data": {"path": str(folder / "data.jsonl"), "val_fraction": 0.25},
        "epochs": 3,
        "micro_batch_size": 2,
        "optim": {"lr": 2e-2, "warmup_steps": 1},
        "eval": {"max_samples": 2, "generate": False, "every_steps": 3},
        "checkpoint": {"every_steps": 6, "keep_last": 2},
        "gradient_checkpointing": "none",
    }  # fmt: skip
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _jobs(vlmjobs_cli: Any, shapes: Path, tmp_path: Path) -> dict[str, int]:
    """Jobs in every state the pages show, submitted in the order the worker runs them."""
    regions = str(shapes / "regions.jsonl")
    return {
        "train": _submit(vlmjobs_cli, "train", str(_train_config(tmp_path))),
        "curves": _submit(vlmjobs_cli, "sleepy", "--set", "items=12", "--name", "loss curve"),
        "failed": _submit(vlmjobs_cli, "sleepy", "--set", "fail=value", "--name", "a bug"),
        "replay": _submit(
            vlmjobs_cli, "replay", "--set", f"regions_file={regions}", "--name", "shapes"
        ),
        "long": _submit(
            vlmjobs_cli, "sleepy", "--set", "items=300", "--set", "sleep_s=0.05", "--name", "long"
        ),
    }


def test_every_page_in_a_real_browser(
    vlmjobs_cli, start_worker, wait_for_state, dashboard, browser, tmp_path
) -> None:
    shapes = make_shapes(tmp_path / "shapes", n=8, seed=1)
    truth = [json.loads(x) for x in (shapes / "regions.jsonl").read_text().splitlines()]
    assert vlmjobs_cli("schedule", "add", "nightly", "sleepy", "--every", "1h").exit_code == 0
    worker = start_worker(queues="cpu,gpu", env={"OMP_NUM_THREADS": "1"})
    ids = _jobs(vlmjobs_cli, shapes, tmp_path)
    for name in ("train", "curves", "replay"):
        wait_for_state(ids[name], "succeeded", timeout=120)
    wait_for_state(ids["failed"], "failed", timeout=30)
    wait_for_state(ids["long"], "running", timeout=30)
    run = vlmjobs_cli("schedule", "run-now", "nightly")  # queued behind the long job
    assert run.exit_code == 0, run.stderr

    shots = [tmp_path]
    if os.environ.get("VLMJOBS_SCREENSHOTS"):
        shots.append(Path(os.environ["VLMJOBS_SCREENSHOTS"]))
    view = Checked(browser, shots)

    # Job list: every job with its state; the running one moves without a reload.
    page = view.goto(dashboard + "/")
    for name, state in [("curves", "succeeded"), ("failed", "failed"), ("replay", "succeeded")]:
        assert state in page.inner_text(f"tr[data-job='{ids[name]}']")
    long_row = f"tr[data-job='{ids['long']}'] td.progress"
    before = page.inner_text(long_row)
    page.wait_for_function(
        "([sel, old]) => document.querySelector(sel).innerText !== old",
        arg=[long_row, before],
        timeout=10_000,
    )
    view.shot("jobs", whole=True)

    # A train job's page: its curves from the metrics table, checkpoints, result, events, log.
    page = view.goto(f"{dashboard}/jobs/{ids['train']}")
    charts = page.eval_on_selector_all("svg.chart", "els => els.map(e => e.ariaLabel)")
    assert charts[:2] == ["loss", "val_loss"] and {"lr", "grad_norm"} <= set(charts)
    assert "loss=" in page.inner_text(".summary") and "val_loss=" in page.inner_text(".summary")
    assert "checkpoints/step-" in page.inner_text("main") and "best" in page.inner_text("main")
    assert "adapter" in page.inner_text("pre.result")
    assert "succeeded" in page.inner_text("table.events")
    assert "attempt 1" in page.inner_text("pre.log")
    view.shot("job")
    page = view.goto(f"{dashboard}/jobs/{ids['curves']}")
    assert page.locator("svg.chart[aria-label='loss'] polyline").count() == 1
    assert "items  12" in page.inner_text("pre.result")
    failed = view.goto(f"{dashboard}/jobs/{ids['failed']}").inner_text("main")
    assert "ValueError: sleepy was told to fail" in failed and "Traceback" in failed

    # The gallery: overlays drawn from the real image files, regions, the score histogram.
    page = view.goto(f"{dashboard}/jobs/{ids['replay']}/gallery")
    assert page.locator("figure").count() == len(truth)
    sizes = page.eval_on_selector_all("figure img", "els => els.map(e => e.naturalWidth)")
    assert len(sizes) == len(truth) and all(w > 0 for w in sizes)
    assert truth[0]["regions"][0]["phrase"] in page.inner_text("figure >> nth=0")
    assert page.locator(".hist svg rect.hbar").count() == 10
    view.shot("gallery")
    wanted = sum(any("circle" in r["phrase"] for r in t["regions"]) for t in truth)
    page.fill("input[name=phrase]", "circle")
    page.click("button:has-text('filter')")
    page.wait_for_load_state("networkidle")
    assert page.locator("figure").count() == wanted and 0 < wanted < len(truth)

    page = view.goto(dashboard + "/workers")
    assert f"cpu.{worker.pid}@" in page.inner_text("table") and "CPU" in page.inner_text("table")
    view.shot("workers", whole=True)
    page = view.goto(dashboard + "/schedules")
    row = page.inner_text("table tbody tr")
    assert "nightly" in row and "every 3600s" in row and "(in 59m)" in row
    assert f"{int(run.stdout)} queued" in row and "(1 runs, 0 skipped)" in row
    view.shot("schedules", whole=True)

    # Actions need the token: a wrong one is refused, the right one cancels.
    request = urllib.request.Request(
        f"{dashboard}/jobs/{ids['long']}/cancel", data=b"token=wrong", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 403
    page = view.goto(f"{dashboard}/jobs/{ids['long']}")
    page.fill("input[name=token]", TOKEN)
    page.click("button:has-text('cancel')")
    wait_for_state(ids["long"], "cancelled", timeout=20)
    page.wait_for_selector("h1 .state.cancelled", timeout=10_000)  # the page polled it in

    assert view.problems == []

    # Outputs whose images cannot be read (sleepy's are `mem://`): a note, not a broken image.
    page = view.goto(f"{dashboard}/jobs/{ids['curves']}/gallery")
    page.wait_for_function("document.querySelectorAll('figure img').length === 0")
    assert page.locator("text=image not readable any more").count() == 12
