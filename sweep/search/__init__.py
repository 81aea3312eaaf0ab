"""The search: a space of flags, layouts and formats explored with Optuna ask-and-tell,
one study per (variant family, device), the winner re-measured and ablated (`study`), the
choices known to break a compile learned once per study (`broken`), and the studies read
back for reports (`summaries`).

May import `sweep.plan`, `sweep.store` and `sweep.readers.tables`; never `sweep.execute` nor Ray.
"""
