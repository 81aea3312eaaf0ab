"""A weight variant as one value: how the linears are stored, what the graph computes in,
and how closely its tokens must follow its XLA reference.

A variant is data (`conf/variant/<name>.yaml`), so adding a quantization format is a
YAML file, as adding a device is. Code asks this object, never the variant's name:
the graph's weight arguments (`arg_specs`), the dtype of activations and KV cache,
and the token-match rule.

Quantized variants are affine and asymmetric, per group of `group_size` along the
contraction (input) dimension of each of the 7 per-layer linears:

    w[g*G + j, o] ~= q[g*G + j, o] * scale[g, o] + minimum[g, o],   q in [0, 2^bits)

The integers are packed little-end-first into uint32 lanes along the input
dimension (8 int4 or 4 int8 per lane), so the graph receives a uint32 array of
shape [in * bits / 32, out] plus a scale and a minimum of shape [in / G, out]. The
embedding and the norms stay fp32. Every matrix reaches the graph input-major,
[in, out], so each matmul is `x @ W` (see `workers/quant.py` for why).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from workers.llama_config import LlamaConfig, expected_shapes, is_linear

DTYPES: tuple[str, ...] = ("float32", "bfloat16")
STORAGES: tuple[str, ...] = ("uint32",)
MATCH_RULES: tuple[str, ...] = ("all", "first")


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a dtype name, bfloat16 (from ml_dtypes) included."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclasses.dataclass(frozen=True)
class ArgSpec:
    """One graph argument: its name, shape and numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of holding a model's weights for the graphs (see the module docstring)."""

    name: str
    bits: int | None = None  # 4 or 8: the per-layer linears are quantized; None: floating point
    dtype: str = "float32"  # activations and KV cache; also the float weights' dtype
    group_size: int | None = None  # quantization group along the contraction dimension
    storage: str = "uint32"  # how quantized integers are held: packed into uint32 lanes
    scale_dtype: str = "float32"  # dtype of the per-group scale and minimum
    # Greedy tokens against the XLA reference of the same graph: "all" must match;
    # "first" only the first, for a dtype whose rounding differs between XLA and IREE.
    match: str = "all"

    def __post_init__(self) -> None:
        where = f"variant {self.name!r}"
        if self.bits not in (None, 4, 8):
            raise ValueError(f"{where}: bits={self.bits}; allowed: 4, 8 or null (not quantized)")
        for field, allowed in (
            ("dtype", DTYPES),
            ("storage", STORAGES),
            ("scale_dtype", DTYPES[:1]),
            ("match", MATCH_RULES),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"{where}: {field}={getattr(self, field)!r}; allowed: {list(allowed)}"
                )
        if self.quantized:
            if self.dtype != "float32":
                raise ValueError(f"{where}: a quantized variant computes in float32")
            if not self.group_size or self.group_size % self.values_per_lane:
                raise ValueError(
                    f"{where}: group_size={self.group_size} must be a positive multiple of "
                    f"{self.values_per_lane} ({32 // self.values_per_lane}-bit values per lane)"
                )
        elif self.group_size is not None:
            raise ValueError(f"{where}: group_size applies to quantized variants only (set bits)")

    @property
    def fingerprint(self) -> str:
        """A short hash of the whole definition: two variants that hold different numbers
        differ here, whatever their names."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    @property
    def values_per_lane(self) -> int:
        assert self.bits is not None, "only quantized variants pack into lanes"
        return 32 // self.bits

    def min_tokens_matched(self, num_tokens: int) -> int:
        """How many leading tokens must equal the reference for the point to be ok."""
        return num_tokens if self.match == "all" else min(1, num_tokens)

    def check_model(self, cfg: LlamaConfig) -> None:
        """Every linear's input dimension must split into whole groups."""
        if not self.quantized:
            return
        assert self.group_size is not None
        for dim in sorted(
            {cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.intermediate_size}
        ):
            if dim % self.group_size:
                raise ValueError(
                    f"variant {self.name!r}: group_size={self.group_size} does not divide the "
                    f"linear input dimension {dim}; pick one that divides hidden_size, "
                    "intermediate_size and heads*head_dim"
                )

    def is_quantized_tensor(self, name: str) -> bool:
        """True for the checkpoint tensors this variant quantizes: the per-layer linears."""
        return self.quantized and is_linear(name)

    def arg_specs(self, cfg: LlamaConfig) -> tuple[ArgSpec, ...]:
        """The graph's weight arguments in order, without materializing any weight.

        Export needs only these, so a compile task never has to build the weights.
        """
        self.check_model(cfg)
        specs: list[ArgSpec] = []
        for name, hf_shape in expected_shapes(cfg).items():
            shape = hf_shape[::-1]  # input-major: [in, out]
            if self.is_quantized_tensor(name):
                assert self.group_size is not None
                in_dim, out_dim = shape
                groups = (in_dim // self.group_size, out_dim)
                specs += [
                    ArgSpec(f"{name}.qweight", (in_dim // self.values_per_lane, out_dim), "uint32"),
                    ArgSpec(f"{name}.scale", groups, self.scale_dtype),
                    ArgSpec(f"{name}.minimum", groups, self.scale_dtype),
                ]
            else:
                dtype = "float32" if self.quantized else self.dtype
                specs.append(ArgSpec(name, shape, dtype))
        return tuple(specs)
