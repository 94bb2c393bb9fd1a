"""Fixtures for tests, benchmarks and the demo (``vlmjobs dev ...``), never used by a job.

build / build_family / build_qwen35 (random checkpoints of every family, offline) ->
corpus (the tokenizer's text) ; shapes (synthetic images + truth) -> pretrain (the demo
model) -> shapes_score (how well a job found the shapes).
"""
