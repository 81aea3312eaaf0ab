"""Shared fixtures. One Ray cluster for the whole session: starting Ray costs seconds.

The cluster has two nodes (`ray.cluster_utils.Cluster`), each advertising one CPU
benchmark slot, so the multi-node behaviour (actors on both nodes, compiles shared
between them) is exercised by every sweep test, as it would be on two hosts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    from workers.devices import CPU_BENCH_RESOURCE

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {CPU_BENCH_RESOURCE: 1}},
    )
    cluster.add_node(num_cpus=1, resources={CPU_BENCH_RESOURCE: 1})
    cluster.wait_for_nodes()
    ray.init(
        address=cluster.address,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        log_to_driver=False,
    )
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """A compile and reference cache shared by the sweep tests (the tiny graphs compile once)."""
    return tmp_path_factory.mktemp("cache")


def save_tiny_llama(directory: Path, *, seed: int = 0, **overrides) -> Path:
    """A random tiny Llama saved by transformers itself (safetensors), with unit-gain
    weights so greedy decode gives varied tokens (std 0.02 repeats one token)."""
    import math

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        **{
            "vocab_size": 256,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": True,
            **overrides,
        }
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / math.sqrt(param.shape[-1]))
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def save_byte_tokenizer(directory: Path) -> Path:
    """A byte-level BPE `tokenizer.json` of exactly 256 tokens (the bytes, no merges),
    trained by the `tokenizers` library: the vocabulary of `save_tiny_llama`'s model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    lines = ["The quick brown fox jumps over the lazy dog.", "Pack my box with liquor jugs."]
    tokenizer.train_from_iterator(lines, trainer)
    assert tokenizer.get_vocab_size() == 256, tokenizer.get_vocab_size()
    tokenizer.save(str(Path(directory) / "tokenizer.json"))
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
