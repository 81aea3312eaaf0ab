"""Reading results: rows loaded for tables (`load`), number formatting and markdown/csv/json
(`tables`), the shared command-line options (`cli`), the verdict rule (`analysis`), the
dispatches dataset (`dispatches`), and the commands built on them (`report`, `compare`,
`query`, `plots`, `pareto`).

May import `sweep.plan`, `sweep.store` and `sweep.search.summaries`; never `sweep.execute`,
Ray or Hydra.
"""
