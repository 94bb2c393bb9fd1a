"""What a job asks the model to do: one prompt per task, and which parser reads the answer.

| task          | parser    | answer                                             |
| ------------- | --------- | -------------------------------------------------- |
| dense_caption | regions   | every object, a box and a short phrase each        |
| detect        | regions   | boxes of the given labels                          |
| ground        | regions   | the box(es) of one referring phrase                |
| extract_json  | json      | a JSON object (fields named in the prompt)         |
| caption       | text      | one description of the image                       |
| custom        | text      | whatever ``prompt`` asks                           |
| describe      | text      | what happens in a video (or window); an image: it  |

Boxes in answers are Qwen2.5-VL's own format: absolute pixels of the resized
input frame (vision/frames.py), a ```json list of {"bbox_2d": [...], "label": ...}.
"""

from __future__ import annotations

from typing import Literal, get_args

# Every task name, once: specs, manifests, prompts and parsers all take theirs from here.
Task = Literal["dense_caption", "detect", "ground", "extract_json", "caption", "custom", "describe"]
Parser = Literal["regions", "json", "text"]

TASKS: tuple[str, ...] = get_args(Task)
# What each kind can do with a task: clean writes targets from annotations (a ground target
# needs a query per record, describe a video); eval scores image answers (not describe).
CLEAN_TASKS: tuple[str, ...] = ("dense_caption", "detect", "caption", "extract_json", "custom")
EVAL_TASKS: tuple[str, ...] = tuple(t for t in TASKS if t != "describe")


def check_task(task: str | None, allowed: tuple[str, ...], kind: str) -> str | None:
    """``task`` when ``allowed``; else a ValueError naming the choices (a spec validator)."""
    if task is not None and task not in allowed:
        raise ValueError(f"task {task!r} is not one a {kind} job can do: {', '.join(allowed)}")
    return task


PARSERS: dict[str, Parser] = {
    "dense_caption": "regions",
    "detect": "regions",
    "ground": "regions",
    "extract_json": "json",
    "caption": "text",
    "custom": "text",
    "describe": "text",
}
DEFAULT_SYSTEM = "You are a helpful assistant."

DENSE_CAPTION_PROMPT = (
    "Locate every object in the image and describe each with a short phrase; "
    'output the bbox_2d coordinates and labels in JSON format, as [{"bbox_2d": '
    '[x1, y1, x2, y2], "label": "phrase"}].'
)
DETECT_PROMPT = (
    "Locate every {labels} in the image; output the bbox_2d coordinates and labels in JSON format."
)
GROUND_PROMPT = "Locate {phrase} in the image; output its bbox_2d coordinates in JSON format."
EXTRACT_JSON_PROMPT = "Extract the information in the image as a JSON object."
CAPTION_PROMPT = "Describe this image in one sentence."
# A video (or window) goes to the model as a video; an image with this task as an image.
DESCRIBE_PROMPT = "Describe what happens in this video."


def _check(task: str) -> None:
    if task not in PARSERS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")


def prompt_for(
    task: str,
    *,
    labels: list[str] | None = None,
    phrase: str | None = None,
    prompt: str | None = None,
) -> str:
    """The user prompt for ``task``; an explicit ``prompt`` always wins.

    ``detect`` needs ``labels`` (joined "a, b or c"), ``ground`` needs ``phrase``,
    ``custom`` needs ``prompt``; a missing one is a ValueError saying which.
    """
    _check(task)
    if prompt:
        return prompt
    if task == "dense_caption":
        return DENSE_CAPTION_PROMPT
    if task == "detect":
        if not labels:
            raise ValueError("task 'detect' needs labels (the object names to find)")
        names = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " or " + labels[-1]
        return DETECT_PROMPT.format(labels=names)
    if task == "ground":
        if not phrase:
            raise ValueError("task 'ground' needs phrase (the referring expression to locate)")
        return GROUND_PROMPT.format(phrase=phrase)
    if task == "extract_json":
        return EXTRACT_JSON_PROMPT
    if task == "caption":
        return CAPTION_PROMPT
    if task == "describe":
        return DESCRIBE_PROMPT
    raise ValueError("task 'custom' needs prompt (the instruction text)")


def parser_for(task: str) -> Parser:
    """Which parser reads ``task``'s answers: "regions", "json" or "text"."""
    _check(task)
    return PARSERS[task]
