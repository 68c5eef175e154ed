"""Build random-weight cross-encoders on disk, offline, deterministically.

Used by the tests (a ~1 MB XLM-RoBERTa and a BERT cross-encoder), by the benchmarks (the exact
bge-reranker-v2-m3 architecture: throughput does not depend on weight values) and by ``scripts/main.sh``
when the real model cannot be downloaded. Scores of these models carry no meaning.

    python -m tools.random_model DIR [--size tiny|full] [--family xlmr|bert|qwen3|gemma]

``--family qwen3`` / ``gemma`` build decoder rerankers (Qwen3-Reranker's and bge-reranker-v2-gemma's
layouts; ``--size full`` with qwen3 is the exact Qwen3-Reranker-0.6B shape).
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path
from typing import Any

# Characters and word pieces every build contains, so the vocabulary is the same on every run.
_CJK = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学"
    "法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外"
    "天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很"
    "情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她"
    "手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思"
    "术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科"
    "张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千"
    "周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格"
    "养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙飞请软著申册商标苹果香蕉读取文件库网络模型数据"
)
_WORDS = (
    "the of and to in is for on that with as by it from this are be or an at which how what why when where who "
    "read write file json csv python pandas load loads dump open request requests get http api pickle data "
    "deep learning machine neural network model train training apple banana fruit copyright trademark software "
    "register registration apply application office patent law search query document passage rank rerank score "
    "vector keyword retrieval answer question first second best relevant irrelevant about can do does use used"
).split()


def build_vocab() -> list[tuple[str, float]]:
    """A deterministic Unigram vocabulary: specials, whole words, then single characters."""
    vocab: list[tuple[str, float]] = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = {piece for piece, _ in vocab}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))

    for word in _WORDS:
        add("▁" + word, -4.0 - len(word) * 0.01)
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation + _CJK
    for char in chars:
        add("▁" + char, -9.0)
        add(char, -10.0)
    add("▁", -6.0)
    return vocab


def build_xlmr(
    path: str | Path,
    *,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    ffn: int = 64,
    vocab_size: int | None = None,
    max_positions: int = 514,
    initializer_range: float = 0.5,
    seed: int = 0,
    num_labels: int = 1,
) -> Path:
    """A random XLM-RoBERTa sequence classifier (num_labels=1) with a local Unigram tokenizer."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizer

    out = Path(path)
    tokenizer = XLMRobertaTokenizer(vocab=build_vocab())
    tokenizer.model_max_length = max_positions - 2
    config = XLMRobertaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max_positions,
        num_labels=num_labels,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        architectures=["XLMRobertaForSequenceClassification"],
        bge_rerank_random_weights=True,  # bge-rerank labels this model a stand-in wherever it is used
    )
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_bge_m3_architecture(path: str | Path, *, seed: int = 0) -> Path:
    """The exact bge-reranker-v2-m3 shape (24 layers, 1024 hidden, 16 heads, 4096 FFN, 250002 vocab)."""
    return build_xlmr(
        path,
        layers=24,
        hidden=1024,
        heads=16,
        ffn=4096,
        vocab_size=250002,
        max_positions=8194,
        initializer_range=0.02,
        seed=seed,
    )


def wordpiece_tokenizer(*, type_ids: bool = True) -> Any:
    """A deterministic WordPiece tokenizer (BERT's kind): the shared words, characters and suffixes."""
    from transformers import BertTokenizer

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS]
    chars = string.ascii_lowercase + string.digits + string.punctuation + _CJK
    pieces += [c for c in chars if c not in pieces] + [
        f"##{c}" for c in string.ascii_lowercase + string.digits
    ]
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    tokenizer.model_max_length = 512
    if not type_ids:
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer


def build_bert(path: str | Path, *, seed: int = 0, initializer_range: float = 0.5) -> Path:
    """A random BERT sequence classifier (the ms-marco MiniLM rerankers' family), WordPiece tokenizer."""
    return build_encoder(path, "bert", seed=seed, initializer_range=initializer_range)


ENCODERS = ("bert", "electra", "deberta-v2", "modernbert")


