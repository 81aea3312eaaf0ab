"""The sweep end to end on a real two-node Ray cluster, real iree-compile, real Parquet."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import pytest

from sweep.plan.config import load_config
from sweep.plan.grid import expand
from sweep.store.results import read_results
from tests.helpers import ROOT, SMOKE_FP32, save_tiny_llama, sweep
from workers.core.config import preset

SPLIT_REDUCTION = "--iree-dispatch-creation-enable-split-reduction"

pytestmark = pytest.mark.slow  # a real Ray cluster, iree-compile and subprocesses


@pytest.fixture(scope="module")
def smoke(ray_cluster, tmp_path_factory, shared_cache):
    """The smoke grid once, on a fresh compile cache, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("smoke")
    cache = tmp / "cache"
    outcome, text = sweep(tmp, cache, "+grid=smoke")
    return tmp, cache, outcome, text


def test_smoke_grid_gives_one_ok_row_per_point(smoke):
    tmp, _, outcome, text = smoke
    assert outcome.exit_code == 0, text
    assert outcome.num_points == 8  # 2 variants x 2 prompt lengths x 2 flag sets x 1 device
    table = read_results(tmp / "results")
    assert table.num_rows == 8
    rows = table.to_pylist()
    assert {r["status"] for r in rows} == {"ok"}, text
    assert len({r["point_key"] for r in rows}) == 8
    for r in rows:
        assert r["num_tokens_matched"] == len(r["tokens"]) == 1 + 2 + 16, r["point_key"]
        assert r["tokens"] == r["reference_tokens"]
        assert len(r["decode_samples_ms"]) == r["num_decode_steps"] == 16
        assert r["decode_ms_p10"] <= r["decode_ms_p50"] <= r["decode_ms_p90"]
        assert r["num_dispatches"] > 0 and r["vmfb_bytes"] > 0 and r["weight_bytes"] > 0
        assert (
            "iree-compile" in r["repro_command"] and "iree-benchmark-module" in r["repro_command"]
        )
    # DuckDB reads the dataset as written.
    con = duckdb.connect()
    got = con.execute(
        "SELECT variant, count(*), median(decode_ms_p50) FROM read_parquet(?, "
        "union_by_name=true, hive_partitioning=false) GROUP BY variant ORDER BY variant",
        [str(tmp / "results" / "**" / "*.parquet")],
    ).fetchall()
    assert [(v, n) for v, n, _ in got] == [("fp32", 4), ("int4", 4)]
    assert all(m > 0 for _, _, m in got)
    assert "| variant | device |" in text  # the summary table


def test_actors_run_on_both_nodes_and_shared_graphs_compile_once(smoke):
    tmp, _, outcome, _ = smoke
    rows = read_results(tmp / "results").to_pylist()
    assert len({r["node_id"] for r in rows}) == 2, "one CPU benchmark actor per node"
    # 2 variants x 2 flag sets x (2 prefill buckets + 1 decode); both nodes have the same
    # CPU, so a host-targeted graph is compiled once for the pair, not once per node.
    assert outcome.counters.num_compiles == 12
    assert outcome.counters.num_compile_cache_hits == 0, "a fresh cache: every compile is real"
    # Each actor uploads each variant once: an upload is a point that found it not resident.
    uploads = sorted((r["node_id"], r["variant"]) for r in rows if r["upload_s"] > 0)
    assert uploads == sorted({(r["node_id"], r["variant"]) for r in rows})
    # bench_s, the measurement's own time, is inside the phase that ran it.
    assert all(r["bench_s"] > 0 for r in rows)
    assert sum(r["bench_s"] for r in rows) < outcome.counters.bench_phase_s * 2  # 2 actors
    assert outcome.counters.compile_phase_s > 0


def test_rerun_skips_finished_points_and_rerun_true_forces_them(smoke):
    tmp, cache, _, _ = smoke
    again, text = sweep(tmp, cache, "+grid=smoke")
    assert again.rows == [] and again.counters is None, "nothing compiled or benchmarked"
    assert "8 already done, 0 to run" in text
    forced, _ = sweep(
        tmp,
        cache,
        *SMOKE_FP32,
        "rerun=true",
        "grid.prompt_lengths=[8]",
    )
    assert [r["status"] for r in forced.rows] == ["ok"]
    assert forced.counters.num_compile_cache_hits == forced.counters.num_compiles == 2


