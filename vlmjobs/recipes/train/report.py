"""Where a train job's numbers go besides the metrics table: its log, and optional trackers.

- ``step_line`` / ``eval_line``: the lines `vlmjobs logs -f` shows every
  ``log_every_steps`` steps and at each evaluation.
- ``Trackers``: what ``report_to`` names (tensorboard | wandb | mlflow), each an extra,
  each written offline into the job's folder; nothing is sent anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmjobs.errors import DataError


def duration(seconds: float) -> str:
    """``75.2`` -> ``1m15s``; ``3725`` -> ``1h02m``; under a minute ``42s``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def step_line(step: int, total: int, values: dict[str, float], eta_s: float | None) -> str:
    """``step 40/120 loss 1.2345 lr 2.00e-04 grad_norm 0.871 samples/s 12.3 eta 1m05s``."""
    parts = [f"step {step}/{total}", f"loss {values['loss']:.4f}", f"lr {values['lr']:.2e}"]
    parts.append(f"grad_norm {values['grad_norm']:.3f}")
    parts.append(f"samples/s {values['samples_per_s']:.1f}")
    if "gpu_mem_gib" in values:
        parts.append(f"gpu_mem {values['gpu_mem_gib']:.2f} GiB")
    parts.append(f"eta {duration(eta_s)}" if eta_s is not None else "eta ?")
    return " ".join(parts)


def eval_line(step: int, metrics: dict[str, float]) -> str:
    """``eval step 40: loss 0.9123 region_f1 0.6250 parse_rate 1.0000``."""
    return f"eval step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))


class Trackers:
    """The experiment trackers ``report_to`` names, all writing under ``folder``, offline.

    TensorBoard: event files in ``folder/tensorboard``. wandb: offline mode, run files in
    ``folder/wandb`` (``wandb sync`` uploads them later). MLflow: a file store in
    ``folder/mlruns`` (``mlflow ui --backend-store-uri folder/mlruns``).
    """

    def __init__(
        self, names: Sequence[str], folder: Path, run_name: str, config: dict[str, Any]
    ) -> None:
        self._tb: Any = None
        self._wandb: Any = None
        self._mlflow: Any = None
        if "tensorboard" in names:
            self._tb = _tensorboard(folder / "tensorboard")
        if "wandb" in names:
            self._wandb = _wandb(folder, run_name, config)
        if "mlflow" in names:
            self._mlflow = _mlflow(folder / "mlruns", run_name, config)

    def log(self, values: dict[str, float], step: int) -> None:
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)
        if self._mlflow is not None:
            self._mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._mlflow is not None:
            self._mlflow.end_run()


def _missing(name: str, error: ImportError) -> DataError:
    return DataError(
        f"report_to names {name!r} but it is not installed ({error}): "
        f"pip install 'vlmjobs[{name}]' on the worker, or remove it from report_to"
    )


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise _missing("tensorboard", error) from None
    return SummaryWriter(log_dir=str(folder))


def _wandb(folder: Path, run_name: str, config: dict[str, Any]) -> Any:
    try:
        import wandb
    except ImportError as error:
        raise _missing("wandb", error) from None
    # Offline always: the workers may have no route out; `wandb sync` uploads later.
    return wandb.init(
        mode="offline", dir=str(folder), name=run_name, config=config, reinit="create_new"
    )


def _mlflow(store: Path, run_name: str, config: dict[str, Any]) -> Any:
    try:
        import mlflow
    except ImportError as error:
        raise _missing("mlflow", error) from None
    mlflow.set_tracking_uri(store.resolve().as_uri())
    mlflow.start_run(run_name=run_name)
    mlflow.log_params({k: str(v)[:500] for k, v in config.items()})
    return mlflow