def build_encoder(path: str | Path, family: str, *, seed: int = 0, initializer_range: float = 0.5) -> Path:
    """A random sequence classifier (one label) of an encoder family rerankers are built on, at a tiny
    size, with a local WordPiece tokenizer: ``bert`` (ms-marco-MiniLM-L6-v2), ``electra``
    (ms-marco-electra-base), ``deberta-v2`` in DeBERTa-v3's form, relative attention and no absolute
    positions (mxbai-rerank-base-v1), ``modernbert`` (gte-reranker-modernbert-base; no token types)."""
    import torch
    import transformers as tf

    out = Path(path)
    tokenizer = wordpiece_tokenizer(type_ids=family != "modernbert")
    size = {"vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 512, "num_labels": 1,
            "initializer_range": initializer_range, "pad_token_id": tokenizer.pad_token_id,
            "bge_rerank_random_weights": True}  # fmt: skip
    if family == "bert":
        config, model_class = tf.BertConfig(**size), tf.BertForSequenceClassification
    elif family == "electra":
        config, model_class = tf.ElectraConfig(embedding_size=32, **size), tf.ElectraForSequenceClassification
    elif family == "deberta-v2":
        config = tf.DebertaV2Config(relative_attention=True, position_buckets=64, max_relative_positions=-1,
                                    pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
                                    pooler_hidden_size=32, **size)  # fmt: skip
        model_class = tf.DebertaV2ForSequenceClassification
    elif family == "modernbert":
        config = tf.ModernBertConfig(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                     global_attn_every_n_layers=2, local_attention=16, classifier_pooling="mean",
                                     **size)  # fmt: skip
        model_class = tf.ModernBertForSequenceClassification
    else:
        raise ValueError(f"unknown encoder family {family!r}: one of {', '.join(ENCODERS)}")
    config.architectures = [model_class.__name__]
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# Qwen2/Qwen3's pre-tokenizer pattern (from their tokenizer.json), so word boundaries fall where the real
# tokenizer puts them.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_ANSWERS = ["yes", "no", "Yes", "No"]  # single tokens, as in the real vocabularies


