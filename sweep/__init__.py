"""sweep: the driver side of a sweep (the compute side is `workers`).

    sweep/__main__.py, run.py   the entry: parse the config, plan, run, summarise, exit code
    sweep/plan/                 config schema (the only Hydra) and grid -> points
    sweep/execute/              scheduling rules, Ray (the only Ray), claims, progress
    sweep/store/                rows, the Parquet schema, writing and reading, compaction
    sweep/search/               the search space, the study loop, its ablation and summaries
    sweep/readers/              report, compare, query, plots: tables over the results
    sweep/offline/              the bundle for an offline GPU host
    sweep/report.py, compare.py, query.py, bundle.py   `python -m sweep.X`, one line each

Lower layers never import higher ones: plan and store import no execute, search or
readers; readers import no execute; nothing imports the entry (`tests/test_layers.py`).
"""
