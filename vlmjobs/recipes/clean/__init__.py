"""The clean kind: region captions -> grouped, de-duplicated, Qwen chat JSONL.

recipe (run) -> formats (read COCO / VG / JSONL) -> images (check headers, panels) ->
dedup (IoU groups) + embed (phrase vectors) -> records (targets, splits) -> report.
"""
