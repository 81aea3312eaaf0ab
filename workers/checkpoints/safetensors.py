"""A Hugging Face checkpoint directory (config.json and safetensors) as float32 tensors.

Workers never import torch, so checkpoints are read by parsing safetensors directly:
an 8-byte little-endian header length, a JSON header mapping each tensor name to its
dtype, shape and byte range, then the raw little-endian data. numpy alone cannot
represent bfloat16 (the dtype most Llama checkpoints ship in), so `ml_dtypes` supplies
it; every tensor is widened to float32 so later stages see one dtype whatever the file
held. Sizes are checked against the file before any data is read, so a truncated
download fails with a message instead of a short read.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from workers.checkpoints.tensors import CheckpointError, LazyTensors
from workers.core.config import LlamaConfig, expected_shapes

SINGLE_FILE = "model.safetensors"


INDEX_FILE = "model.safetensors.index.json"


CONFIG_FILE = "config.json"


# safetensors dtype names -> numpy dtypes; the format is little-endian by definition.
_DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
}


_HEADER_LEN_BYTES = 8


@dataclasses.dataclass(frozen=True)
class _Header:
    """A parsed safetensors header: where the data starts and each tensor's entry."""

    path: Path
    data_start: int  # byte offset of the data section in the file
    file_bytes: int
    entries: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _TensorSpan:
    """A validated tensor location, ready to read without further checks."""

    path: Path
    dtype: np.dtype
    offset: int  # absolute byte offset in the file
    shape: tuple[int, ...]


def _validated_spans(root: Path) -> tuple[LlamaConfig, dict[str, _TensorSpan]]:
    if not root.is_dir():
        raise CheckpointError(
            f"{root}: checkpoint directory does not exist; pass a directory holding "
            f"{CONFIG_FILE} and {SINGLE_FILE} (or {INDEX_FILE} and its shards), or a .gguf file"
        )
    cfg = _read_config(root / CONFIG_FILE)
    shapes = expected_shapes(cfg)
    files = _tensor_files(root, list(shapes))
    headers = {file: _read_header(file) for file in dict.fromkeys(files.values())}
    spans = {name: _locate(headers[files[name]], name, shape) for name, shape in shapes.items()}
    return cfg, spans


def _read_config(config_path: Path) -> LlamaConfig:
    try:
        return LlamaConfig.from_json_file(config_path)
    except ValueError as e:  # already names the file
        raise CheckpointError(str(e)) from None


def _tensor_files(root: Path, names: list[str]) -> dict[str, Path]:
    """Which file holds each needed tensor: the single file, else the index's shards."""
    single = root / SINGLE_FILE
    if single.is_file():
        return dict.fromkeys(names, single)
    index = root / INDEX_FILE
    if not index.is_file():
        raise CheckpointError(
            f"{root}: neither {SINGLE_FILE} nor {INDEX_FILE} found; "
            "save the model with safe_serialization=True (pytorch_model.bin is not supported)"
        )
    weight_map = _read_weight_map(index)
    files: dict[str, Path] = {}
    for name in names:
        if name not in weight_map:
            raise CheckpointError(
                f"{index}: tensor {name!r} is missing from weight_map; the checkpoint does not "
                "match config.json"
            )
        files[name] = root / weight_map[name]
        if not files[name].is_file():
            raise CheckpointError(
                f"{index}: shard {weight_map[name]!r} (holding tensor {name!r}) not found in "
                f"{root}; the download is incomplete"
            )
    return files


def _read_weight_map(index: Path) -> dict[str, str]:
    """The index's tensor name -> shard file name map, checked for shape."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names")
    return weight_map


def _read_header(path: Path) -> _Header:
    """Reads a safetensors header, checking its length against the file size first."""
    file_bytes = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(_HEADER_LEN_BYTES)
        if len(prefix) < _HEADER_LEN_BYTES:
            raise CheckpointError(
                f"{path}: truncated ({file_bytes} bytes, shorter than the 8-byte header "
                "length); re-download it"
            )
        header_bytes = int.from_bytes(prefix, "little")
        data_start = _HEADER_LEN_BYTES + header_bytes
        if data_start > file_bytes:
            raise CheckpointError(
                f"{path}: truncated: the header claims {header_bytes} bytes but the file has "
                f"{file_bytes}; re-download it"
            )
        raw = f.read(header_bytes)
    try:
        entries = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header, not JSON ({e})") from None
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header, not a JSON object")
    entries.pop("__metadata__", None)
    return _Header(path=path, data_start=data_start, file_bytes=file_bytes, entries=entries)


def _locate(header: _Header, name: str, shape: tuple[int, ...]) -> _TensorSpan:
    """Validates one tensor's header entry (dtype, shape, byte range) without reading it."""
    where = f"{header.path}: tensor {name!r}"
    entry = header.entries.get(name)
    if entry is None:
        raise CheckpointError(f"{where} is missing; the checkpoint does not match config.json")
    try:
        dtype_name, got_shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
        begin, end = (int(x) for x in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: corrupt header entry {entry!r} ({e})") from None
    if dtype_name not in _DTYPES:
        raise CheckpointError(
            f"{where}: unsupported dtype {dtype_name!r}; supported: {', '.join(_DTYPES)}"
        )
    if got_shape != shape:
        raise CheckpointError(
            f"{where}: wrong shape, expected {shape} from config.json but got {got_shape}"
        )
    dtype = _DTYPES[dtype_name]
    if header.data_start + end > header.file_bytes:
        raise CheckpointError(
            f"{where}: truncated: data ends at byte {header.data_start + end} but the file has "
            f"{header.file_bytes}; re-download it"
        )
    if not 0 <= begin <= end or end - begin != _num_elements(shape) * dtype.itemsize:
        raise CheckpointError(
            f"{where}: corrupt header, data_offsets [{begin}, {end}] do not hold "
            f"{_num_elements(shape)} {dtype_name} values"
        )
    return _TensorSpan(path=header.path, dtype=dtype, offset=header.data_start + begin, shape=shape)


def _read_tensor(span: _TensorSpan, name: str) -> np.ndarray:
    """Reads one validated tensor and widens it to a C-contiguous float32 array."""
    count = _num_elements(span.shape)
    data = np.fromfile(span.path, dtype=span.dtype, count=count, offset=span.offset)
    if data.size != count:  # the file shrank after its header was checked
        raise CheckpointError(f"{span.path}: tensor {name!r}: short read; the file is truncated")
    # fromfile returns a fresh array, so the float32 case needs no second copy.
    return np.ascontiguousarray(data.reshape(span.shape).astype(np.float32, copy=False))


def _num_elements(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def lazy_safetensors(root: Path) -> LazyTensors:
    """The directory's tensors, all validated now, each read and widened when asked for."""
    _, spans = _validated_spans(root)
    makers = {name: functools.partial(_read_tensor, span, name) for name, span in spans.items()}
    return LazyTensors(makers)


def check_safetensors(root: Path) -> LlamaConfig:
    """Everything `lazy_safetensors` checks, without reading tensor data."""
    return _validated_spans(root)[0]


def safetensors_config(root: Path) -> LlamaConfig:
    return LlamaConfig.from_json_file(root / CONFIG_FILE)


def checkpoint_files(root: Path) -> list[str]:
    """The files that hold the weights' identity: config.json, the index, the shards."""
    cfg = _read_config(root / CONFIG_FILE)
    tensor_files = _tensor_files(root, list(expected_shapes(cfg))).values()
    index = [INDEX_FILE] if (root / INDEX_FILE).is_file() else []
    return [CONFIG_FILE, *index, *sorted({file.name for file in tensor_files})]
