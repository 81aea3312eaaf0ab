"""Real inputs: a checkpoint found by its Hugging Face repo id in a local cache, and a
text prompt tokenized with its own tokenizer.json; no network anywhere."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from sweep.plan.config import ConfigError, load_config
from sweep.run import run_sweep
from tests.helpers import SMOKE_FP32, save_tiny_llama, sweep

pytestmark = pytest.mark.slow  # a real Ray cluster and iree-compile

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "and", "ran", "far", "home"]
REPO = "sweep-tests/tiny-llama"


def save_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over the tiny model's first ids, saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), 256)})  # every id decodes
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    """A Hugging Face cache folder as huggingface_hub lays it out, holding one tiny Llama."""
    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    save_tiny_llama(snapshot)
    save_tokenizer(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(snapshot.name)
    return home


@pytest.fixture
def cache_at(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_home


def test_a_repo_id_runs_from_the_local_cache_with_no_network(
    ray_cluster, cache_at, tmp_path, shared_cache
):
    outcome, text = sweep(
        tmp_path, shared_cache, *SMOKE_FP32, f"model.repo={REPO}", "model.name=tiny-hf"
    )
    assert outcome.exit_code == 0, text
    assert [r["status"] for r in outcome.rows] == ["ok", "ok"]
    assert all(
        r["model"].startswith("tiny-hf@") and r["tokens"] == r["reference_tokens"]
        for r in outcome.rows
    )


def test_a_repo_that_is_not_cached_is_a_clear_error(cache_at, tmp_path):
    cfg, resolved = load_config(
        [*SMOKE_FP32, "model.repo=nobody/nothing", f"results_dir={tmp_path}/r"]
    )
    with pytest.raises(
        ConfigError, match=r"model.repo=nobody/nothing: not in the Hugging Face cache"
    ):
        run_sweep(cfg, resolved, out=io.StringIO())
    assert not (tmp_path / "r").exists()


def test_a_text_prompt_gives_text_back(ray_cluster, cache_at, tmp_path, shared_cache):
    prompt = "the cat sat on the mat"
    outcome, text = sweep(
        tmp_path, shared_cache, *SMOKE_FP32, f"model.repo={REPO}", f"bench.prompt='{prompt}'"
    )
    assert outcome.exit_code == 0, text
    assert "prompt: 6 tokens" in text
    (row,) = outcome.rows
    assert row["prompt_text"] == prompt and row["prompt_length"] == 6
    assert row["prompt_ids"] == [1, 3, 5, 6, 1, 7]
    words = row["output_text"].split()
    assert len(words) == len(row["tokens"]) and words[0] in {*WORDS, *(f"w{i}" for i in range(256))}
    assert f"{prompt!r} -> {row['output_text']!r}" in text, "the summary shows the text"
    from sweep.readers import report

    out = tmp_path / "report.md"
    assert report.main(["--results", str(tmp_path / "results"), "--out", str(out)]) == 0
    assert row["output_text"] in out.read_text(), "and so does the report"


def test_a_text_prompt_needs_a_tokenizer(tmp_path):
    cfg, resolved = load_config([*SMOKE_FP32, "bench.prompt=hello", f"results_dir={tmp_path}/r"])
    with pytest.raises(ConfigError, match="needs a checkpoint with a tokenizer"):
        run_sweep(cfg, resolved, out=io.StringIO())
    model = tmp_path / "model"
    save_tiny_llama(model)
    cfg, resolved = load_config(
        [*SMOKE_FP32, "bench.prompt=hello", f"model.path={model}", f"results_dir={tmp_path}/r"]
    )
    with pytest.raises(ConfigError, match="tokenizer.json: not found"):
        run_sweep(cfg, resolved, out=io.StringIO())