def test_prompt_length_axis_does_not_recompile_decode(ray_cluster, tmp_path, shared_cache):
    outcome, text = sweep(
        tmp_path,
        shared_cache,
        *SMOKE_FP32,
        "grid.prompt_lengths=[32,64,128]",
        "grid.max_seq=256",
        "bench.decode_steps=4",
    )
    assert outcome.exit_code == 0, text
    assert len(outcome.rows) == 3
    # One decode graph and one prefill graph per bucket (32, 64, 128): 4 compiles.
    assert outcome.counters.num_compiles == 4
    cfg, _ = load_config(["+grid=smoke", "grid.prompt_lengths=[32,64,128]", "grid.max_seq=256"])
    points = expand(cfg, "model")
    decode_graphs = {(p.graph(preset("tiny"), "decode"), p.flags) for p in points}
    assert len(decode_graphs) == len(cfg.grid.variants) * len(cfg.grid.flag_sets)


@pytest.mark.gpu
def test_smoke_grid_on_a_gpu_gives_ok_rows_checked_against_xla(ray_cluster, tmp_path, shared_cache):
    """Where a CUDA GPU is present (skipped elsewhere: no GPU), the cuda points run and
    their tokens equal the XLA reference's, as the cpu points' do."""
    outcome, text = sweep(tmp_path, shared_cache, "+grid=smoke", "grid.devices=[cuda]")
    assert outcome.exit_code == 0, text
    assert {r["status"] for r in outcome.rows} == {"ok"}
    assert all(r["num_tokens_matched"] == len(r["tokens"]) for r in outcome.rows)


def test_cuda_on_a_gpu_less_cluster_is_skipped_at_once(ray_cluster, tmp_path, shared_cache):
    start = time.monotonic()
    outcome, text = sweep(tmp_path, shared_cache, "+grid=smoke", "grid.devices=[cuda]")
    assert time.monotonic() - start < 30, "skipping must not wait for a GPU"
    assert outcome.exit_code == 0, text
    assert {r["status"] for r in outcome.rows} == {"skipped"}
    assert all("cuda" in r["error_message"] for r in outcome.rows)
    assert len(read_results(tmp_path / "results")) == 8


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("grid.varients=[fp32]", "grid.varients"),
        ("grid.prompt_lengths=[200]", "grid.prompt_lengths"),
        ("grid.devices=[tpu]", "grid.devices"),
        ("grid.variants=[int3]", "grid.variants"),
        ("bench.decode_steps=many", "bench.decode_steps"),
    ],
)
def test_config_errors_exit_2_before_ray_starts(tmp_path, override, named):
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", "+grid=smoke", override, f"results_dir={tmp_path}/r"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert named in proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr, "no Ray may start for a bad config"
    assert not (tmp_path / "r").exists(), "nothing may be written for a bad config"


def test_xla_baseline_and_roofline_on_every_row(ray_cluster, tmp_path, shared_cache):
    outcome, text = sweep(
        tmp_path, shared_cache, "+grid=smoke", "grid.runtimes=[iree,xla]", "~grid.flag_sets.O3"
    )
    assert outcome.exit_code == 0, text
    rows = outcome.rows
    assert sorted({r["runtime"] for r in rows}) == ["iree", "xla"]
    assert {r["status"] for r in rows} == {"ok"}
    assert len(rows) == 2 * 2 * 2  # variants x prompt lengths x runtimes
    for r in rows:
        assert 0 < r["roofline_frac"] <= 1, (r["runtime"], r["variant"], r["roofline_frac"])
        assert r["bytes_per_token"] > r["weight_bytes"] > 0  # weights plus the KV cache
        assert r["peak_gbps"] > 0
        assert r["tokens"] == r["reference_tokens"]
    xla = [r for r in rows if r["runtime"] == "xla"]
    assert all(r["compile_s"] > 0 and r.get("num_dispatches") is None for r in xla)


def test_every_format_in_both_layouts(ray_cluster, tmp_path, shared_cache):
    """The formulation axes: each weight format in each layout is an ok row whose tokens
    match its own reference, says how far it is from fp32, and out-major graphs count
    other dispatches than in-major ones."""
    formats = "fp32,int4,int4-ui4,int4-ui4-f16,int4-ui4-pc,int4-ui4-qe,int8,int8-u8,int8-u8-pc"
    outcome, text = sweep(
        tmp_path,
        shared_cache,
        "+grid=smoke",
        f"grid.variants=[{formats}]",
        "grid.layouts=[in_major,out_major]",
        "~grid.flag_sets.O3",
        "grid.prompt_lengths=[8]",
    )
    assert outcome.exit_code == 0, text
    rows = outcome.rows
    assert len(rows) == 9 * 2 and {r["status"] for r in rows} == {"ok"}, text
    assert all(r["tokens"] == r["reference_tokens"] for r in rows)
    by = {(r["variant"], r["layout"]): r for r in rows}
    for name in formats.split(","):
        inner, outer = by[(name, "in_major")], by[(name, "out_major")]
        if not name.endswith("-qe"):  # a quantized table is [vocab, hidden] in both layouts
            assert inner["num_dispatches"] != outer["num_dispatches"], name
        assert 0 < inner["fp32_agreement"] <= 1
    assert by[("fp32", "in_major")]["fp32_agreement"] == 1.0
    assert (
        by[("int4-ui4-qe", "in_major")]["weight_bytes"]
        < by[("int4-ui4", "in_major")]["weight_bytes"]
    )


