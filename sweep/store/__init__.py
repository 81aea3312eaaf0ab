"""Results on disk: one row per point from typed values (`rows`), the versioned Parquet
schema, the atomic writer and the readers (`results`), and a finished run's files
compacted into one (`compaction`).

May import `sweep.plan` (a point's identity); never `sweep.execute`, `sweep.search`,
`sweep.readers`, Ray or Hydra.
"""
