"""Grid expansion and point keys: pure functions, checked without Ray or a compiler."""

from __future__ import annotations

import dataclasses

from sweep.plan.config import load_config
from sweep.plan.grid import KEY_VERSION, expand, point_label
from workers.core.config import preset

TINY = preset("tiny")


def grid(*overrides: str):
    cfg, _ = load_config(["+grid=smoke", *overrides])
    return cfg, expand(cfg, "weights-a")


def test_expansion_is_the_cross_product_in_actor_order():
    cfg, points = grid()
    assert len(points) == 2 * 2 * 2  # variants x flag sets x prompt lengths, one device
    order = [(p.variant.name, p.flag_set, p.prompt_length) for p in points]
    assert order == sorted(order, key=lambda o: (["fp32", "int4"].index(o[0]), o[1] != "default"))
    assert all(p.device == cfg.devices["cpu"] and p.runtime == "iree" for p in points)
    assert {p.prompt_bucket for p in points} == {16, 32}


def test_keys_are_deterministic_and_cover_what_changes_a_measurement():
    _, points = grid()
    assert [p.key for p in points] == [p.key for p in grid()[1]], "same command, same keys"
    assert len({p.key for p in points}) == len(points)
    base = points[0]
    for change in (
        {"model_id": "weights-b"},
        {"flags": ("--iree-opt-level=O2",)},
        {"max_seq": 256},
        {"steps": dataclasses.replace(base.steps, decode_steps=99)},
        {"variant": dataclasses.replace(base.variant, dtype="bfloat16")},
        {"device": dataclasses.replace(base.device, target_flags=("--other",))},
    ):
        assert dataclasses.replace(base, **change).key != base.key, change
    for label_only in ({"model": "renamed"}, {"flag_set": "renamed"}):
        assert dataclasses.replace(base, **label_only).key == base.key, label_only
    assert KEY_VERSION >= 2


def test_decode_graphs_do_not_depend_on_the_prompt():
    _, points = grid("grid.prompt_lengths=[8,32,64,100]", "grid.max_seq=256")
    decode = {p.graph(TINY, "decode") for p in points}
    prefill = {p.graph(TINY, "prefill") for p in points}
    assert len(decode) == 2, "one decode graph per variant (compiled once per flag set)"
    assert {g.bucket for g in prefill} == {16, 32, 64, 128}


def test_xla_points_carry_no_flag_set_and_limited_flag_sets_stay_on_their_device():
    cfg, points = grid(
        "grid.runtimes=[iree,xla]",
        "grid.devices=[cpu,cuda]",
        "+grid.flag_sets.sm={flags:['--iree-cuda-target=sm_80'],devices:[cuda]}",
    )
    xla = [p for p in points if p.runtime == "xla"]
    assert xla and {p.flag_set for p in xla} == {"-"} and not any(p.compiled_by_iree for p in xla)
    assert {p.device.name for p in points if p.flag_set == "sm"} == {"cuda"}


def test_point_labels():
    _, points = grid("grid.runtimes=[iree,xla]")
    assert points[0].label == "fp32/cpu/L8/default"
    assert (
        point_label(
            {
                "variant": "int4",
                "device": "cuda",
                "prompt_length": 32,
                "flag_set": "-",
                "runtime": "xla",
            }
        )
        == "int4/cuda/L32/-/xla"
    )
    _, points = grid("grid.batch_sizes=[4]", "grid.depths=[16]", "grid.attention=[filled]")
    span = points[0].attention_span
    assert span is not None and points[0].prompt_length == 8
    assert points[0].label == f"fp32/cpu/L8/b4/d16/a{span}/default", "non-default shapes shown"


def test_a_point_becomes_the_workers_task():
    _, points = grid()
    task = points[-1].task()
    assert task.variant.name == "int4" and task.runtime == "iree"
    assert (task.prompt_length, task.prompt_bucket, task.max_seq) == (32, 32, 128)
    assert task.steps.num_tokens == 1 + 2 + 16


def test_the_weights_axis_is_iree_graphs_and_leaves_the_default_keys_alone():
    _, plain = grid("grid.runtimes=[iree,xla]")
    _, both = grid("grid.runtimes=[iree,xla]", "grid.weights=[arguments,parameters]")
    assert {p.key for p in plain} <= {p.key for p in both}, "arguments keep their keys"
    iree = [p for p in both if p.runtime == "iree"]
    assert len(iree) == 2 * len([p for p in plain if p.runtime == "iree"])
    xla = [p for p in both if p.runtime == "xla"]
    assert xla == [p for p in plain if p.runtime == "xla"], "XLA holds no parameters: once"
    assert {p.weights for p in xla} == {"arguments"}
    params = [p for p in iree if p.weights == "parameters"]
    assert all("/params/" in p.label for p in params)
    graphs = {p.graph(TINY, "decode") for p in params}
    assert {g.weights for g in graphs} == {"parameters"} and all(
        "_params_" in g.label for g in graphs
    )
    _, only = grid("grid.runtimes=[iree,xla]", "grid.weights=[parameters]")
    assert {p.runtime for p in only} == {"iree", "xla"}, "a baseline runs with parameters alone too"


def test_the_llamabench_grid_puts_llamacpp_beside_each_family():
    cfg, _ = load_config(["+grid=llamabench"])
    points = expand(cfg, "weights-a")
    assert cfg.bench.steps.decode_steps == 128 and {p.prompt_length for p in points} == {512}
    llamacpp = {p.variant.llamacpp_type for p in points if p.runtime == "llamacpp"}
    iree = {p.variant.llamacpp_type for p in points if p.runtime == "iree"}
    assert llamacpp == iree, "each IREE family has llama.cpp's nearest type beside it"
    assert {p.weights for p in points if p.runtime == "iree"} == {"parameters"}
    four_bit = {p.variant.name for p in points if p.variant.bits == 4}
    assert four_bit == {"int4-idot-g32-q8e"} and "Q4_1" in llamacpp, (
        "4-bit with its output matrix in 8 bits: data tiling of a 4-bit output matrix runs "
        "iree-compile out of memory (benchmarks/repro/grouped_int4_data_tiling.md)"
    )