def test_profiles_say_where_the_time_goes(ray_cluster, tmp_path, shared_cache, capsys):
    """profile=true: every ok point gets IREE's dispatch profile, named after its vmfb's own
    dispatch functions, and its step splits into device and host time."""
    from sweep.readers import report
    from sweep.store.results import DISPATCH_SCHEMA, DISPATCHES

    outcome, text = sweep(tmp_path, shared_cache, "+grid=smoke", "profile=true")
    assert outcome.exit_code == 0, text
    rows = outcome.rows
    dispatches = read_results(tmp_path / "results" / DISPATCHES, schema=DISPATCH_SCHEMA).to_pylist()
    assert {d["point_key"] for d in dispatches} == {r["point_key"] for r in rows}
    for r in rows:
        assert 0 < r["device_ms"] <= r["decode_ms_p50"], r
        assert r["host_ms"] == pytest.approx(r["decode_ms_p50"] - r["device_ms"])
        for graph in ("decode", "prefill"):  # each graph's profile is its own whole
            own = [
                d for d in dispatches if d["point_key"] == r["point_key"] and d["graph"] == graph
            ]
            assert sum(d["share"] for d in own) == pytest.approx(1.0), graph
        profile = (
            tmp_path / "results" / "_runs" / r["run_id"] / "profiles" / f"{r['point_key']}.ireeprof"
        )
        assert profile.stat().st_size > 0, "the raw profile, for iree-profile explain"
    exported = "\n".join(p.read_text() for p in shared_cache.glob("work/*.phases/*.flow.mlir"))
    assert all(f"@{d['name']}" in exported for d in dispatches), "names from the compiled graphs"
    assert {d["kind"] for d in dispatches} >= {"matmul", "reduction"}
    assert report.main(["--results", str(tmp_path / "results"), "--dispatches", "2"]) == 0
    assert "main_dispatch_" in capsys.readouterr().out


def test_several_steps_per_call_give_the_same_tokens(ray_cluster, tmp_path, shared_cache):
    one, text = sweep(tmp_path, shared_cache, "+grid=smoke", "~grid.flag_sets.O3")
    assert one.exit_code == 0, text
    eight, text = sweep(
        tmp_path, shared_cache, "+grid=smoke", "~grid.flag_sets.O3", "bench.steps_per_call=8"
    )
    assert eight.exit_code == 0, text
    assert {r["steps_per_call"] for r in eight.rows} == {8}
    by = {(r["variant"], r["prompt_length"]): r for r in one.rows}
    for r in eight.rows:
        base = by[(r["variant"], r["prompt_length"])]
        assert r["tokens"] == r["reference_tokens"] and len(r["tokens"]) == 1 + 8 + 16
        assert r["tokens"][: len(base["tokens"])] == base["tokens"], (
            "a loop in the graph, same tokens"
        )
        assert len(r["decode_samples_ms"]) == 16 // 8, "one sample per timed call, per token"


def only_dimensions(*kept: str) -> list[str]:
    """Overrides that leave only `kept` of conf/search/flags.yaml's flag dimensions."""
    cfg, _ = load_config(["+grid=smoke", "+search=flags"])
    assert cfg.search is not None
    return [f"~search.dimensions.{name}" for name in cfg.search.dimensions if name not in kept]


