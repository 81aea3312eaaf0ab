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

Below it, IREE against llama.cpp per family (`gap_table`): the bits of the quantized
linears (a float variant: its name), llama.cpp's configuration of that family, and
IREE's fastest configuration by tg whose KLD is at most `KLD_BOUND` times llama.cpp's
(every configuration where the run has no KLD: seeded weights give speed only). Its tg
as a multiple of llama.cpp's ms/token and its pp as a share of llama.cpp's tokens/s say
whether it reaches llama.cpp (`TG_WITHIN`, pp at least llama.cpp's), and where it does
not, its dispatch profile (`profile=true`, on in `+grid=llamabench`) says per dispatch
what its decode step spends: dispatches per step, time and count per kind, the
heaviest dispatches.
"""

from __future__ import annotations

import statistics
from typing import Any

from sweep.readers import analysis
from sweep.readers.tables import (
    Column,
    Table,
    fmt_bytes,
    fmt_kld,
    fmt_num,
    fmt_percent,
    fmt_ratio,
    fmt_short,
    fmt_value,
)
from sweep.store.results import Col
from workers.core.kinds import GraphKind, Runtime, Status

KLD_BOUND = 2.0  # a configuration is a family's answer inside this multiple of llama.cpp's KLD
TG_WITHIN = 1.2  # tg: IREE's ms/token at most this multiple of llama.cpp's
TOP_DISPATCHES = 3  # the heaviest dispatches named per family
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
    Col.BITS,
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


def configurations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per configuration with an ok row, from unmerged rows: what llama-bench's
    table and the family comparison read (pp and tg t/s per repetition, size, quality)."""
    out = []
    for _, members in analysis.group_rows(rows, CONFIGURATION):
        ok = [r for r in members if r[Col.STATUS] == Status.OK]
        if not ok:
            continue
        first = ok[0]
        backend = BACKENDS.get(first[Col.RUNTIME], first[Col.RUNTIME])
        prompt = first[Col.PROMPT_LENGTH] * (first.get(Col.BATCH_SIZE) or 1)
        out.append(
            {
                Col.MODEL: first.get(Col.MODEL),
                Col.RUNTIME: first[Col.RUNTIME],
                "family": family(first),
                "size": first.get(Col.WEIGHT_BYTES),
                Col.RESIDENT_BYTES: analysis.median(r.get(Col.RESIDENT_BYTES) for r in ok),
                "backend": f"{backend} {first[Col.DEVICE]}",
                "config": config_label(first),
                Col.THREADS: first.get(Col.THREADS),
                Col.KLD_MEAN: analysis.median(r.get(Col.KLD_MEAN) for r in ok),
                Col.TOP1_AGREE: analysis.median(r.get(Col.TOP1_AGREE) for r in ok),
                "prompt_tokens": prompt,
                "pp_test": f"pp{first[Col.PROMPT_LENGTH]}",
                "tg_test": f"tg{first.get(Col.NUM_DECODE_STEPS)}",
                "pp": [
                    prompt / (ms / 1e3) for r in ok for ms in r.get(Col.PREFILL_SAMPLES_MS) or ()
                ],
                "tg": [1e3 / r[Col.DECODE_MS_MEAN] for r in ok if r.get(Col.DECODE_MS_MEAN)],
                "keys": [k for r in ok for k in analysis.profile_keys(r)],
            }
        )
    return out


def family(row: dict[str, Any]) -> str:
    """What a configuration is compared within: its quantized linears' bits (`8-bit`), or
    for a float variant its name (`bf16`). A llama.cpp point runs under the name of the
    first variant of its tensor type, so it shares that variant's family."""
    return f"{row[Col.BITS]}-bit" if row.get(Col.BITS) else str(row.get(Col.VARIANT))


def llamabench_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two records (pp, tg) per configuration with an ok row, from unmerged rows."""
    records = []
    for config in configurations(rows):
        common = {k: v for k, v in config.items() if k not in ("pp", "tg", "keys", "prompt_tokens")}
        for test, values in ((config["pp_test"], config["pp"]), (config["tg_test"], config["tg"])):
            mean, sd = mean_sd(values)
            records.append({**common, "test": test, "t_s": mean, "t_s_sd": sd, "n": len(values)})
    return records


def gap_records(
    rows: list[dict[str, Any]], dispatches: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per model and family with a llama.cpp configuration: IREE's answer against it (see
    the module docstring), with what its profiles say of its decode step and its prompt."""
    by_point: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (point, graph) -> its rows
    for d in dispatches:
        by_point.setdefault((d[Col.POINT_KEY], d.get("graph") or GraphKind.DECODE), []).append(d)

    def profile(config: dict[str, Any], graph: GraphKind) -> list[dict[str, Any]]:
        return next((by_point[k, graph] for k in config["keys"] if (k, graph) in by_point), [])

    records = []
    configs = configurations(rows)
    for (model, fam), members in analysis.group_rows(configs, (Col.MODEL, "family")):
        llamacpp = [c for c in members if c[Col.RUNTIME] == Runtime.LLAMACPP and c["tg"]]
        iree = [c for c in members if c[Col.RUNTIME] == Runtime.IREE and c["tg"]]
        if not llamacpp or not iree:
            continue
        base = max(llamacpp, key=lambda c: statistics.fmean(c["tg"]))
        bound = KLD_BOUND * base[Col.KLD_MEAN] if base[Col.KLD_MEAN] is not None else None
        inside = [c for c in iree if bound is None or (c[Col.KLD_MEAN] or float("inf")) <= bound]
        best = max(inside or iree, key=lambda c: statistics.fmean(c["tg"]))
        best_tg = statistics.fmean(best["tg"])
        tg_x = statistics.fmean(base["tg"]) / best_tg  # IREE's ms/token over llama.cpp's
        pp_x = (
            statistics.fmean(best["pp"]) / statistics.fmean(base["pp"])
            if best["pp"] and base["pp"]
            else None
        )
        records.append(
            {
                Col.MODEL: model,
                "family": fam,
                "llamacpp": base["config"],
                "llamacpp_tg": statistics.fmean(base["tg"]),
                "llamacpp_pp": statistics.fmean(base["pp"]) if base["pp"] else None,
                "llamacpp_kld": base[Col.KLD_MEAN],
                "iree": best["config"],
                "iree_tg": statistics.fmean(best["tg"]),
                "iree_pp": statistics.fmean(best["pp"]) if best["pp"] else None,
                "iree_kld": best[Col.KLD_MEAN],
                "kld_bound": bound,
                "inside_bound": bool(inside),
                "tg_x": tg_x,
                "pp_x": pp_x,
                "meets": bool(inside) and tg_x <= TG_WITHIN and (pp_x or 0.0) >= 1.0,
                "step": step_story(profile(best, GraphKind.DECODE), 1.0, "step", 1e3 / best_tg),
                "prompt": step_story(
                    profile(best, GraphKind.PREFILL),
                    best["prompt_tokens"],
                    "prompt",
                    1e3 * best["prompt_tokens"] / statistics.fmean(best["pp"])
                    if best["pp"]
                    else 0.0,
                ),
            }
        )
    return records


def step_story(profile: list[dict[str, Any]], tokens: float, call: str, call_ms: float) -> str:
    """What a call of `call_ms` (unprofiled) spends, per dispatch as profiled (the rows are
    per token: a call holds `tokens`): `1267 dispatches a step of 35.1 ms, 19.5 ms inside
    them as profiled (15 us each): matmul 15.4 ms in 271, pack 2.56 ms in 150; heaviest:
    NAME 5.52 ms (1x)`. Profiling slows dispatches a little, so the two can cross."""
    if not profile:
        return "not profiled (profile=true)"
    calls = tokens * sum(d["calls_per_token"] for d in profile)
    busy = tokens * sum(d["ms_per_token"] for d in profile)
    kinds: dict[str, list[float]] = {}
    for d in profile:
        kind = kinds.setdefault(d["kind"], [0.0, 0.0])
        kind[0] += tokens * d["ms_per_token"]
        kind[1] += tokens * d["calls_per_token"]
    ranked = sorted(kinds.items(), key=lambda kv: -kv[1][0])
    per_kind = ", ".join(f"{k} {fmt_short(ms)} ms in {n:.0f}" for k, (ms, n) in ranked)
    heaviest = sorted(profile, key=lambda d: -d["ms_per_token"])[:TOP_DISPATCHES]
    named = ", ".join(
        f"{d['name']} {fmt_short(tokens * d['ms_per_token'])} ms "
        f"({tokens * d['calls_per_token']:.0f}x)"
        for d in heaviest
    )
    return (
        f"{calls:.0f} dispatches a {call} of {fmt_short(call_ms)} ms, {fmt_short(busy)} ms "
        f"inside them as profiled ({fmt_short(busy / calls * 1e3)} us each): {per_kind}; "
        f"heaviest: {named}"
    )


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


def gap_table(rows: list[dict[str, Any]], dispatches: list[dict[str, Any]]) -> Table:
    records = gap_records(rows, dispatches)
    columns = [
        Column(Col.MODEL, lambda r: fmt_value(r[Col.MODEL]), fold=Col.MODEL),
        Column("family", lambda r: r["family"]),
        Column("llama.cpp", lambda r: r["llamacpp"]),
        Column("IREE's answer", lambda r: r["iree"]),
        Column(
            "tg ms/token", lambda r: _pair(1e3 / r["iree_tg"], 1e3 / r["llamacpp_tg"]), right=True
        ),
        Column("tg x", lambda r: fmt_ratio(r["tg_x"]), right=True),
        Column("pp t/s", lambda r: _pair(r["iree_pp"], r["llamacpp_pp"]), right=True),
        Column("pp x", lambda r: fmt_ratio(r["pp_x"]), right=True),
        Column("KLD", lambda r: _pair(r["iree_kld"], r["llamacpp_kld"], fmt_kld), right=True),
        Column("reaches llama.cpp", lambda r: "yes" if r["meets"] else "no"),
    ]
    notes = [
        f"IREE's answer: its fastest tg whose KLD is at most {KLD_BOUND:g}x llama.cpp's "
        "(any configuration where the run has no KLD); pairs are IREE / llama.cpp; tg x: "
        f"IREE's ms/token over llama.cpp's (reaches at {TG_WITHIN:g}x or less, with pp x at "
        "least 1.00x)"
    ]
    for r in records:
        outside = "" if r["inside_bound"] else " (none inside the KLD bound: the fastest)"
        verdict = "reaches llama.cpp" if r["meets"] else "what stands in the way"
        notes.append(
            f"{r['family']}, {r['iree']}{outside}, {verdict}: decode: {r['step']}; "
            f"prefill: {r['prompt']}"
        )
    return Table(records, columns, {}, notes=notes)


def _pair(iree: float | None, llamacpp: float | None, fmt: Any = fmt_num) -> str:
    return f"{fmt(iree)} / {fmt(llamacpp)}" if iree is not None or llamacpp is not None else ""
