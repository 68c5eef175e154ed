"""FlagEmbedding 1.4.2's BGE layerwise and lightweight rerankers, run unmodified in a venv of their own
(transformers 4.46, which the lightweight model's code asks for): reads a JSON job on stdin, writes JSON
on stdout. No bge-rerank here; tests/test_bge_flag.py makes the venv and runs this file in it.

    {"job": "build", "family": "layerwise" | "lightweight", "path": DIR, "seed": 0}
        A tiny random model of the family's exact architecture, saved as the Hub repo ships it: the
        modeling and configuration files FlagEmbedding's package carries, copied into the folder as
        remote code (``auto_map``), with the one line that imports from FlagEmbedding itself replaced by
        the import the Hub's file has. Writes {"path": DIR}.

    {"job": "score", "family": ..., "model": DIR, "pairs": [[q, p], ...], "max_length": N,
     "cutoff_layers": [L] | null, "compress_ratio": R, "compress_layers": [L, ...], "prompt": null}
        ``LayerWiseFlagLLMReranker`` / ``LightWeightFlagLLMReranker`` ``compute_score`` (fp32, CPU, raw
        logits: ``normalize=False``). Writes {"scores": [...]}.

    {"job": "ids", ...the score job's fields...}
        The same call, recording the token ids of each row its scoring passes ran (their order: longest
        first, as it sorts them; its first pass, a batch-size probe, left out). Writes {"ids": [[...], ...]}.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What FlagEmbedding's copy imports from itself, and what the Hub repo's file imports instead.
FLAG_IMPORT = "from FlagEmbedding.utils.transformers_compat import is_torch_fx_available"
HUB_IMPORT = "from transformers.utils.import_utils import is_torch_fx_available"
LIGHTWEIGHT_WORDS = ["Predict", "whether", "passage", "contains", "answer", "query"]
LAYERWISE_WORDS = ["Given", "passage", "prediction", "either", "contains"]


def _models_dir() -> Path:
    import FlagEmbedding

    return Path(FlagEmbedding.__file__).parent / "inference" / "reranker" / "decoder_only" / "models"


def _tokenizer(specials: list[str], words: list[str], **tokens: str):
    sys.path.insert(0, str(REPO))
    from transformers import PreTrainedTokenizerFast

    from tools.random_model import build_bpe_tokenizer

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_bpe_tokenizer(specials, words), **tokens)
    tokenizer.model_max_length = 8192
    return tokenizer


def _remote_code(out: Path, files: list[str], auto_map: dict[str, str]) -> None:
    """Copy the family's code next to the weights, as the Hub repo holds it, and point config.json at it."""
    for name in files:
        text = (_models_dir() / name).read_text(encoding="utf-8")
        (out / name).write_text(text.replace(FLAG_IMPORT, HUB_IMPORT), encoding="utf-8")
    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = auto_map
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_layerwise(out: Path, seed: int) -> None:
    """BAAI/bge-reranker-v2-minicpm-layerwise's layout, scaled down: MiniCPM (scaled embeddings and
    residuals, muP-style head input), one single-output head per layer from ``start_layer`` on."""
    import torch
    from FlagEmbedding.inference.reranker.decoder_only.models.configuration_minicpm_reranker import (
        LayerWiseMiniCPMConfig,
    )
    from FlagEmbedding.inference.reranker.decoder_only.models.modeling_minicpm_reranker import (
        LayerWiseMiniCPMForCausalLM,
    )

    tokenizer = _tokenizer(["<unk>", "<s>", "</s>"], LAYERWISE_WORDS, bos_token="<s>", eos_token="</s>",
                           unk_token="<unk>", pad_token="<unk>")  # fmt: skip
    config = LayerWiseMiniCPMConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
        initializer_range=0.1, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, scale_emb=12, dim_model_base=16, scale_depth=1.4,
        tie_word_embeddings=False, start_layer=2, head_multi=True, head_type="simple",
        architectures=["LayerWiseMiniCPMForCausalLM"], bge_rerank_random_weights=True,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LayerWiseMiniCPMForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _remote_code(
        out,
        ["configuration_minicpm_reranker.py", "modeling_minicpm_reranker.py"],
        {
            "AutoConfig": "configuration_minicpm_reranker.LayerWiseMiniCPMConfig",
            "AutoModel": "modeling_minicpm_reranker.LayerWiseMiniCPMModel",
            "AutoModelForCausalLM": "modeling_minicpm_reranker.LayerWiseMiniCPMForCausalLM",
        },
    )


