"""Pure analysis of result rows: which run, which groups, which medians, which verdict.

No I/O: the functions take rows as plain dicts (as `sweep.store.results.read_results(...)
.to_pylist()` gives them) and return plain records, so `report`, `compare` and `plots`
share one definition of every number they show, and tests check it without a disk.

Aggregation: a group (e.g. one variant x device x flag set) may hold several ok rows
(other max_seq, model or group_size values, or several runs with `--run all`). Its
ms/token is the *median of the rows' decode_ms_p50*, likewise p10, p90, prefill ms,
dispatches, compile s and vmfb bytes (the median of the rows' values, not a
percentile of the pooled samples); tok/s is 1000 x batch size / that median, as in a row. Failed
rows count in the status column only, except that `wrong_output` rows also count in
the tokens-matched column, which is where they matter.

Repeats (`bench.repeats=R`): the store holds one row per repeat; `merge_repeats` makes
them one row per point before anything else looks at them, and a verdict between two
points measured at least `MIN_REPEATS` times each comes from their repeats'
medians (`repeat_verdict`), so drift across the sweep is inside the test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sweep.store.results import Col, newest_per_point
from workers.core.kinds import Layout, Status
from workers.records import tok_s

BASELINE_FLAG_SET = "default"
# How a point runs beyond its model, variant and prompt: batch, context, threads, switches.
RUN_SHAPE: tuple[str, ...] = (
    Col.BATCH_SIZE,
    Col.DEPTH,
    Col.ATTENTION_SPAN,
    Col.STEPS_PER_CALL,
    Col.THREADS,
    Col.LLAMACPP_EXTRA_BUFTS,
)
# Columns that name a point (what `--by` may group on) and that the tables fold into a
# header line when they do not vary.
POINT_COLUMNS: tuple[str, ...] = (
    Col.GRID,
    Col.MODEL,
    Col.ARCHITECTURE,
    Col.VARIANT,
    Col.LAYOUT,
    Col.WEIGHTS,
    Col.GROUP_SIZE,
    Col.DEVICE,
    Col.DRIVER,
    Col.RUNTIME,
    Col.PROMPT_LENGTH,
    Col.PROMPT_BUCKET,
    Col.MAX_SEQ,
    Col.FLAG_SET,
    *RUN_SHAPE,
)
BY_COLUMNS: tuple[str, ...] = (
    Col.RUN_ID,
    *POINT_COLUMNS,
    Col.DEVICE_NAME,
    Col.HOSTNAME,
    Col.IREE_VERSION,
    Col.DEQUANT_FUSED,  # --by dequant_fused: whether each quantized linear fused its dequant
    Col.PACKED_AT_LOAD,  # --by packed_at_load: how many packings data tiling hoisted to load
)
DEFAULT_BY: tuple[str, ...] = (
    Col.VARIANT,
    Col.LAYOUT,
    Col.WEIGHTS,
    Col.DEVICE,
    Col.RUNTIME,
    Col.FLAG_SET,
    Col.PROMPT_LENGTH,
    *RUN_SHAPE,
)
# The flag study compares flag sets within one of these contexts.
FLAG_CONTEXT: tuple[str, ...] = (
    Col.VARIANT,
    Col.DEVICE,
    Col.RUNTIME,
    Col.PROMPT_LENGTH,
    Col.THREADS,
)

# The verdict rule (see `verdict`).
ALPHA = 0.01  # two-sided Mann-Whitney p-value below which a difference is real
MIN_EFFECT = 0.02  # and the medians must differ by at least 2 %
# What stands in a verdict's place when a side holds a row timed on a disturbed host
# (workers.core.host: its threads waited for a CPU more than RUN_WAIT_DISTURBED of the time):
# its numbers say as much about the host as about the point, so no faster / slower / same.
DISTURBED = "disturbed"
# ... and when a side holds a row whose timed window could not tell (workers.core.host: the
# tick fallback on too short a phase): unknown is not quiet.
NOT_JUDGED = "not judged"
# From this schema version a null `disturbed` on an ok row means "could not tell"; before
# it, a row without the column's value was read as quiet, as the readers always did.
UNKNOWN_DISTURBANCE_SINCE = 7

MIN_REPEATS = 3  # repeats a side from which a verdict comes from the repeats' medians
# What readers add to a merged row of repeats (`merge_repeats`); not stored columns.
REPEAT_P50S, NUM_REPEATS, REPEAT_SPREAD = "repeat_p50s", "num_repeats", "repeat_spread"
REPEAT_KEYS = "repeat_keys"  # a merged point's ok repeats' own keys (their profiles)


def mann_whitney_p(samples_a: Sequence[float], samples_b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation with tie and
    continuity corrections): the chance of ranks this separated if A and B were drawn
    from one distribution. Needs no scipy; the approximation is close to the exact p
    from about 10 samples a side (5 vs 5 fully separated: 0.012, exact 0.008)."""
    a = np.asarray(samples_a, dtype=np.float64)
    b = np.asarray(samples_b, dtype=np.float64)
    n_a, n_b = a.size, b.size
    if n_a == 0 or n_b == 0:
        return 1.0
    _, inverse, counts = np.unique(np.concatenate([a, b]), return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # ties share their mean rank
    u_a = avg_rank[inverse[:n_a]].sum() - n_a * (n_a + 1) / 2.0
    n = n_a + n_b
    tie_term = float((counts**3 - counts).sum()) / (n * (n - 1)) if n > 1 else 0.0
    sigma = math.sqrt(n_a * n_b / 12.0 * ((n + 1) - tie_term))
    if sigma == 0.0:
        return 1.0
    z = max(abs(u_a - n_a * n_b / 2.0) - 0.5, 0.0) / sigma
    return math.erfc(z / math.sqrt(2.0))


def verdict(samples_a: Sequence[float], samples_b: Sequence[float]) -> str:
    """Is B faster, slower or the same as A, given the spread of their ms/token samples?

    Rule: "faster" when the Mann-Whitney test on the two sample sets gives p < ALPHA
    (0.01) *and* median(B) <= (1 - MIN_EFFECT) * median(A), i.e. at least 2 % less time;
    "slower" likewise with median(B) >= (1 + MIN_EFFECT) * median(A); otherwise "same".
    The rank test adapts to the noise (a 5 % change is real on a quiet GPU, noise on a
    busy CPU); the 2 % floor guards against calling a tiny shift real, since decode
    steps are not independent (drift, clocks), which makes p-values optimistic.
    "n/a" when there are too few samples for the test to ever reach ALPHA (5 against
    5 cannot, 6 against 6 can), so a lack of data never reads as "same".
    """
    a = np.asarray(samples_a if samples_a is not None else [], dtype=np.float64)
    b = np.asarray(samples_b if samples_b is not None else [], dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return "n/a"
    separated = mann_whitney_p(np.arange(a.size), np.arange(a.size, a.size + b.size))
    if separated >= ALPHA:
        return "n/a"
    ratio = float(np.median(b) / np.median(a))
    if mann_whitney_p(a, b) >= ALPHA:
        return "same"
    if ratio <= 1.0 - MIN_EFFECT:
        return "faster"
    if ratio >= 1.0 + MIN_EFFECT:
        return "slower"
    return "same"


def repeat_verdict(p50s_a: Sequence[float], p50s_b: Sequence[float]) -> str:
    """Is B faster, slower or the same as A, given each point's repeats' medians?

    A repeat is a whole measurement, taken at its own time in the sweep, so the
    repeats' spread holds the drift of the host that the steps of one measurement do
    not (on a shared VM, 5-15 % from run to run on unchanged points). With enough
    repeats for the rank test to reach ALPHA (6 a side), `verdict` on the medians. With
    fewer (3 to 5): "faster" when every B repeat is below every A repeat by more than
    the larger of the two spreads (max - min of a side's medians) and the medians
    differ by MIN_EFFECT; "slower" likewise. For 3 against 3 repeats drawn from one
    distribution that gap occurs about 0.8 % of the time (a Monte Carlo of normal
    draws), the rank test's ALPHA. "n/a" below MIN_REPEATS a side.
    """
    a = np.asarray(p50s_a if p50s_a is not None else [], dtype=np.float64)
    b = np.asarray(p50s_b if p50s_b is not None else [], dtype=np.float64)
    if a.size < MIN_REPEATS or b.size < MIN_REPEATS:
        return "n/a"
    by_ranks = verdict(a, b)
    if by_ranks != "n/a":
        return by_ranks
    ratio = float(np.median(b) / np.median(a))
    spread = max(float(np.ptp(a)), float(np.ptp(b)))
    if a.min() - b.max() > spread and ratio <= 1.0 - MIN_EFFECT:
        return "faster"
    if b.min() - a.max() > spread and ratio >= 1.0 + MIN_EFFECT:
        return "slower"
    return "same"


def repeated(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether every ok row of `rows` (at least one) holds MIN_REPEATS repeats or more."""
    ok = [r for r in rows if r[Col.STATUS] == Status.OK]
    return bool(ok) and all(len(r.get(REPEAT_P50S) or ()) >= MIN_REPEATS for r in ok)


def group_verdict(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]]) -> str:
    """The verdict between two groups of rows: from the repeats' medians when both sides
    were measured at least MIN_REPEATS times, else from the pooled decode samples."""
    if repeated(rows_a) and repeated(rows_b):
        return repeat_verdict(pooled_repeats(rows_a), pooled_repeats(rows_b))
    return verdict(pooled_samples(rows_a), pooled_samples(rows_b))


def pooled_repeats(rows: Sequence[dict[str, Any]]) -> list[float]:
    """The repeats' decode medians of all ok rows, for a verdict on a group."""
    return [p for r in rows if r[Col.STATUS] == Status.OK for p in r.get(REPEAT_P50S) or ()]


def merge_repeats(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per point from rows that may hold a point's repeats (`bench.repeats`).

    Rows without `repeat_of` pass as they are. The repeats of a point (same
    `repeat_of`) become one row under that key, the key the point has when measured
    once: a copy of its first ok repeat with `decode_ms_p50` the median of the repeats'
    medians, p10, p90, prefill, device and host ms the medians of the repeats' values,
    tok/s and the roofline from that median, the decode samples of all repeats
    together, and `repeat_p50s` (the repeats' medians in repeat order), `num_repeats`
    (the ok ones), `repeat_spread` ((max - min) / median of those medians) and
    `repeat_keys` (the ok repeats' own keys, which their dispatch profiles carry). A point
    none of whose repeats is ok is its newest repeat's row. Fewer repeats than asked
    (an interrupted sweep) merge as what there is.
    """
    merged: list[dict[str, Any]] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        of = row.get(Col.REPEAT_OF)
        if of is None:
            merged.append(row)
        else:
            groups.setdefault(of, []).append(row)
    for of, members in groups.items():
        merged.append(_merged(of, sorted(members, key=lambda r: r.get(Col.REPEAT) or 0)))
    return merged


def profile_keys(row: dict[str, Any]) -> list[str]:
    """The keys a row's dispatch profiles are stored under: its own, or for a merged row
    of repeats, each ok repeat's (every repeat is profiled)."""
    return row.get(REPEAT_KEYS) or [row[Col.POINT_KEY]]


def _merged(key: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in members if r[Col.STATUS] == Status.OK]
    if not ok:
        newest = max(members, key=lambda r: r[Col.CREATED_AT])
        return {**newest, Col.POINT_KEY: key, Col.REPEAT: None, NUM_REPEATS: 0}
    p50s = [float(r[Col.DECODE_MS_P50]) for r in ok]
    p50 = float(np.median(p50s))
    first = ok[0]
    row = {**first, Col.POINT_KEY: key, Col.REPEAT: None}
    for col in (
        Col.DECODE_MS_P10,
        Col.DECODE_MS_P90,
        Col.PREFILL_MS,
        Col.PREFILL_TOK_S,
        Col.DEVICE_MS,
        Col.HOST_MS,
    ):
        row[col] = median(r.get(col) for r in ok)
    row[Col.DECODE_MS_P50] = p50
    row[Col.TOK_S] = tok_s(p50, first.get(Col.BATCH_SIZE) or 1)
    if first.get(Col.ROOFLINE_FRAC) is not None:
        row[Col.ROOFLINE_FRAC] = first[Col.ROOFLINE_FRAC] * p50s[0] / p50
    if any(r.get(Col.DECODE_SAMPLES_MS) is not None for r in ok):
        row[Col.DECODE_SAMPLES_MS] = np.concatenate([_samples(r) for r in ok])
    row[Col.CREATED_AT] = max(r[Col.CREATED_AT] for r in members)
    row[REPEAT_P50S], row[NUM_REPEATS] = p50s, len(ok)
    row[REPEAT_KEYS] = [r[Col.POINT_KEY] for r in ok]
    row[REPEAT_SPREAD] = (max(p50s) - min(p50s)) / p50
    return row


def median(values: Iterable[Any]) -> float | None:
    """Median of the non-null values, None when there are none."""
    kept = [float(v) for v in values if v is not None]
    return float(np.median(kept)) if kept else None


def median_count(values: Iterable[Any]) -> int | float | None:
    """Median of counts (dispatches, bytes): an int when it is whole."""
    m = median(values)
    return int(m) if m is not None and m.is_integer() else m


def sort_key(values: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    """Sorts tuples of group values: None last, numbers as numbers, text ignoring case."""
    return tuple(
        (v is None, v.casefold() if isinstance(v, str) else v if v is not None else 0)
        for v in values
    )


def group_rows(
    rows: Sequence[dict[str, Any]], by: Sequence[str]
) -> list[tuple[tuple[Any, ...], list[dict[str, Any]]]]:
    """Rows grouped by the values of `by`, groups sorted by those values."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(col) for col in by), []).append(row)
    return sorted(groups.items(), key=lambda item: sort_key(item[0]))


def constant_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, Any]:
    """column -> value for the columns that hold one non-null value in every row."""
    constant = {}
    for col in columns:
        values = {row.get(col) for row in rows}
        if len(values) == 1 and None not in values:
            constant[col] = values.pop()
    return constant


def status_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """status -> number of rows, "ok" first, then the other statuses alphabetically."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[Col.STATUS]] = counts.get(row[Col.STATUS], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] != Status.OK, kv[0])))


def tokens_matched(rows: Sequence[dict[str, Any]]) -> tuple[int | None, int | None]:
    """(matched, total) greedy tokens over the rows that were checked (ok or wrong_output).

    total counts the reference tokens (the generated ones where a row has no reference).
    """
    checked = [r for r in rows if r.get(Col.NUM_TOKENS_MATCHED) is not None]
    if not checked:
        return None, None
    matched = sum(int(r[Col.NUM_TOKENS_MATCHED]) for r in checked)
    total = sum(_num_tokens(r) for r in checked)
    return matched, total


def _num_tokens(row: dict[str, Any]) -> int:
    """The reference's length (the generated tokens' where there is no reference)."""
    if row.get("num_reference_tokens") is not None:
        return int(row["num_reference_tokens"])
    return len(row.get(Col.REFERENCE_TOKENS) or row.get(Col.TOKENS) or [])


def disturbance(row: dict[str, Any]) -> bool | None:
    """Whether a row was timed on a disturbed host (`disturbed`, workers.core.host): None where
    its window could not tell."""
    value = row.get(Col.DISTURBED)
    if value is None and (row.get(Col.SCHEMA_VERSION) or 0) >= UNKNOWN_DISTURBANCE_SINCE:
        return None
    return bool(value)


def num_disturbed(rows: Sequence[dict[str, Any]]) -> int:
    """The ok rows measured on a disturbed host."""
    return sum(1 for r in rows if r[Col.STATUS] == Status.OK and disturbance(r))


def num_not_judged(rows: Sequence[dict[str, Any]]) -> int:
    """The ok rows whose timed window could not tell whether the host was disturbed."""
    return sum(1 for r in rows if r[Col.STATUS] == Status.OK and disturbance(r) is None)


def host_verdict(*groups: Sequence[dict[str, Any]]) -> str | None:
    """DISTURBED or NOT_JUDGED where the rows' host says no verdict can be given, else None."""
    rows = [r for group in groups for r in group]
    if num_disturbed(rows):
        return DISTURBED
    return NOT_JUDGED if num_not_judged(rows) else None


def pooled_samples(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """The decode samples (ms) of all ok rows, for a verdict on a group."""
    parts = [_samples(r) for r in rows if r[Col.STATUS] == Status.OK]
    return np.concatenate(parts) if parts else np.zeros(0)


def _samples(row: dict[str, Any]) -> np.ndarray:
    """A row's decode samples (a list, or a numpy view as `sweep.report` reads them)."""
    samples = row.get(Col.DECODE_SAMPLES_MS)
    return np.zeros(0) if samples is None else np.asarray(samples, dtype=np.float64)


def timing_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the ok rows of a group (see the module docstring)."""
    ok = [r for r in rows if r[Col.STATUS] == Status.OK]
    p50 = median(r.get(Col.DECODE_MS_P50) for r in ok)
    batch = median(r.get(Col.BATCH_SIZE) or 1 for r in ok) or 1.0
    matched, total = tokens_matched(rows)
    summary = {
        "num_rows": len(rows),
        "num_ok": len(ok),
        Col.TOK_S: tok_s(p50, batch) if p50 else None,
        Col.DECODE_MS_P50: p50,
        Col.DECODE_MS_P10: median(r.get(Col.DECODE_MS_P10) for r in ok),
        Col.DECODE_MS_P90: median(r.get(Col.DECODE_MS_P90) for r in ok),
        Col.PREFILL_MS: median(r.get(Col.PREFILL_MS) for r in ok),
        Col.PREFILL_TOK_S: median(r.get(Col.PREFILL_TOK_S) for r in ok),
        Col.NUM_DISPATCHES: median_count(r.get(Col.NUM_DISPATCHES) for r in rows),
        Col.NUM_TOKENS_MATCHED: matched,
        "num_tokens": total,
        "status_counts": status_counts(rows),
        # newer schemas' columns: None where the rows predate them
        Col.ROOFLINE_FRAC: median(r.get(Col.ROOFLINE_FRAC) for r in ok),
        Col.FP32_AGREEMENT: median(r.get(Col.FP32_AGREEMENT) for r in ok),
        Col.PPL: median(r.get(Col.PPL) for r in ok),
        Col.KLD_MEAN: median(r.get(Col.KLD_MEAN) for r in ok),
        Col.KLD_P99: median(r.get(Col.KLD_P99) for r in ok),
        Col.TOP1_AGREE: median(r.get(Col.TOP1_AGREE) for r in ok),
        Col.DEVICE_MS: median(r.get(Col.DEVICE_MS) for r in ok),
        Col.HOST_MS: median(r.get(Col.HOST_MS) for r in ok),
        Col.PACKED_AT_LOAD: median_count(r.get(Col.PACKED_AT_LOAD) for r in ok),
        Col.LOAD_S: median(r.get(Col.LOAD_S) for r in ok),
        Col.RESIDENT_BYTES: median_count(r.get(Col.RESIDENT_BYTES) for r in ok),
        "num_disturbed": num_disturbed(rows),
        "num_not_judged": num_not_judged(rows),
    }
    return summary


def summarize(rows: Sequence[dict[str, Any]], by: Sequence[str]) -> list[dict[str, Any]]:
    """One record per group of `by`: its values, then `timing_summary`."""
    return [
        {**dict(zip(by, key, strict=True)), **timing_summary(members)}
        for key, members in group_rows(rows, by)
    ]


def flag_study(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per FLAG_CONTEXT x flag set x layout, the baseline first in each context.

    The baseline is the `default` flag set in the first layout (in_major when there);
    the other records of the context follow by flag set, each flag set's layouts side
    by side. speedup = baseline ms/token / this record's ms/token (above 1: faster),
    with `verdict(baseline samples, these samples)` on the pooled samples of the ok
    rows; dispatch_change = dispatches - baseline dispatches. With no baseline in a
    context, those three stay None.
    """
    records = []
    for context, members in group_rows(rows, FLAG_CONTEXT):
        groups = dict(group_rows(members, [Col.FLAG_SET, Col.LAYOUT]))
        baselines = sorted(k for k in groups if k[0] == BASELINE_FLAG_SET)
        baseline = min(baselines, key=lambda k: k[1] != Layout.IN_MAJOR, default=None)
        base_rows = groups.get(baseline) if baseline else None
        base = timing_summary(base_rows) if base_rows else None
        order = sorted(groups, key=lambda k: (k != baseline, *sort_key(k)))
        for key in order:
            group = groups[key]
            record = {**dict(zip(FLAG_CONTEXT, context, strict=True))}
            record.update(flag_set=key[0], layout=key[1], **timing_summary(group))
            record["point_keys"] = [
                k for r in group if r[Col.STATUS] == Status.OK for k in profile_keys(r)
            ]
            record[Col.COMPILE_S] = median(r.get(Col.COMPILE_S) for r in group)
            record[Col.VMFB_BYTES] = median_count(r.get(Col.VMFB_BYTES) for r in group)
            record.update(_against_baseline(record, group, base, base_rows, key == baseline))
            records.append(record)
    return records


def _against_baseline(
    record: dict[str, Any],
    rows: list[dict[str, Any]],
    base: dict[str, Any] | None,
    base_rows: list[dict[str, Any]] | None,
    is_baseline: bool,
) -> dict[str, Any]:
    """speedup, verdict and dispatch_change of one flag-study record."""
    out: dict[str, Any] = {"speedup": None, "verdict": None, "dispatch_change": None}
    if base is None or base_rows is None:
        return out
    if is_baseline:
        out["verdict"] = "baseline"
    if base[Col.DECODE_MS_P50] and record[Col.DECODE_MS_P50]:
        out["speedup"] = base[Col.DECODE_MS_P50] / record[Col.DECODE_MS_P50]
        if not is_baseline:
            out["verdict"] = host_verdict(base_rows, rows) or group_verdict(base_rows, rows)
    if base[Col.NUM_DISPATCHES] is not None and record[Col.NUM_DISPATCHES] is not None:
        out["dispatch_change"] = record[Col.NUM_DISPATCHES] - base[Col.NUM_DISPATCHES]
    return out


def compare_runs(
    rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Two runs matched by point_key (each run's newest row per point).

    "points": the points ok in both, with B/A ratio of decode_ms_p50 and
    `verdict(A samples, B samples)`, or DISTURBED where either row is `disturbed` (NOT_JUDGED
    where either row's window could not tell);
    "only_in_a", "only_in_b": points one run lacks;
    "not_ok": points in both that are not ok in one of them (with both statuses).
    """
    a = {r[Col.POINT_KEY]: r for r in merge_repeats(newest_per_point(rows_a))}
    b = {r[Col.POINT_KEY]: r for r in merge_repeats(newest_per_point(rows_b))}
    out: dict[str, list[dict[str, Any]]] = {
        "points": [],
        "only_in_a": [],
        "only_in_b": [],
        "not_ok": [],
    }

    def order(key: str) -> tuple[Any, ...]:
        return (sort_key(_point_values(a.get(key) or b[key])), key)

    for key in sorted(a.keys() | b.keys(), key=order):
        ra, rb = a.get(key), b.get(key)
        either = ra if ra is not None else rb
        ident = {Col.POINT_KEY: key, **dict(zip(POINT_COLUMNS, _point_values(either), strict=True))}
        if ra is None or rb is None:
            side = "only_in_a" if rb is None else "only_in_b"
            out[side].append({**ident, Col.STATUS: either[Col.STATUS]})
        elif ra[Col.STATUS] != Status.OK or rb[Col.STATUS] != Status.OK:
            out["not_ok"].append({**ident, "status_a": ra[Col.STATUS], "status_b": rb[Col.STATUS]})
        else:
            out["points"].append({**ident, **_pair(ra, rb)})
    return out


def _point_values(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(col) for col in POINT_COLUMNS)


def _pair(ra: dict[str, Any], rb: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one point in both runs; the verdict from the repeats when both runs
    measured it at least MIN_REPEATS times (`basis`: "repeats"), else from the samples."""
    ms_a, ms_b = ra.get(Col.DECODE_MS_P50), rb.get(Col.DECODE_MS_P50)
    by_repeats = repeated([ra]) and repeated([rb])
    if by_repeats:
        values_a, values_b = ra[REPEAT_P50S], rb[REPEAT_P50S]
        judged = repeat_verdict(values_a, values_b)
    else:
        values_a, values_b = _samples(ra), _samples(rb)
        judged = verdict(values_a, values_b)
    host = host_verdict([ra], [rb])
    named = {DISTURBED: True, NOT_JUDGED: None}.get(host, False)  # the sides it is about
    sides = "".join(s for s, r in (("A", ra), ("B", rb)) if host and disturbance(r) is named)
    return {
        "decode_ms_p50_a": ms_a,
        "decode_ms_p50_b": ms_b,
        "ratio": ms_b / ms_a if ms_a and ms_b is not None else None,
        "verdict": host or judged,
        "basis": "repeats" if by_repeats else "samples",
        "disturbed": sides or None,  # which side was disturbed (or not judged): A, B or AB
        "run_wait_frac_a": ra.get(Col.RUN_WAIT_FRAC),
        "run_wait_frac_b": rb.get(Col.RUN_WAIT_FRAC),
        "host_busy_frac_a": ra.get(Col.HOST_BUSY_FRAC),
        "host_busy_frac_b": rb.get(Col.HOST_BUSY_FRAC),
        "p_value": mann_whitney_p(values_a, values_b),
        "num_dispatches_a": ra.get(Col.NUM_DISPATCHES),
        "num_dispatches_b": rb.get(Col.NUM_DISPATCHES),
    }


# Every variant against fp32 at the same point: the answer to the seed's question (is the
# quantized model faster?) in the run's closing summary.
FP32 = "fp32"
# the columns a variant's point differs from fp32's in
VARIANT_COLUMNS: tuple[str, ...] = (Col.VARIANT, Col.GROUP_SIZE)


def versus_fp32(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per device, each variant's ms/token over fp32's at the same point (every point
    column but the variant's own), as the median of those ratios over the points both
    measured ok: records of `device`, `variant`, `ratio` and `num_points`, fastest first
    within a device. fp32 itself is a record with ratio 1. A device without an ok fp32
    row has none."""
    point_of = [c for c in POINT_COLUMNS if c not in VARIANT_COLUMNS]
    ok = [r for r in rows if r[Col.STATUS] == Status.OK and r.get(Col.DECODE_MS_P50)]
    fp32 = {
        tuple(r.get(c) for c in point_of): r[Col.DECODE_MS_P50]
        for r in ok
        if r[Col.VARIANT] == FP32
    }
    ratios: dict[tuple[str, str], list[float]] = {}
    for r in ok:
        base = fp32.get(tuple(r.get(c) for c in point_of))
        if base:
            ratios.setdefault((r[Col.DEVICE], r[Col.VARIANT]), []).append(
                r[Col.DECODE_MS_P50] / base
            )
    records = [
        {
            Col.DEVICE: device,
            Col.VARIANT: variant,
            "ratio": float(np.median(v)),
            "num_points": len(v),
        }
        for (device, variant), v in ratios.items()
    ]
    return sorted(records, key=lambda rec: (sort_key((rec[Col.DEVICE],)), rec["ratio"]))


# The runtimes side by side: per (model, variant family, device, prompt length), each
# runtime's fastest ok configuration at batch 1 and depth 0 (where they all run).
RUNTIME_CONTEXT: tuple[str, ...] = (Col.MODEL, "family", Col.DEVICE, Col.PROMPT_LENGTH)


def variant_family(row: dict[str, Any]) -> str:
    """What the runtimes are compared within: `4-bit`, `8-bit`, or the float variant."""
    bits = row.get(Col.BITS)
    return f"{bits}-bit" if bits else str(row.get(Col.VARIANT))


def runtime_comparison(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per RUNTIME_CONTEXT that more than one runtime measured: per runtime
    its fastest ok row (`<runtime>_ms`, `<runtime>_config`: variant, layout, flag set or
    llama.cpp type) and `<runtime>_vs_fastest` (its ms/token over the fastest one's)."""
    ok = [
        {**r, "family": variant_family(r)}
        for r in rows
        if r[Col.STATUS] == Status.OK
        and (r.get(Col.BATCH_SIZE) or 1) == 1
        and not r.get(Col.DEPTH)
        and r.get(Col.DECODE_MS_P50)
    ]
    records = []
    for context, members in group_rows(ok, RUNTIME_CONTEXT):
        best = {}
        for runtime, group in group_rows(members, [Col.RUNTIME]):
            best[runtime[0]] = min(group, key=lambda r: r[Col.DECODE_MS_P50])
        if len(best) < 2:
            continue
        fastest = min(r[Col.DECODE_MS_P50] for r in best.values())
        record: dict[str, Any] = dict(zip(RUNTIME_CONTEXT, context, strict=True))
        for runtime, row in best.items():
            record[f"{runtime}_ms"] = row[Col.DECODE_MS_P50]
            record[f"{runtime}_config"] = _config_label(row)
            record[f"{runtime}_vs_fastest"] = row[Col.DECODE_MS_P50] / fastest
        record["fastest"] = min(best, key=lambda k: best[k][Col.DECODE_MS_P50])
        records.append(record)
    return records


def _config_label(row: dict[str, Any]) -> str:
    if row.get(Col.LLAMACPP_TYPE):
        return str(row[Col.LLAMACPP_TYPE])
    parts = [str(row.get(Col.VARIANT)), str(row.get(Col.LAYOUT))]
    return "/".join(parts + ([str(row[Col.FLAG_SET])] if row.get(Col.RUNTIME) == "iree" else []))
