"""The encoder families rerankers are built on, each proven against sentence-transformers' CrossEncoder
(the reference every one of them documents): a tiny random model of the exact architecture, the same pairs,
`bge-rerank score` on torch (1e-5) and ONNX fp32 (1e-4), the same order. And what is not a reranker is
refused before anything is scored: an unknown causal LM, a classifier with two labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SAMPLES, run_cli
from tools.random_model import ENCODERS, build_encoder

PAIRS = [json.loads(line) for line in (SAMPLES / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
TOLERANCE = {"torch": 1e-5, "onnx": 1e-4}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: build_encoder(root / family, family) for family in ENCODERS}


def _reference(model: Path) -> list[float]:
    """CrossEncoder.predict's raw logits (no activation), as the model's own card computes scores."""
    import torch
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(model), device="cpu")
    pairs = [(p["query"], p["passage"]) for p in PAIRS]
    return [float(v) for v in ce.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_numpy=True)]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("family", ENCODERS)
def test_each_encoder_family_scores_as_sentence_transformers_does(
    family: str, backend: str, models: dict[str, Path], tmp_path: Path
):
    if backend == "onnx":
        pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    model = models[family]
    reference = _reference(model)
    assert max(reference) - min(reference) > 0.5  # scores spread: an order to compare
    result = run_cli(["score", str(SAMPLES / "pairs.jsonl"), "-m", str(model), "-f", "jsonl", "--quiet",
                      "--backend", backend], env={"BGE_RERANK_CACHE": str(tmp_path / "own")})  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    ours = [json.loads(line)["logit"] for line in result.stdout.splitlines()]
    assert ours == pytest.approx(reference, abs=TOLERANCE[backend])
    if backend == "torch":
        from bge_rerank_cli import Reranker

        assert Reranker(str(model), device="cpu").kind["template"] == "cross-encoder"
    order = sorted(range(len(ours)), key=lambda i: -ours[i])
    assert order == sorted(range(len(reference)), key=lambda i: -reference[i])


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        (
            "Llama",
            b"causal language model (LlamaForCausalLM) whose reranking prompt bge-rerank does not know",
        ),
        ("Bert", b"has 2 output labels; a reranker has exactly one"),
    ],
    ids=["causal-lm-without-a-known-prompt", "classifier-with-two-labels"],
)
def test_what_is_not_a_reranker_is_refused_before_scoring(kind: str, said: bytes, tmp_path: Path):
    import torch
    import transformers as tf

    from tools.random_model import wordpiece_tokenizer

    tokenizer = wordpiece_tokenizer(type_ids=kind == "Bert")
    head = "ForCausalLM" if kind == "Llama" else "ForSequenceClassification"
    config = getattr(tf, f"{kind}Config")(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=2, num_labels=2,
                                          architectures=[kind + head])  # fmt: skip
    torch.manual_seed(0)
    getattr(tf, kind + head)(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    result = run_cli(["score", "-m", str(tmp_path / "model"), "-q", "q", "-p", "p", "-f", "jsonl"])
    assert result.returncode == 4 and result.stdout == b"", result.stderr.decode()
    assert said in result.stderr, result.stderr.decode()


def test_doctor_names_each_kind_and_how_it_is_scored(
    models: dict[str, Path], tiny_mxbai: Path, tiny_qwen3: Path
):
    expected = {
        models[
            "deberta-v2"
        ]: "DebertaV2ForSequenceClassification (cross-encoder: the classifier's single logit",
        tiny_qwen3: 'decoder reranker, qwen3-reranker prompt: logit = z("yes") - z("no") at the last token',
        tiny_mxbai: 'decoder reranker, mxbai-v2 prompt: logit = z("1") - z("0") at the last token',
    }
    for model, said in expected.items():
        result = run_cli(["doctor", "-m", str(model), "-f", "json"])
        checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
        assert said in checks["model-kind"]["finding"], checks["model-kind"]


@pytest.mark.parametrize(
    ("name", "config", "said", "forced"),
    [
        ("openbmb/MiniCPM-2B-sft-bf16",
         {"architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "auto_map": {"x": "y"}},
         "looks like a bge-layerwise reranker by its type, but it is MiniCPMForCausalLM, not the "
         "LayerWiseMiniCPMForCausalLM", "bge-layerwise"),
        ("some/gemma2-fork", {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "auto_map": {"x": "y"}},
         "looks like a bge-gemma reranker by its type, but it is Gemma2ForCausalLM with code of its own", "bge-gemma"),
        ("someone/lightweight-llama-reranker", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
         "looks like a bge-lightweight reranker by its name, but it is LlamaForCausalLM", "bge-lightweight"),
        ("my/mxbai-rerank-fork", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
         "looks like a mxbai-v2 reranker by its name, but it is LlamaForCausalLM, not the Qwen2ForCausalLM",
         "mxbai-v2"),
    ],
)  # fmt: skip
def test_a_name_or_type_that_points_to_a_family_the_model_does_not_run_is_refused(name, config, said, forced):
    """A MiniCPM or Gemma2 that is not BGE's layerwise or lightweight reranker (their own heads and token
    compression), or a fork named after a family it does not run: matched by name or type alone, it would
    be scored with another model's prompt. Never: refused, saying why."""
    from types import SimpleNamespace

    from bge_rerank_cli.backends.prompts import model_template
    from bge_rerank_cli.errors import ModelError

    with pytest.raises(ModelError, match="bge-rerank does not score it") as refused:
        model_template("auto", name, SimpleNamespace(**config))
    assert said in refused.value.message
    assert model_template(forced, name, SimpleNamespace(**config)) == forced
