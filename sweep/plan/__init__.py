"""What to run: the config schema (`config`, the only module that touches Hydra) and the
grid's points with their deterministic keys and graphs (`grid`), and the quality text cut
into windows (`eval_text`).

Imports `workers` value types only; never `sweep.execute`, `sweep.store`,
`sweep.search`, `sweep.readers`, nor Ray.
"""
