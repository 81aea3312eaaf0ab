"""`jax.export` of the prefill and decode graphs to StableHLO text.

Export needs only shapes and dtypes (`jax.ShapeDtypeStruct`, nothing allocated),
so a compile task never builds the weights. Two facts shape this module:
`jax.export` drops unused arguments unless the function is jitted with
`keep_unused=True`, and exporting for `platforms=["cpu"]` keeps CUDA-specific
`custom_call`s out of the module, which IREE could not compile. The text is a pure
function of the `GraphSpec` and is hashed into the compile cache key.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.core import config
from workers.core.config import LlamaConfig
from workers.core.kinds import GraphKind, Layout, Weights, check
from workers.formats import base, direct, floating, variant
from workers.formats.variant import ArgSpec, Variant, numpy_dtype
from workers.model.graphs import LlamaGraphs, batched, cache_shape
from workers.model.parameters import SCOPE, one_module

GRAPH_KINDS: tuple[GraphKind, ...] = tuple(GraphKind)
# what every point runs; score: the quality columns
TIMED_KINDS: tuple[GraphKind, ...] = (GraphKind.PREFILL, GraphKind.DECODE)


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """What determines one exported graph; `bucket` is the prefill prompt bucket, 0 for decode.

    A `score` graph (`workers.measure.perplexity`) takes one window of `bucket` tokens (and
    `max_seq == bucket`) and returns the logits of its scored second half.
    """

    cfg: LlamaConfig
    variant: Variant
    max_seq: int
    kind: str
    bucket: int = 0
    layout: str = Layout.IN_MAJOR
    steps_per_call: int = 1  # decode: greedy steps per call, a loop in the graph when > 1
    batch: int = 1  # sequences per call (one graph of one sequence, vmapped)
    attention_span: int | None = None  # decode: cache slots attended; None: all max_seq
    weights: str = Weights.ARGUMENTS  # or parameters (workers.model.parameters)

    def __post_init__(self) -> None:
        check(GraphKind, self.kind, "graph kind")
        check(Weights, self.weights, "weights")
        if self.kind == GraphKind.PREFILL and not 0 < self.bucket <= self.max_seq:
            raise ValueError(f"prefill bucket {self.bucket} must be in [1, max_seq={self.max_seq}]")
        if self.kind == GraphKind.SCORE and not (
            4 <= self.bucket == self.max_seq and self.batch == 1
        ):
            raise ValueError(f"score window {self.bucket}: at least 4, max_seq equal, batch 1")
        if self.steps_per_call < 1 or (self.kind != GraphKind.DECODE and self.steps_per_call != 1):
            raise ValueError(f"steps_per_call={self.steps_per_call}: 1 or more, and 1 for prefill")
        if self.batch < 1:
            raise ValueError(f"batch={self.batch}: 1 or more")
        span = self.attention_span
        if span is not None and (self.kind != GraphKind.DECODE or not 0 < span <= self.max_seq):
            raise ValueError(f"attention_span={span}: decode only, within max_seq={self.max_seq}")

    @property
    def label(self) -> str:
        suffix = f"_b{self.bucket}" if self.kind != GraphKind.DECODE else f"_k{self.steps_per_call}"
        span = f"_a{self.attention_span}" if self.attention_span else ""
        shape = f"{suffix}{span}_B{self.batch}_s{self.max_seq}"
        held = "_params" if self.weights == Weights.PARAMETERS else ""
        return f"{self.variant.name}_{self.layout}{held}_{self.kind}{shape}"

    def entry_flags(self, parameters_file: str | Path | None = None) -> list[str]:
        """How IREE's tools call this graph: `main` of its own module, its weights among the
        inputs; with weights as parameters, its module's entry point of its kind
        (`ModuleSpec`) on the weights in `parameters_file` (an `.irpa`)."""
        if self.weights != Weights.PARAMETERS:
            return ["--function=main"]
        if parameters_file is None:
            raise ValueError(f"{self.label} holds its weights as parameters: name their file")
        return [f"--function={self.kind}", f"--parameters={SCOPE}={parameters_file}"]

    def call_args(self) -> tuple[ArgSpec, ...]:
        """The arguments a call passes: all of `args()`, or only the dynamic inputs when the
        weights are parameters (the module holds them)."""
        if self.weights != Weights.PARAMETERS:
            return self.args()
        return self.args()[len(self.variant.arg_specs(self.cfg, self.layout)) :]

    def args(self) -> tuple[ArgSpec, ...]:
        """Every argument of the graph in order: the weights, then the dynamic inputs.

        prefill(weights..., tokens[bucket], real_len)
        decode(weights..., token, pos, kcache, vcache)
        score(weights..., tokens[bucket])

        A decode graph of several steps per call returns its tokens and its last token
        beside the caches; its arguments are the same. With a batch of B sequences the
        tokens and caches gain a leading dimension B; the position and prompt length are
        shared.
        """
        weights = self.variant.arg_specs(self.cfg, self.layout)
        lead = (self.batch,) if self.batch > 1 else ()
        if self.kind == GraphKind.SCORE:
            return (*weights, ArgSpec("tokens", (self.bucket,), "int32"))
        if self.kind == GraphKind.PREFILL:
            return (
                *weights,
                ArgSpec("tokens", (*lead, self.bucket), "int32"),
                ArgSpec("real_len", (), "int32"),
            )
        cache = (*lead, *cache_shape(self.cfg, self.max_seq))
        return (
            *weights,
            ArgSpec("token", lead, "int32"),
            ArgSpec("pos", (), "int32"),
            ArgSpec("kcache", cache, self.variant.dtype),
            ArgSpec("vcache", cache, self.variant.dtype),
        )

    def function(self) -> Callable[..., Any]:
        """The JAX function this graph is, taking (weights tuple, dynamic inputs...):
        what export lowers and what the XLA back end compiles."""
        span = self.attention_span if self.kind == GraphKind.DECODE else None
        graphs = LlamaGraphs(self.cfg, self.variant, self.max_seq, self.layout, span)
        if self.kind == GraphKind.SCORE:
            return graphs.score_logits
        if self.kind == GraphKind.PREFILL:
            return batched(graphs.prefill, self.batch, (False, True, False))
        step = graphs.decode
        if self.steps_per_call > 1:
            step = functools.partial(graphs.decode_steps, steps=self.steps_per_call)
        return batched(step, self.batch, (False, True, False, True, True))


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    """A point's graphs as the entry points of one module, as a deployed model is built:
    their weights one set of parameters that every entry point reads, so that data tiling
    packs each weight once (`workers.model.parameters.one_module`). An entry point is
    named by its graph's kind: `prefill`, `decode`, `score`.

    What a point compiles when its weights are parameters; with arguments each graph is
    its own module.
    """

    graphs: tuple[GraphSpec, ...]

    def __post_init__(self) -> None:
        kinds = [g.kind for g in self.graphs]
        if not self.graphs or len(set(kinds)) != len(kinds):
            raise ValueError(f"a module holds graphs of distinct kinds, got {kinds}")
        first = self.graphs[0]
        for g in self.graphs:
            if g.weights != Weights.PARAMETERS:
                raise ValueError(f"{g.label}: one module shares parameters; weights={g.weights}")
            if (g.cfg, g.variant, g.layout) != (first.cfg, first.variant, first.layout):
                raise ValueError(f"{g.label}: a module's graphs share one model, variant, layout")

    @property
    def cfg(self) -> LlamaConfig:
        return self.graphs[0].cfg

    @property
    def variant(self) -> Variant:
        return self.graphs[0].variant

    @property
    def layout(self) -> str:
        return self.graphs[0].layout

    @property
    def label(self) -> str:
        return "+".join(g.label for g in self.graphs)

    def graph(self, kind: str) -> GraphSpec:
        """The graph of the entry point `kind`."""
        for g in self.graphs:
            if g.kind == kind:
                return g
        raise KeyError(f"module {self.label} has no {kind} entry point")


Compilable = GraphSpec | ModuleSpec  # what one compile (one vmfb) is built from


@dataclasses.dataclass(frozen=True)
class ExportedGraph:
    spec: Compilable
    stablehlo: str
    sha256: str


def export_graph(spec: Compilable) -> ExportedGraph:
    """The StableHLO of a graph, or of a module of graphs (`ModuleSpec`). A graph whose
    weights are parameters is exported as a module of one entry point, named by its kind."""
    if isinstance(spec, GraphSpec) and spec.weights == Weights.PARAMETERS:
        text = _joined(ModuleSpec((spec,)))
    elif isinstance(spec, ModuleSpec):
        text = _joined(spec)
    else:
        text = _exported(spec)
    return ExportedGraph(spec, text, hashlib.sha256(text.encode()).hexdigest())


def _joined(module: ModuleSpec) -> str:
    parts = [dataclasses.replace(g, weights=Weights.ARGUMENTS) for g in module.graphs]
    names = [a.name for a in module.variant.arg_specs(module.cfg, module.layout)]
    return one_module({g.kind: _exported(g) for g in parts}, names)


def _exported(spec: GraphSpec) -> str:
    """`jax.export` of one graph, its weights arguments, as StableHLO text."""
    import jax

    structs = [jax.ShapeDtypeStruct(a.shape, numpy_dtype(a.dtype)) for a in spec.args()]
    num_weights = len(spec.variant.arg_specs(spec.cfg, spec.layout))
    args = (tuple(structs[:num_weights]), *structs[num_weights:])
    fn = _named(spec.function(), spec.kind)
    exported = jax.export.export(jax.jit(fn, keep_unused=True), platforms=["cpu"])(*args)
    text = _strip_locations(exported.mlir_module())
    if "custom_call" in text:
        raise RuntimeError(
            f"{spec.label}: exported StableHLO contains a custom_call IREE cannot lower"
        )
    return text


def _named(method, name: str):
    """A plain function named `name`, so the module is `jit_prefill` / `jit_decode`."""

    def fn(*args):
        return method(*args)

    fn.__name__ = fn.__qualname__ = name
    return fn


def _strip_locations(text: str) -> str:
    """Reprints the module without debug locations, which name the caller's file and line.

    Without this the same graph exported from two call sites (or hosts with the
    project at different paths) would hash differently and never share a compile.
    """
    from jax._src.interpreters import mlir as jax_mlir
    from jax._src.lib.mlir import ir

    with jax_mlir.make_ir_context():
        module = ir.Module.parse(text)
        return module.operation.get_asm(enable_debug_info=False)


def graph_sources(v: Variant) -> tuple[Path, ...]:
    """The source files a graph of variant `v` is built from: this package (the graphs
    and their export), the model's config, the variant's definition and the formats its
    tensors are multiplied in (its own, and the `direct` and `float` ones an ungrouped
    or unquantized tensor takes). Host-side code (packing, checkpoints) is not among
    them: an edit there leaves every graph's export memo valid."""
    here = Path(__file__).resolve().parent
    modules = {config, base, variant, direct, floating}
    modules |= {inspect.getmodule(cls) for cls in type(v.format).__mro__[:-1]}
    files = {*here.glob("*.py"), *(Path(inspect.getfile(m)).resolve() for m in modules)}
    return tuple(sorted(files))


@functools.cache
def source_sha(v: Variant) -> str:
    """sha256 over `graph_sources(v)`: part of every graph's cache key."""
    digest = hashlib.sha256()
    for path in graph_sources(v):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def prompt_bucket(prompt_length: int, max_seq: int, min_bucket: int = 16) -> int:
    """The static prefill length for a prompt: the next power of two, capped at the cache."""
    if not 0 < prompt_length <= max_seq:
        raise ValueError(f"prompt_length={prompt_length} must be in [1, max_seq={max_seq}]")
    bucket = max(min_bucket, 1 << (prompt_length - 1).bit_length())
    return min(bucket, max_seq)
