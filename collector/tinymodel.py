"""A tiny llama-architecture mlx-lm model, built offline, for tests and the demo.

Random weights (saved with ``mx.save_safetensors``), a ``config.json`` that
mlx-lm's ``llama`` module reads, and a byte-level BPE tokenizer trained with the
``tokenizers`` package on a small built-in corpus, saved as ``tokenizer.json`` +
``tokenizer_config.json`` so that ``mlx_lm.load`` and ``transformers.AutoTokenizer``
load it with no network. The build is deterministic: the same version builds
the same files.

It is small enough that loading it and generating a few dozen tokens on a CPU
takes a fraction of a second, yet it runs the real code path: embeddings,
rotary attention with grouped KV heads, SwiGLU MLPs, KV cache, sampling and
streaming detokenization.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["MODEL_NAME", "BUILD_VERSION", "build_tiny_model", "tiny_model_path", "default_cache_dir"]

MODEL_NAME = "tiny-llama"
# Bump when anything below changes what is built, so stale caches are rebuilt.
BUILD_VERSION = 1
_MARKER = ".tiny-model-build"
_SEED = 20240607

VOCAB_SIZE = 512
BOS, EOS, UNK = "<s>", "</s>", "<unk>"

CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}

# Training text for the tokenizer: varied enough that BPE learns a few hundred
# merges of common English sub-words, so prompts encode to realistic lengths.
_CORPUS = """\
The quick brown fox jumps over the lazy dog while the operators watch the dashboards.
An inference engine loads a model, reads a prompt, and streams tokens back to the caller.
Time to first token measures how long the user waits before the first word appears.
Inter-token latency is the gap between two tokens; tokens per second is its inverse.
Telemetry events flow from the engine into Redis streams and on to the collector daemon.
The collector writes JSON lines to disk, exports OpenTelemetry records, and fires alerts.
When Redis goes away the emitter keeps buffering, counts every drop, and never blocks.
Errors carry a fingerprint so that the same failure is grouped instead of repeated.
Please summarise the following document in three sentences for a busy reader.
Translate this paragraph into French, keeping the technical terms in English.
Write a short poem about autumn leaves falling on a quiet mountain lake.
Explain the difference between a process and a thread to a new engineer.
What is the capital of France? Paris is the capital and the largest city of France.
Once upon a time there was a small model that wanted to generate beautiful stories.
The weather today is sunny with a gentle breeze and a chance of rain in the evening.
Count from one to ten: one, two, three, four, five, six, seven, eight, nine, ten.
Numbers such as 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 appear in many prompts.
def generate(model, tokenizer, prompt): return model.generate(prompt, max_tokens=32)
User: hello, how are you today? Assistant: I am fine, thank you for asking.
"""


def default_cache_dir() -> Path:
    """``$TELEMETRY_TINY_MODEL_DIR``, else ``$XDG_CACHE_HOME``/~/.cache ``/mlx-telemetry/tiny-llama``."""
    explicit = os.environ.get("TELEMETRY_TINY_MODEL_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlx-telemetry" / MODEL_NAME


def _is_built(path: Path) -> bool:
    try:
        return (path / _MARKER).read_text().strip() == str(BUILD_VERSION)
    except OSError:
        return False


def tiny_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached tiny model, built on first use."""
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if _is_built(path):
        return path
    return build_tiny_model(path)


def build_tiny_model(path: str | os.PathLike[str]) -> Path:
    """Build the model into ``path`` (replacing an outdated build) and return it.

    The files are written into a sibling temporary directory and renamed into
    place, so a reader never sees half a model and two concurrent builders
    (test workers, a demo started twice) leave one complete copy.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_tokenizer(staging)
        _write_weights(staging)
        (staging / "config.json").write_text(json.dumps(_model_config(staging), indent=2) + "\n")
        (staging / _MARKER).write_text(f"{BUILD_VERSION}\n")
        if target.exists() and not _is_built(target):
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            # Another builder won the race; its copy is identical.
            if not _is_built(target):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _model_config(directory: Path) -> dict[str, Any]:
    vocab = json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]
    return {**CONFIG, "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS]}


def _write_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # A ByteLevel decoder makes mlx-lm pick its streaming BPE detokenizer.
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "model_max_length": CONFIG["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "add_bos_token": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": UNK}, indent=2) + "\n"
    )


def _write_weights(directory: Path) -> None:
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    # The parameter names and shapes come from mlx-lm's own llama module, so the
    # checkpoint always matches what `mlx_lm.load` will build.
    shapes = {
        name: tuple(value.shape)
        for name, value in tree_flatten(llama.Model(llama.ModelArgs.from_dict(CONFIG)).parameters())
    }
    rng = np.random.default_rng(_SEED)
    weights = {}
    for name in sorted(shapes):
        if name.endswith("norm.weight"):
            values = np.ones(shapes[name], dtype=np.float32)
        else:
            values = rng.normal(0.0, 0.02, size=shapes[name]).astype(np.float32)
        weights[name] = mx.array(values)
    mx.save_safetensors(str(directory / "model.safetensors"), weights, metadata={"format": "mlx"})
