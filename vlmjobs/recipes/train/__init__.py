"""The train kind: QLoRA on clean's output.

recipe (run, preflight) -> data (records -> batches) -> model (LoRA, loss, memory
estimate) + vision_cache (the frozen tower's output) -> eval (periodic scoring) ->
checkpoints (save, resume) -> report (curves, summary).
"""
