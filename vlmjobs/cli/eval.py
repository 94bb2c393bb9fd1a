"""`vlmjobs eval --pred job:42|FILE [--pred ...] --gt FILE [--metric ...] [--json]`."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import click

from vlmjobs.cli.app import cli, friendly_errors
from vlmjobs.errors import JobNotFound
from vlmjobs.eval.coco import UNMATCHED
from vlmjobs.eval.score import METRICS

COUNTS = {"queries", "detections", "ground_truth"}  # shown as integers
TOP_UNKNOWN = 10  # the most frequent unknown phrases shown (stderr) and listed (--json)

# The columns of the table (--json has every key).
COLUMNS = {
    "coco": ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"],
    "densecap": [
        "mAP",
        "AP_loc",
        "AP_iou0.3",
        "AP_iou0.5",
        "AP_iou0.7",
        "AP_sim0.5",
        "AP_sim0.7",
        "AP_sim0.9",
    ],
    "grounding": ["acc@0.5", "queries"],
    "json": ["field_accuracy", "exact_match", "parse_rate"],
    "text": ["edit_distance", "exact_match"],
}


@cli.command("eval")
@click.option(
    "--pred",
    "preds",
    multiple=True,
    required=True,
    help="job:ID or an exported file; 2+ to compare",
)
@click.option("--gt", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--metric", type=click.Choice(METRICS), help="default: from the ground truth's shape")
@click.option("--class-agnostic", is_flag=True, help="coco: any phrase may find any box")
@click.option(
    "--unmatched",
    type=click.Choice(UNMATCHED),
    help="coco: regions whose phrase names no category are left out (exclude, the default), "
    "or false positives of the category of the truth box they overlap most (fp)",
)
@click.option("--json", "as_json", is_flag=True, help="print the scores as JSON")
@friendly_errors
def eval_cmd(
    preds: tuple[str, ...],
    gt: Path,
    metric: str | None,
    class_agnostic: bool,
    unmatched: str | None,
    as_json: bool,
) -> None:
    """Score predictions against ground truth (images matched by file name).

    Ground truth: COCO instances JSON, Visual Genome region_descriptions.json, regions.jsonl,
    or {image, suffix} JSONL. Region metrics are shown ranked by confidence and with every
    confidence 1.0. coco: phrases that name no ground-truth category are counted and listed
    (--unmatched says whether they are left out or scored as false positives).
    """
    from vlmjobs.eval.data import load_truth
    from vlmjobs.eval.score import default_metric, score

    truth = _checked(lambda: load_truth(gt), "--gt")
    metric = metric or default_metric(truth)
    _check_coco_options(metric, class_agnostic, unmatched)
    unmatched = unmatched or "exclude"
    rows = []
    for ref in preds:
        loaded = _checked(lambda ref=ref: _load_predictions(ref, truth), "--pred")
        rows += _checked(
            lambda p=loaded: score(
                truth, p, metric, class_agnostic=class_agnostic, unmatched=unmatched
            ),
            "--metric",
        )
    for row in rows[:: 1 if metric in ("json", "text") else 2]:
        click.echo(f"{row.label}: {row.match.summary()}", err=True)
        if row.unknown_phrases:
            click.echo("  " + _unknown_summary(row.unknown_phrases, unmatched), err=True)
    if as_json:
        doc = {
            "metric": metric,
            "gt": str(gt),
            "unmatched": unmatched,
            "results": [_json_row(r) for r in rows],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(_table(rows, COLUMNS[metric]))


def _check_coco_options(metric: str, class_agnostic: bool, unmatched: str | None) -> None:
    """The COCO-only flags: an error rather than a score computed without them."""
    if metric != "coco" and (class_agnostic or unmatched):
        flag = "--class-agnostic" if class_agnostic else f"--unmatched {unmatched}"
        raise click.BadParameter(
            f"{flag} applies to --metric coco only, not {metric} (densecap's AP_loc is the "
            "class-agnostic view): drop it or pass --metric coco",
            param_hint="--metric",
        )
    if class_agnostic and unmatched:
        raise click.BadParameter(
            f"--unmatched {unmatched} with --class-agnostic: every phrase matches the one "
            "category there, so nothing is unmatched; drop one of them",
            param_hint="--unmatched",
        )


def _checked(fn: Any, hint: str) -> Any:
    try:
        return fn()
    except (ValueError, KeyError, OSError) as e:
        raise click.BadParameter(str(e), param_hint=hint) from e


def _load_predictions(ref: str, truth: Any) -> Any:
    from vlmjobs.eval.data import load_predictions, predictions_from_outputs
    from vlmjobs.recipes.refs import JOB_REF

    found = JOB_REF.match(ref)
    if found is None:
        path = Path(ref)
        if not path.is_file():
            raise ValueError(f"{ref!r} is neither job:ID nor a file")
        return load_predictions(path, truth)
    from vlmjobs.cli.results import load_job
    from vlmjobs.db.outputs import iter_outputs

    job = load_job(int(found.group(1)))
    if job["kind"] not in ("infer", "eval"):
        raise JobNotFound(
            f"job {job['id']} is a {job['kind']} job: predictions come from infer jobs"
        )
    return predictions_from_outputs(iter_outputs(job["id"]), ref)


def _unknown_summary(unknown: Counter[str], unmatched: str) -> str:
    """One line: how many regions named no category, what became of them, the top phrases."""
    top = ", ".join(f"{p!r} x{n}" for p, n in unknown.most_common(TOP_UNKNOWN))
    fate = {
        "exclude": "were left out (--unmatched fp counts them as false positives)",
        "fp": "were counted as false positives",
    }[unmatched]
    return f"{sum(unknown.values())} region(s) name no ground-truth category and {fate}: {top}"


def _json_row(row: Any) -> dict[str, Any]:
    clean = {k: (None if math.isnan(v) else v) for k, v in row.metrics.items()}
    return {
        "pred": row.label,
        "ranking": row.ranking,
        "metrics": clean,
        "images_matched": len(row.match.pairs),
        "images_unmatched_pred": sorted(row.match.unmatched_pred + row.match.ambiguous),
        "images_without_pred": len(row.match.unmatched_gt),
        "images_without_pred_names": sorted(row.match.unmatched_gt),
        "regions_unknown_phrase": sum(row.unknown_phrases.values()),
        "unknown_phrases_top": [[p, n] for p, n in row.unknown_phrases.most_common(TOP_UNKNOWN)],
    }


def _cell(column: str, value: float) -> str:
    return f"{value:.0f}" if column in COUNTS else f"{value:.4f}"


def _table(rows: list[Any], columns: list[str]) -> str:
    header = ["pred", "ranking", *columns]
    body = [[row.label, row.ranking, *(_cell(c, row.metrics[c]) for c in columns)] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    return "\n".join(
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True))
        for line in [header, *body]
    )
