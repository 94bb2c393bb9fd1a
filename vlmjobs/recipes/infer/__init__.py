"""The infer kind: batched predictions, parsed into regions.

recipe (run) -> plan (spec + manifest -> what to ask, how to read answers) -> memory
(batch preflight) -> inputs (folders, archives, decoding) -> score (region confidence).
"""