def build_bpe_tokenizer(specials: list[str], extra: list[str] = ()) -> object:  # type: ignore[assignment]
    """A deterministic byte-level BPE (no training): the 256 byte symbols, then whole-word merges for
    the answer words, the test vocabulary (bare and space-prefixed) and ``extra``; ``specials`` first."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for piece in [*specials, *alphabet]:
        vocab.setdefault(piece, len(vocab))
    merges: list[tuple[str, str]] = []
    byte_form = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for word in dict.fromkeys([*_ANSWERS, *extra, *_WORDS]):
        for form in (word, " " + word):
            symbols = "".join(piece for piece, _ in byte_form.pre_tokenize_str(form))
            merged = symbols[0]
            for symbol in symbols[1:]:
                if merged + symbol not in vocab:
                    merges.append((merged, symbol))
                    vocab[merged + symbol] = len(vocab)
                merged += symbol
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))
    return tok


QWEN3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def build_qwen3_reranker(
    path: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 16,
    ffn: int = 128,
    vocab_size: int | None = None,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """A random Qwen3 causal LM with Qwen3-Reranker's tokenizer layout (chat special tokens, single-token
    "yes"/"no"), as Qwen/Qwen3-Reranker-* ship: ``Qwen3ForCausalLM``, tied embeddings."""
    words = ["Judge", "Document", "Query", "Instruct", "assistant", "user", "system"]
    return _qwen_lm(path, "Qwen3", QWEN3_SPECIALS, words, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                    ffn=ffn, vocab_size=vocab_size, initializer_range=initializer_range, seed=seed,
                    head_dim=head_dim, max_position_embeddings=40960)  # fmt: skip


def build_qwen3_reranker_architecture(path: str | Path, *, seed: int = 0) -> Path:
    """The exact Qwen3-Reranker-0.6B shape (its published config: 28 layers, hidden 1024, 16 query and 8
    key/value heads of 128, FFN 3072, vocabulary 151669, tied embeddings), random weights."""
    return build_qwen3_reranker(
        path, layers=28, hidden=1024, heads=16, kv_heads=8, head_dim=128, ffn=3072, vocab_size=151669,
        initializer_range=0.02, seed=seed,
    )  # fmt: skip


def build_mxbai_v2(
    path: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 128,
    vocab_size: int | None = None,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """A random Qwen2 causal LM with mxbai-rerank-v2's tokenizer layout (Qwen chat special tokens,
    single-token "0"/"1"), as mixedbread-ai/mxbai-rerank-base-v2 ships: ``Qwen2ForCausalLM``, tied
    embeddings. Its folder name decides nothing: name it with ``mxbai-rerank`` in it, or pass
    ``--template mxbai-v2``."""
    words = ["query", "document", "instruction", "Relevance", "search", "relevance", "expert", "Qwen", "system",
             "user", "assistant", "documents", "queries", "relevant"]  # fmt: skip
    out = _qwen_lm(path, "Qwen2", QWEN3_SPECIALS[:3], words, layers=layers, hidden=hidden, heads=heads,
                   kv_heads=kv_heads, ffn=ffn, vocab_size=vocab_size, initializer_range=initializer_range,
                   seed=seed, max_position_embeddings=32768)  # fmt: skip
    _as_shipped(out, "Qwen2Tokenizer", rope_theta=1000000.0)
    return out


def _qwen_lm(
    path: str | Path, family: str, specials: list[str], words: list[str], *, layers: int, hidden: int, heads: int,
    kv_heads: int, ffn: int, vocab_size: int | None, initializer_range: float, seed: int, **config: Any,
) -> Path:  # fmt: skip
    """A random ``{family}ForCausalLM`` (Qwen2 or Qwen3: tied embeddings, RoPE base 1e6) with a byte-level
    BPE of Qwen's layout: ``specials``, then merges for the answer words, the test words and ``words``."""
    import torch
    import transformers as tf
    from transformers import PreTrainedTokenizerFast

    out = Path(path)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_bpe_tokenizer(specials, words), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        padding_side="left",
    )  # fmt: skip
    tokenizer.model_max_length = 32768
    settings = getattr(tf, f"{family}Config")(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        architectures=[f"{family}ForCausalLM"],
        bge_rerank_random_weights=True,
        **config,
    )
    torch.manual_seed(seed)
    model = getattr(tf, f"{family}ForCausalLM")(settings).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _as_shipped(folder: Path, tokenizer_class: str, **config: object) -> None:
    """Write a model's files as the real one ships them, for a reference package that needs transformers
    4: the tokenizer class in ``tokenizer_config.json`` (transformers 5 saves its generic
    ``TokenizersBackend``, which 4 cannot load) and top-level ``config`` entries (5 saves ``rope_theta``
    inside ``rope_parameters`` only, and 4 reads its default there: another model)."""
    import json

    for name, entries in (
        ("tokenizer_config.json", {"tokenizer_class": tokenizer_class}),
        ("config.json", config),
    ):
        path = folder / name
        settings = json.loads(path.read_text(encoding="utf-8"))
        settings.update(entries)
        path.write_text(json.dumps(settings, indent=2, ensure_ascii=False), encoding="utf-8")


def build_bge_gemma(
    path: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    head_dim: int = 16,
    ffn: int = 128,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """A random Gemma causal LM laid out as BAAI/bge-reranker-v2-gemma (``GemmaForCausalLM``, <bos>,
    a single-token "Yes")."""
    import torch
    from transformers import GemmaConfig, GemmaForCausalLM, PreTrainedTokenizerFast

    out = Path(path)
    tok = build_bpe_tokenizer(GEMMA_SPECIALS, ["Given", "passage", "prediction", "either", "contains"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.model_max_length = 8192
    config = GemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        head_dim=head_dim,
        max_position_embeddings=8192,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        architectures=["GemmaForCausalLM"],
        bge_rerank_random_weights=True,
    )
    torch.manual_seed(seed)
    model = GemmaForCausalLM(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--family", choices=["xlmr", "bert", "qwen3", "gemma"], default="xlmr")
    args = parser.parse_args()
    if args.family == "qwen3":
        (build_qwen3_reranker_architecture if args.size == "full" else build_qwen3_reranker)(args.path)
    elif args.family == "gemma":
        build_bge_gemma(args.path)
    elif args.family == "bert":
        build_bert(args.path)
    elif args.size == "full":
        build_bge_m3_architecture(args.path)
    else:
        build_xlmr(args.path)
    print(args.path)


if __name__ == "__main__":
    main()