def test_a_search_finds_a_configuration_and_resumes_without_new_trials(
    ray_cluster, tmp_path, shared_cache
):
    """`+search=flags` through the real scheduler: every trial is a row, a flag that
    iree-compile rejects is a compile_error trial and the search goes on, the same
    command again adds nothing. The space is opt level x a bogus switch (6 configurations),
    all of it searched (the grid's default and O3 seeded, 4 proposed); tests/test_search.py
    covers the sampler's rules at larger budgets."""
    from optuna.trial import TrialState

    from sweep.search.summaries import load_studies

    space = [
        "+search=flags",
        "grid.variants=[fp32]",
        "search.layouts=[in_major]",
        "search.trials=6",
        *only_dimensions("opt_level"),
        "+search.dimensions.bogus={switch: [--iree-no-such-flag]}",
    ]
    outcome, text = sweep(tmp_path, shared_cache, "+grid=smoke", *space)
    assert outcome.exit_code == 0, text
    rows = {r["point_key"]: r for r in outcome.rows}
    bogus = [r for r in rows.values() if "--iree-no-such-flag" in (r["flags"] or [])]
    assert len(bogus) == 3 and {r["status"] for r in bogus} == {"compile_error"}, text
    assert "compile_error" in text and "iree-compile failed (exit code" in text
    (study,) = load_studies(tmp_path / "results")
    assert (study.trials, study.seeded, study.failed, study.space_size) == (4, 2, 3, 6)
    assert study.best_ms <= study.default_ms
    assert study.xla_ms is not None and study.listed is not None
    assert study.minimal is not None and "bogus" not in study.minimal["kept"]
    import optuna

    from sweep.search.study import storage_url

    stored = optuna.load_study(
        study_name=study.name, storage=storage_url(tmp_path / "results")
    ).get_trials(deepcopy=False)
    keys = {t.user_attrs["point_key"] for t in stored if t.state != TrialState.WAITING}
    assert keys <= set(rows), "every trial is a row of the results"

    again, text = sweep(tmp_path, shared_cache, "+grid=smoke", *space)
    assert again.exit_code == 0 and again.rows == [], text
    (same,) = load_studies(tmp_path / "results")
    assert (same.trials, same.seeded) == (4, 2)
    report = subprocess.run(
        [sys.executable, "-m", "sweep.report", "--results", str(tmp_path / "results"), "--search"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert report.returncode == 0 and "| fp32    | cpu    |" in report.stdout, report.stderr
    assert "search answers" in report.stdout, report.stdout


def test_a_search_learns_that_split_reduction_breaks_the_argmax(
    ray_cluster, tmp_path, shared_cache
):
    """The real iree-compile error: split reduction cannot compile the greedy argmax over a
    vocabulary of 1024 (benchmarks/repro/split_reduction_argmax.md; the tiny model's 256
    compiles). The space is opt level x split reduction: the grid seeds default and O3,
    the sampler proposes both with the switch at once, one compiles and fails, and the
    other, held back meanwhile, is told without a compile."""
    from sweep.search.summaries import load_studies

    save_tiny_llama(tmp_path / "model", vocab_size=1024)
    outcome, text = sweep(
        tmp_path,
        shared_cache,
        "+grid=smoke",
        f"model.path={tmp_path / 'model'}",
        "grid.variants=[fp32]",
        "grid.prompt_lengths=[8]",
        "+search=flags",
        "search.layouts=[in_major]",
        "search.trials=3",
        "search.xla_baseline=false",
        "~search.dimensions.opt_level.choices.O1",
        *only_dimensions("opt_level", "split_reduction"),
    )
    assert outcome.exit_code == 0, text
    split = [r for r in outcome.rows if SPLIT_REDUCTION in (r["flags"] or [])]
    assert [r["status"] for r in split] == ["compile_error"], text
    assert "Failed to anaysis the reduction operation" in split[0]["error_message"]
    (study,) = load_studies(tmp_path / "results")
    assert list(study.broken) == ["split_reduction=on"], study.broken
    assert study.skipped >= 1 and (study.trials, study.seeded) == (1, 2)
    assert study.answer is not None and study.answer.origin.startswith("listed")
    assert "broken in fp32/cpu: split_reduction=on breaks the greedy argmax" in text, text


def test_a_batch_and_depth_grid_checks_every_sequence(ray_cluster, tmp_path, shared_cache):
    """Batches of 1 and 4, depths 0 and 64, attention over every slot or the filled ones:
    every row ok, every sequence of a batch equal to its own reference."""
    outcome, text = sweep(
        tmp_path,
        shared_cache,
        "+grid=smoke",
        "grid.variants=[int4]",
        "~grid.flag_sets.O3",
        "grid.prompt_lengths=[8]",
        "grid.batch_sizes=[1,4]",
        "grid.depths=[0,64]",
        "grid.attention=[full,filled]",
    )
    assert outcome.exit_code == 0, text
    rows = outcome.rows
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}, text
    for r in rows:
        n = len(r["tokens"]) // r["batch_size"]
        assert n == 1 + 2 + 16 and r["tokens"] == r["reference_tokens"], r["point_key"]
        assert r["num_tokens_matched"] == len(r["tokens"])
        assert r["tok_s"] == pytest.approx(1000 * r["batch_size"] / r["decode_ms_p50"])
        assert r["prefill_tok_s"] > 0
    batch4 = [r for r in rows if r["batch_size"] == 4]
    assert all(len(set(map(tuple, _sequences(r)))) > 1 for r in batch4), "4 different prompts"
    spans = {(r["depth"], r["attention_span"]) for r in rows}
    assert spans == {(0, None), (64, None), (0, 32), (64, 128)}


def _sequences(row):
    n = len(row["tokens"]) // row["batch_size"]
    return [row["tokens"][b * n : (b + 1) * n] for b in range(row["batch_size"])]
