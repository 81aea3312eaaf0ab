"""Helpers the tests share: the project's own devices and variants, and checkpoint tools
that only tests need."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from workers.devices import DeviceSpec
from workers.llama_config import LlamaConfig
from workers.measurement import Measurement
from workers.quant import VariantWeights, dequantize, unpack_lanes, unpack_uint4
from workers.variant import EMBEDDING, Variant


@functools.cache
def _defaults():
    from sweep.config import load_config

    return load_config([])[0]


def device(name: str) -> DeviceSpec:
    """A device as conf/device/<name>.yaml defines it: the sweep's own definition."""
    return _defaults().devices[name]


def variant(name: str) -> Variant:
    """A variant as conf/variant/<name>.yaml defines it."""
    return _defaults().variants[name]


def load_checkpoint(path: Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Every tensor of a checkpoint directory, read by the project's own loader."""
    from workers.checkpoint import check_checkpoint, lazy_checkpoint

    tensors = lazy_checkpoint(path)
    return check_checkpoint(path), {name: tensors[name] for name in tensors}


def host_dequantized(vw: VariantWeights) -> dict[str, np.ndarray]:
    """A variant dequantized on the host back to fp32 checkpoint tensors ([out, in]): what
    the graph's in-graph dequant must compute."""
    by_name = dict(zip(vw.names, vw.arrays, strict=True))
    specs = {spec.name: spec for spec in vw.specs}
    out: dict[str, np.ndarray] = {}
    for name, array in by_name.items():
        if name.endswith((".scale", ".minimum", ".qbytes")):
            continue
        if not name.endswith(".qweight"):
            w = np.asarray(array, dtype=np.float32)
            out[name] = w.T.copy() if w.ndim == 2 and vw.layout == "in_major" else w
            continue
        base = name.removesuffix(".qweight")
        transposed = vw.layout == "in_major" and base not in (EMBEDDING, "lm_head.weight")
        axis = 0 if transposed else 1
        if specs[name].dtype == "uint32":
            assert vw.variant.bits is not None
            values = unpack_lanes(array, vw.variant.bits, axis)
        elif specs[name].dtype == "uint4":
            values = unpack_uint4(array).reshape(specs[name].shape)
        else:
            values = array
        if values.ndim == 3:  # factored: [N, K/G, G] or [K/G, G, N] -> the 2-D matrix
            values = (
                values.reshape(-1, values.shape[-1])
                if transposed
                else values.reshape(values.shape[0], -1)
            )
        scale, minimum = by_name[f"{base}.scale"], by_name[f"{base}.minimum"]
        if transposed:
            values, scale, minimum = values.T, scale.T, minimum.T
        offset = vw.variant.offset_of(base)
        out[base] = dequantize(np.ascontiguousarray(values), scale, minimum, offset)
    return out


def fake_measurement(
    tokens: tuple[int, ...], reference: tuple[int, ...] | None = None, **fields: object
) -> Measurement:
    """A measurement as a worker returns it, for code that only reads one (rows, scheduler)."""
    reference = tokens if reference is None else reference
    matched = next(
        (i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b),
        min(len(tokens), len(reference)),
    )
    defaults: dict[str, object] = {
        "prefill_samples_ms": (3.0, 1.0, 2.0),
        "decode_samples_ms": (4.0, 2.0, 3.0, 5.0),
        "prompt_ids": (1, 2),
        "tokens": tokens,
        "reference_tokens": reference,
        "num_tokens_matched": matched,
        "bench_s": 0.5,
        "upload_s": 0.25,
        "weight_bytes": 1000,
        "quant_error": 0.0,
        "fp32_agreement": 1.0,
        "fp32_logit_error": 0.0,
        "bytes_per_token": 3_000_000,
        "peak_gbps": 1.0,
        "hostname": "h",
        "device_name": "a CPU",
        "node_id": "n1",
    }
    return Measurement(**{**defaults, **fields})  # type: ignore[arg-type]
