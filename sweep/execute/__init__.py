"""Running points: the scheduling rules as a state machine over a `Backend`
(`scheduler`, no Ray, with its indexed queues in `queues`), Ray itself (`cluster`, the
only module that imports it), which of several sweeps measures a point (`claims`) and
the progress display (`progress`).

May import `sweep.plan` and `sweep.store`; never `sweep.search`, `sweep.readers`, nor Hydra.
"""