def build_lightweight(out: Path, seed: int) -> None:
    """BAAI/bge-reranker-v2.5-gemma2-lightweight's layout, scaled down: Gemma 2 (sliding-window and
    soft-capped attention), one single-output head per layer from ``start_layer`` on."""
    import torch
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_config import CostWiseGemmaConfig
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_model import CostWiseGemmaForCausalLM

    tokenizer = _tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"], LIGHTWEIGHT_WORDS, bos_token="<bos>",
                           eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")  # fmt: skip
    config = CostWiseGemmaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
        sliding_window=16, query_pre_attn_scalar=16, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0, initializer_range=0.1, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, start_layer=2,
        layer_sep=1, layer_wise=True, architectures=["CostWiseGemmaForCausalLM"],
        bge_rerank_random_weights=True,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = CostWiseGemmaForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _remote_code(
        out,
        ["gemma_config.py", "gemma_model.py"],
        {
            "AutoConfig": "gemma_config.CostWiseGemmaConfig",
            "AutoModel": "gemma_model.CostWiseGemmaModel",
            "AutoModelForCausalLM": "gemma_model.CostWiseGemmaForCausalLM",
        },
    )


def score(job: dict, passes: list | None = None) -> list[float]:
    """``compute_score`` as the job asks; ``passes`` (a list): each forward pass's rows' ids appended."""
    from FlagEmbedding import LayerWiseFlagLLMReranker, LightWeightFlagLLMReranker

    pairs = [tuple(pair) for pair in job["pairs"]]
    common = {"use_fp16": False, "use_bf16": False, "devices": ["cpu"], "trust_remote_code": True,
              "max_length": job.get("max_length", 512), "batch_size": job.get("batch_size", 128)}  # fmt: skip
    reranker = (LayerWiseFlagLLMReranker if job["family"] == "layerwise" else LightWeightFlagLLMReranker)(
        job["model"], **common
    )
    if passes is not None:
        forward = reranker.model.forward

        def recording(*args, **kwargs):
            rows = zip(kwargs["input_ids"], kwargs["attention_mask"], strict=True)
            passes.append([row[mask.bool()].tolist() for row, mask in rows])
            return forward(*args, **kwargs)

        reranker.model.forward = recording
    if job["family"] == "layerwise":
        scores = reranker.compute_score(pairs, cutoff_layers=job.get("cutoff_layers"), prompt=job.get("prompt"),
                                        normalize=False)  # fmt: skip
    else:
        scores = reranker.compute_score(
            pairs, cutoff_layers=job.get("cutoff_layers"), compress_ratio=job.get("compress_ratio", 1),
            compress_layers=job.get("compress_layers", [8]), prompt=job.get("prompt"), normalize=False,
        )  # fmt: skip
    if scores and isinstance(scores[0], list):  # several cutoff layers: one list per layer; we ask for one
        scores = scores[0]
    return [float(s) for s in scores]


def main() -> None:
    job = json.loads(sys.stdin.read())
    if job["job"] == "build":
        out = Path(job["path"])
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (build_layerwise if job["family"] == "layerwise" else build_lightweight)(out, job.get("seed", 0))
        json.dump({"path": str(out)}, sys.stdout)
    elif job["job"] == "ids":
        passes: list = []
        score(job, passes)
        json.dump({"ids": [ids for batch in passes[1:] for ids in batch]}, sys.stdout)
    else:
        json.dump({"scores": score(job)}, sys.stdout)


if __name__ == "__main__":
    main()
