"""The recipes: what a job of each kind does, one subpackage per kind.

Each kind's ``recipe.py`` exposes ``run(spec, ctx) -> dict`` (and, for train and infer, a
``preflight(spec)`` that submit and the recipe's setup call). The registry that maps a
kind's name to these lives in ``vlmjobs.kinds``; ``context.py`` is what a recipe may ask of
the worker (progress, events, metrics, atomic publishing) and ``refs.py`` resolves
``job:42`` references to another job's output.

    clean/   IoU grouping + semantic de-duplication -> Qwen chat JSONL
    train/   QLoRA with checkpoints, periodic eval and the vision-tower cache
    infer/   batched predictions over folders and archives, parsed into regions
    eval/    infer on a ground-truth split, then score it (vlmjobs.eval)

None of this imports torch at package import: each recipe imports it when it runs.
"""
