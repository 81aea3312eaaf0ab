"""Where a model's weights come from: a checkpoint path (a Hugging Face directory of
safetensors, or a GGUF file) or a seed, as one set of functions.

Each function here dispatches on `gguf_file(path)`: a GGUF file (llama.cpp's format,
or a directory holding one) goes to `workers.checkpoints.gguf`, a directory to
`workers.checkpoints.safetensors`. Both give the same lazy float32 tensors
(`LazyTensors`) under Hugging Face names and the same `LlamaConfig`.

Synthetic weights give the default sweep real-model shapes without a download; they
are seeded per tensor, so the same seed yields the same bytes on every host.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from workers.checkpoints.gguf import AS_STORED, find_gguf, lazy_gguf, open_gguf, stored_types
from workers.checkpoints.gguf import check_blocks as check_gguf_blocks
from workers.checkpoints.safetensors import (
    check_safetensors,
    checkpoint_files,
    lazy_safetensors,
    safetensors_config,
)
from workers.checkpoints.tensors import CheckpointError, LazyTensors
from workers.core.config import LlamaConfig, expected_shapes
from workers.core.files import atomic_write

_NORM_STD = 0.02  # std of the synthetic linears and embedding, as Llama's initializer_range


def lazy_checkpoint(path: str | Path, blocks: str | None = None) -> LazyTensors:
    """A Hugging Face Llama checkpoint directory's tensors, read WITHOUT torch.

    The directory needs `config.json` and either `model.safetensors` or the shards named
    by `model.safetensors.index.json`. Every tensor is validated now, before any data is
    read, so a bad checkpoint fails before the slow part; each is then read and widened
    to a float32, C-contiguous array when asked for. Tensors the config does not need
    (a tied `lm_head.weight`, rotary buffers) are ignored. A GGUF file: `workers.checkpoints.gguf`;
    with `blocks` (`Variant.blocks`), its linears as the file's own blocks.
    """
    if (file := gguf_file(path)) is not None:
        return lazy_gguf(file, blocks)
    if blocks is not None:
        check_blocks(path, blocks)  # raises: not a GGUF file
    return lazy_safetensors(Path(path))


def lazy_synthetic_weights(cfg: LlamaConfig, seed: int = 0) -> LazyTensors:
    """Seeded random float32 weights of the config's shapes, each made when asked for.

    Each tensor has its own PCG64 generator seeded from (seed, crc32 of its name), so a
    tensor's bytes do not depend on the other tensors, on generation order or on the
    host (Python's hash() is salted per process, hence crc32). Matrices are
    normal(0, 1/sqrt(fan_in)): with Llama's own init (std 0.02) a random model's
    residual stream is the token embedding and greedy decode repeats one token, which
    would make token comparisons nearly vacuous; at unit gain every layer moves the
    output and the tokens vary. Norm weights are 1 + normal(0, 0.02), so a bug that
    ignores them still changes the output.
    """
    if seed < 0:
        raise ValueError(f"synthetic weights: seed must be >= 0, got {seed}")
    shapes = expected_shapes(cfg)
    return LazyTensors(
        {name: functools.partial(_synthetic_tensor, name, s, seed) for name, s in shapes.items()}
    )


def check_checkpoint(path: str | Path) -> LlamaConfig:
    """Everything `lazy_checkpoint` checks, without reading tensor data: cheap enough for
    the driver to run before any work starts."""
    if (file := gguf_file(path)) is not None:
        return open_gguf(file).config
    return check_safetensors(Path(path))


def check_blocks(path: str | Path | None, blocks: str) -> None:
    """A variant that keeps a file's own `blocks` needs a GGUF file whose linears are all
    of that type; anything else fails here, naming the file and tensors, before any work."""
    file = gguf_file(path) if path is not None else None
    if file is None:
        what = f"model.path={path} is not a GGUF file" if path else "the weights are seeded"
        raise CheckpointError(
            f"a variant with blocks={blocks} keeps a GGUF checkpoint's own {blocks} blocks, but "
            f"{what}; pass model.path=FILE.gguf, or pick a variant that quantizes"
        )
    if blocks == AS_STORED:
        stored_types(open_gguf(file))  # raises: a type the gguf variant cannot run
    else:
        check_gguf_blocks(open_gguf(file), blocks)


def checkpoint_config(path: str | Path) -> LlamaConfig:
    """A checkpoint's model config: its config.json, or a GGUF file's metadata."""
    if (file := gguf_file(path)) is not None:
        return check_checkpoint(file)
    return safetensors_config(Path(path))


def gguf_file(path: str | Path) -> Path | None:
    """The GGUF file `path` names (a `.gguf` file, or a directory holding one), else None."""
    return find_gguf(path)


def _synthetic_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """One tensor from its own generator, generated as float32 and scaled in place."""
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(name.encode())]))
    out = rng.standard_normal(shape, dtype=np.float32)
    if len(shape) == 1:  # RMSNorm weights
        out *= np.float32(_NORM_STD)
        out += np.float32(1.0)
    else:  # [out, in] linears and the [vocab, hidden] embedding: unit gain
        out *= np.float32(1.0 / np.sqrt(shape[-1]))
    return out


def fingerprint(path: str | Path, cache_dir: Path | None = None) -> str:
    """sha256 over a checkpoint's config.json and tensor files (or its one GGUF file): the
    identity of its weights.

    Hashing a 5 GB checkpoint takes seconds, so each file's digest is remembered in
    `cache_dir/fingerprints.json` under its path, size and modification time: a file
    replaced at the same path (new size or mtime) is hashed again, an unchanged one
    costs nothing the second time.
    """
    root = Path(path).resolve()
    if (file := gguf_file(root)) is not None:
        root, names = file.parent, [file.name]
    else:
        names = checkpoint_files(root)
    memo_path = Path(cache_dir) / "fingerprints.json" if cache_dir else None
    memo = _read_memo(memo_path)
    digest = hashlib.sha256()
    for name in names:
        file = root / name
        stat = file.stat()
        entry = memo.get(str(file))
        if not entry or (entry["size"], entry["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
            entry = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": _file_sha256(file),
            }
            memo[str(file)] = entry
        label = "model.gguf" if name.endswith(".gguf") else name  # a renamed copy is the same
        digest.update(f"{label}\0{entry['sha256']}\n".encode())
    if memo_path is not None:
        with contextlib.suppress(OSError):
            atomic_write(memo_path, json.dumps(memo, indent=1, sort_keys=True).encode())
    return digest.hexdigest()


def _read_memo(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_repo(repo: str) -> Path:
    """The snapshot folder of a Hugging Face repo in the local cache (HF_HOME), never
    downloading: `models--<org>--<name>/snapshots/<revision>/` as huggingface_hub keeps it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise CheckpointError(
            f"model.repo={repo}: not in the Hugging Face cache {constants.HF_HUB_CACHE} "
            f"({type(e).__name__}); download it where there is a network "
            f"(`huggingface-cli download {repo}`), or set HF_HOME to the cache that holds it, "
            "or pass the checkpoint folder as model.path=DIR"
        ) from None


def file_blocks(path: str | Path | None) -> dict[str, str]:
    """The matrices a GGUF file holds block-quantized, and their types: what the `gguf`
    variant keeps as stored (`Variant.stored_as`). Refuses a type it cannot run, and a
    checkpoint that is not a GGUF file, naming them."""
    file = gguf_file(path) if path is not None else None
    if file is None:
        check_blocks(path, AS_STORED)  # raises: not a GGUF file
    return stored_types(open_gguf(file))
