"""llama-bench's table from a sweep's rows: `python -m sweep.report --llamabench`.

llama-bench reports, per model and backend, two tests: `pp512` (a prompt of 512 tokens
in one go) and `tg128` (128 tokens generated one at a time), each as tokens per second,
the mean and sample standard deviation over its repetitions. A sweep point holds both:
its prefill runs (`prefill_samples_ms`, `bench.prefill_runs` of them per repeat) are
the pp repetitions, and each of its `bench.repeats` timed decodes is one tg repetition
(t/s = steps / their total time, i.e. 1000 / `decode_ms_mean`). With one repeat a tg
has no deviation. Unlike llama-bench, tg runs after the prompt (the cache holds it),
as a user's decode does: `+grid=llamabench` measures both on one point.

The size is the weights as the row holds them (`weight_bytes`); where a row also says
what loading cost (`resident_bytes`: IREE with the packed copies) that is shown too,
and the quality columns say what each configuration costs (KLD from fp32, top-1).
"""

from __future__ import annotations

import statistics
from typing import Any

from sweep.readers import analysis
from sweep.readers.tables import Column, Table, fmt_bytes, fmt_kld, fmt_percent, fmt_value
from sweep.store.results import Col
from workers.core.kinds import Runtime, Status

BACKENDS = {Runtime.IREE: "IREE", Runtime.XLA: "XLA", Runtime.LLAMACPP: "llama.cpp"}
# What makes one configuration: its repeats are its repetitions.
CONFIGURATION: tuple[str, ...] = (
    Col.MODEL,
    Col.DEVICE,
    Col.RUNTIME,
    Col.VARIANT,
    Col.LAYOUT,
    Col.WEIGHTS,
    Col.FLAG_SET,
    Col.THREADS,
    Col.PROMPT_LENGTH,
    Col.NUM_DECODE_STEPS,
)
# the columns the table reads beyond the report's own
NEEDED: tuple[str, ...] = (
    Col.PREFILL_SAMPLES_MS,
    Col.DECODE_MS_MEAN,
    Col.NUM_DECODE_STEPS,
    Col.WEIGHT_BYTES,
    Col.RESIDENT_BYTES,
    Col.LLAMACPP_TYPE,
)


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (llama-bench's `avg_ts`, `stddev_ts`)."""
    if not values:
        return None, None
    sd = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), sd


def config_label(row: dict[str, Any]) -> str:
    """What ran: llama.cpp's tensor type, or IREE's variant/layout/weights/flag set."""
    if row.get(Col.RUNTIME) == Runtime.LLAMACPP:
        return str(row.get(Col.LLAMACPP_TYPE) or row.get(Col.VARIANT))
    parts = [row.get(Col.VARIANT), row.get(Col.LAYOUT), row.get(Col.WEIGHTS)]
    parts += [row.get(Col.FLAG_SET)] if row.get(Col.RUNTIME) == Runtime.IREE else []
    return "/".join(str(p) for p in parts if p)


def llamabench_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two records (pp, tg) per configuration with an ok row, from unmerged rows."""
    records = []
    for _, members in analysis.group_rows(rows, CONFIGURATION):
        ok = [r for r in members if r[Col.STATUS] == Status.OK]
        if not ok:
            continue
        first = ok[0]
        backend = BACKENDS.get(first[Col.RUNTIME], first[Col.RUNTIME])
        prompt = first[Col.PROMPT_LENGTH] * (first.get(Col.BATCH_SIZE) or 1)
        pp = [prompt / (ms / 1e3) for r in ok for ms in r.get(Col.PREFILL_SAMPLES_MS) or ()]
        tg = [1e3 / r[Col.DECODE_MS_MEAN] for r in ok if r.get(Col.DECODE_MS_MEAN)]
        common = {
            Col.MODEL: first.get(Col.MODEL),
            "size": first.get(Col.WEIGHT_BYTES),
            Col.RESIDENT_BYTES: analysis.median(r.get(Col.RESIDENT_BYTES) for r in ok),
            "backend": f"{backend} {first[Col.DEVICE]}",
            "config": config_label(first),
            Col.THREADS: first.get(Col.THREADS),
            Col.KLD_MEAN: analysis.median(r.get(Col.KLD_MEAN) for r in ok),
            Col.TOP1_AGREE: analysis.median(r.get(Col.TOP1_AGREE) for r in ok),
        }
        for test, values in (
            (f"pp{first[Col.PROMPT_LENGTH]}", pp),
            (f"tg{first.get(Col.NUM_DECODE_STEPS)}", tg),
        ):
            mean, sd = mean_sd(values)
            records.append({**common, "test": test, "t_s": mean, "t_s_sd": sd, "n": len(values)})
    return records


def _fmt_ts(record: dict[str, Any]) -> str:
    if record["t_s"] is None:
        return ""
    sd = record["t_s_sd"]
    return f"{record['t_s']:.2f} ± {sd:.2f}" if sd is not None else f"{record['t_s']:.2f}"


def llamabench_table(rows: list[dict[str, Any]], header: dict[str, Any]) -> Table:
    records = llamabench_records(rows)
    columns = [
        Column(Col.MODEL, lambda r: fmt_value(r[Col.MODEL]), fold=Col.MODEL),
        Column("size", lambda r: fmt_bytes(r["size"]), right=True),
        Column("resident", lambda r: fmt_bytes(r[Col.RESIDENT_BYTES]), right=True),
        Column("backend", lambda r: r["backend"]),
        Column("config", lambda r: r["config"]),
        Column(Col.THREADS, lambda r: fmt_value(r[Col.THREADS]), right=True),
        Column("test", lambda r: r["test"]),
        Column("t/s", _fmt_ts, right=True),
        Column("KLD", lambda r: fmt_kld(r[Col.KLD_MEAN]), right=True),
        Column("top-1", lambda r: fmt_percent(r[Col.TOP1_AGREE]), right=True),
    ]
    notes = [] if records else ["no ok rows: nothing to report"]
    notes += [
        "t/s: mean ± sample standard deviation over the repetitions (pp: the prefill runs of "
        "every repeat; tg: one per repeat, none with bench.repeats=1); tg decodes after the "
        "prompt. resident: the weights plus what loading the modules added (IREE)."
    ]
    return Table(records, columns, header, notes=notes)
