"""The eval kind: infer on a ground-truth split through the infer recipe, then score it."""
