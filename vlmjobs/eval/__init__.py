"""Scoring predictions against ground truth: pure functions, no database, no model.

| module | what it gives |
| --- | --- |
| ``answers.py`` | one answer vs its target: region P/R/F1, JSON fields, edit distance |
| ``data.py`` | ground truth and predictions read into one shape (``Truth``, ``Predictions``) |
| ``images.py`` | which prediction belongs to which ground-truth image (by file name) |
| ``coco.py`` | COCO bbox AP/AR computed by pycocotools |
| ``densecap.py`` | DenseCap-style mAP over IoU x phrase-similarity thresholds |
| ``score.py`` | one entry point: truth + predictions + metric -> rows (ranked, confidence=1) |
| ``tasks.py`` | grounding accuracy, JSON field accuracy / exact match, text edit distance |
"""
