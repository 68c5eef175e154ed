"""The ONNX Runtime backend: export once per model (torch's TorchScript exporter, dynamo as a fallback),
then score without torch.

Exports live in a cache of our own, keyed by model, revision and options, never inside the Hugging
Face snapshot folders: ``$BGE_RERANK_CACHE`` or ``~/.cache/bge-rerank/onnx/<key>/`` holds
``model.onnx`` with one external-data file, ``tokenizer.json`` and ``meta.json``. With ``quantize=
"int8"`` the weights are quantised by onnxruntime's ``quantize_dynamic``. A cache hit imports only
onnxruntime, numpy and tokenizers.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import shutil
import sys
import types
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from ..config import LoaderConfig, cpu_threads
from ..errors import ModelError, UsageError, option
from .base import Encoded
from .hf import decoder_facts, load_cross_encoder, template_of, tokenizer_facts
from .tokenized import TokenizedScorer

log = logging.getLogger("bge_rerank_cli")
INSTALL_HINT = "pip install 'bge-rerank-cli[onnx]'"
FORMAT_VERSION = 2


def cache_root() -> Path:
    from ..hub import own_cache

    return own_cache() / "onnx"


def export_dir(config: LoaderConfig) -> Path:
    model = (
        str(Path(config.model).expanduser().resolve())
        if Path(config.model).expanduser().is_dir()
        else config.model
    )
    fields = {"v": FORMAT_VERSION, "model": model, "revision": config.revision, "quantize": config.quantize}
    if config.template != "auto":  # a forced template can change a decoder's answer rows
        fields["template"] = config.template
    key = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    name = model.rstrip("/").replace("/", "--")[-60:]  # the resolved path: one folder per model
    return cache_root() / f"{name}-{config.quantize}-{hashlib.sha256(key).hexdigest()[:16]}"


class OnnxScorer(TokenizedScorer):
    """Tokenises with ``tokenizers`` and runs the exported graph with onnxruntime."""

    backend = "onnx"

    def __init__(self, config: LoaderConfig, folder: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError(f"{option('backend', 'onnx')} needs onnxruntime: {INSTALL_HINT}") from None
        self.export_folder = folder  # what it runs: the model's identity where its own files are absent
        meta = orjson.loads((folder / "meta.json").read_bytes())
        self.left_padding = meta.get("template", "cross-encoder") != "cross-encoder"
        if self.left_padding:  # a decoder reranker, exported with its LM head folded (see .decoder)
            self._setup_prompt(
                config,
                meta["template"],
                (folder / "tokenizer.json").read_text(encoding="utf-8"),
                model_limit=int(meta["model_limit"]),
                pad_id=int(meta["pad_id"]),
                bos_id=meta.get("bos_id"),
                random_weights=bool(meta.get("random_weights", False)),
            )
        else:
            self._setup(
                config,
                (folder / "tokenizer.json").read_text(encoding="utf-8"),
                model_limit=int(meta["model_limit"]),
                pad_id=int(meta["pad_id"]),
                use_type_ids=bool(meta["use_type_ids"]),
                random_weights=bool(meta.get("random_weights", False)),
            )
        self.device = "cpu"
        self.dtype = "int8" if config.quantize == "int8" else "fp32"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = cpu_threads()
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}

    def logits(self, batch: Sequence[Encoded]) -> list[float]:
        import numpy as np

        width = max(len(e.ids) for e in batch)
        ids = np.full((len(batch), width), self.pairs.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, enc in enumerate(batch):
            cols = slice(width - len(enc.ids), width) if self.left_padding else slice(0, len(enc.ids))
            ids[row, cols] = enc.ids
            mask[row, cols] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            types = np.zeros_like(ids)
            for row, enc in enumerate(batch):
                if enc.type_ids is not None:
                    types[row, : len(enc.type_ids)] = enc.type_ids
            feeds["token_type_ids"] = types
        (out,) = self._session.run(["logits"], feeds)
        values = out[:, 0].astype("float64")
        if not np.isfinite(values).all():
            raise ModelError(
                "the ONNX model produced non-finite scores.", hint=f"Rerun with {option('backend', 'torch')}."
            )
        return [float(v) for v in values]


def load(config: LoaderConfig) -> OnnxScorer:
    """The cached export if there is one (no torch), else export it first (needs torch once)."""
    folder = export_dir(config)
    if not (folder / "meta.json").is_file():
        export(config, folder)
    elif _stale(config, folder):
        log.warning("%s changed since it was exported to ONNX; exporting it again.", config.model)
        export(config, folder)
    return OnnxScorer(config, folder)


def _stale(config: LoaderConfig, folder: Path) -> bool:
    """Whether the model's files (when they are on disk) are not the ones the export was made from: the
    export is keyed by the model's path or id, and a folder saved over again keeps its path. Without
    them (an image that carries the export alone) the export is what runs."""
    from ..hub import files_fingerprint

    now = files_fingerprint(config.model, config.revision, config.cache_dir)
    if now is None:
        return False
    try:
        source = orjson.loads((folder / "meta.json").read_bytes()).get("source")
    except (OSError, ValueError, AttributeError):
        return True
    return bool(source != now)


def export(config: LoaderConfig, folder: Path) -> None:
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UsageError(f"{option('backend', 'onnx')} needs onnx and onnxruntime: {INSTALL_HINT}") from None
    from ..hub import files_fingerprint
    from ..memory import precheck_export

    precheck_export(config.model, config.revision, config.cache_dir)  # refuse now, not OOM-killed later
    import torch

    log.warning("exporting %s to ONNX once (cached in %s); this can take a minute.", config.model, folder)
    ce = load_cross_encoder(config, "cpu", "fp32")
    template = template_of(config, ce)
    facts = (
        tokenizer_facts(ce) if template == "cross-encoder" else {**decoder_facts(ce), "use_type_ids": False}
    )
    transformer = ce[0]
    model = transformer.model
    with contextlib.suppress(Exception):  # plain MatMul/Softmax attention: what onnxruntime fuses
        model.set_attn_implementation("eager")
    if template != "cross-encoder":
        model = _folded_module(torch, model, template, facts["tokenizer_json"])
    use_types = bool(facts["use_type_ids"])
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if use_types else [])

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    class TypedLogits(Logits):
        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:  # type: ignore[override]
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits

    ids = torch.full((2, 16), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    sample = (ids, mask, torch.zeros_like(ids)) if use_types else (ids, mask)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():  # left by an export that was killed
        shutil.rmtree(tmp)
    raw = tmp / "raw" / "model.onnx"  # the exporter may write one file per tensor beside it
    raw.parent.mkdir(parents=True)
    with contextlib.redirect_stdout(sys.stderr):  # the exporter prints progress; stdout is for data
        _export(torch, (TypedLogits if use_types else Logits)(model.eval()), sample, raw, names, dynamic)
    del ce, transformer, model  # the torch weights go before the ONNX ones are loaded back: a lower peak
    _release_memory()
    _finish_export(onnx, config, tmp, raw)
    (tmp / "tokenizer.json").write_text(facts["tokenizer_json"], encoding="utf-8")
    meta = {
        "model": config.model,
        "revision": config.revision,
        "quantize": config.quantize,
        "pad_id": facts["pad_id"],
        "use_type_ids": facts["use_type_ids"],
        "model_limit": facts["model_limit"],
        "random_weights": facts["random_weights"],
        "version": FORMAT_VERSION,
        "template": template,
        "bos_id": facts.get("bos_id"),
        "source": files_fingerprint(config.model, config.revision, config.cache_dir),  # see _stale
    }
    (tmp / "meta.json").write_bytes(orjson.dumps(meta))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def _folded_module(torch: Any, causal_lm: Any, template: str, tokenizer_json: str) -> Any:
    """A decoder reranker as a one-logit classifier graph: left-padded ``(input_ids, attention_mask)``
    in, the log-odds of :class:`~.decoder.FoldedModel` out (as ``logits`` of shape (batch, 1))."""
    from .decoder import FoldedModel
    from .prompts import TEMPLATES, answer_ids

    folded = FoldedModel(causal_lm, *answer_ids(TEMPLATES[template], tokenizer_json))

    class Folded(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = folded.body

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            out = self.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                            use_cache=False)  # fmt: skip
            # shaped like a classifier's output, which the export wrapper reads ``.logits`` of
            return types.SimpleNamespace(logits=folded.logits(out.last_hidden_state[:, -1]).unsqueeze(1))

    return Folded().eval()


def _export(
    torch: Any, module: Any, sample: Any, raw: Path, names: list[str], dynamic: dict[str, Any]
) -> None:
    """TorchScript exporter first: its graph is the one onnxruntime fuses best (GELU, LayerNorm,
    attention), measured ~10-30% faster than the dynamo exporter's on CPU; dynamo if it is gone."""
    options = {
        "input_names": names,
        "output_names": ["logits"],
        "dynamic_axes": {**dynamic, "logits": {0: "batch"}},
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, sample, str(raw), opset_version=17, dynamo=False, **options)
    except Exception as exc:
        log.info("TorchScript export failed (%s); using the dynamo exporter.", exc)
        shutil.rmtree(raw.parent)
        raw.parent.mkdir()
        torch.onnx.export(module, sample, str(raw), opset_version=18, dynamo=True, **options)


def _finish_export(onnx: Any, config: LoaderConfig, tmp: Path, raw: Path) -> None:
    """One ``model.onnx`` plus one external-data file (int8-quantised when asked).

    For int8, the embedding tables (half of bge-reranker-v2-m3's weights) are taken out of the graph
    before onnxruntime's ``quantize_dynamic`` runs and quantised here, a slice at a time, with its own
    functions (the same uint8 values, scale and zero point it gives them): ``quantize_dynamic`` keeps
    three copies of every weight it is given and four transient ones of each table it quantises, which
    took a full-size export to 4x its weights' size in memory; without the tables it stays near 2x."""
    proto = onnx.load(str(raw))
    tables = _detach_tables(proto) if config.quantize == "int8" else []
    _save(onnx, proto, tmp / "model.onnx")
    del proto
    _release_memory()
    shutil.rmtree(raw.parent)
    if config.quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        gathers = [name for table in tables for name in table.gathers]
        quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "int8.onnx"), weight_type=QuantType.QInt8,
                         use_external_data_format=True, nodes_to_exclude=gathers)  # fmt: skip
        _release_memory()
        for old in tmp.glob("model.onnx*"):
            old.unlink()
        proto = onnx.load(str(tmp / "int8.onnx"))
        _attach_tables(proto, tables)
        _save(onnx, proto, tmp / "model.onnx")
        for leftover in tmp.glob("int8.onnx*"):
            leftover.unlink()


class _Table:
    """An embedding table taken out of the graph and quantised as onnxruntime quantises a Gather's data:
    uint8, asymmetric, one scale and zero point per tensor."""

    def __init__(self, name: str, dims: list[int], gathers: list[str], quantized: Any, scale: Any, zero: Any):
        self.name, self.dims, self.gathers = name, dims, gathers
        self.quantized, self.scale, self.zero = quantized, scale, zero


def quantize_table(values: Any, rows_per_slice: int = 8192) -> tuple[Any, Any, Any]:
    """``values`` (a float32 array) as uint8 with its scale and zero point, computed with onnxruntime's
    own ``quantize_data`` and ``quantize_nparray``, but a slice of rows at a time: identical values,
    without the whole-table float temporaries."""
    import numpy as np
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data, quantize_nparray

    flat = values.reshape(values.shape[0], -1) if values.ndim > 1 else values.reshape(-1, 1)
    bounds = np.array([flat.min(), flat.max()] if flat.size else [0.0, 0.0], dtype=np.float32)
    params = quantize_data(bounds, TensorProto.UINT8, False)  # (…, zero point, scale, data) in every version
    zero, scale = params[-3], params[-2]
    out = np.empty(flat.shape, dtype=np.uint8)
    for start in range(0, flat.shape[0], rows_per_slice):
        out[start : start + rows_per_slice] = quantize_nparray(
            TensorProto.UINT8, flat[start : start + rows_per_slice], scale, zero
        )
    return out.reshape(values.shape), scale, zero


def _detach_tables(proto: Any) -> list[_Table]:
    """Take every float initializer that a Gather reads from (the embedding tables) out of ``proto``,
    quantised; each stays a graph input of the same name and shape until :func:`_attach_tables`."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = {init.name: init for init in proto.graph.initializer}
    readers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        source = node.input[0] if node.op_type == "Gather" and node.input else ""
        init = initializers.get(source)
        if init is not None and init.data_type == TensorProto.FLOAT and len(init.dims) >= 1:
            readers.setdefault(source, []).append(node.name)
    tables = []
    for name, gathers in readers.items():
        init = initializers[name]
        quantized, scale, zero = quantize_table(numpy_helper.to_array(init))
        dims = list(init.dims)
        tables.append(_Table(name, dims, gathers, quantized, scale, zero))
        proto.graph.initializer.remove(init)
        proto.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    return tables


def _attach_tables(proto: Any, tables: Sequence[_Table]) -> None:
    """Put the quantised tables back: each one's Gathers read the uint8 table, and a DequantizeLinear
    after each Gather gives its consumers float32, as onnxruntime's own quantised Gather does."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    by_gather = {gather: table for table in tables for gather in table.gathers}
    names = {table.name for table in tables}
    kept = [i for i in proto.graph.input if i.name not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    for table in tables:
        proto.graph.initializer.extend([
            numpy_helper.from_array(table.quantized, table.name + "_quantized"),
            helper.make_tensor(table.name + "_scale", TensorProto.FLOAT, [], [float(table.scale)]),
            helper.make_tensor(table.name + "_zero_point", TensorProto.UINT8, [], [int(table.zero)]),
        ])  # fmt: skip
    nodes = []
    for original in proto.graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)  # a copy: the graph's own list is cleared below
        nodes.append(node)
        reader = by_gather.get(node.name)
        if reader is None or node.op_type != "Gather":
            continue
        output = node.output[0]
        node.input[0] = reader.name + "_quantized"
        node.output[0] = output + "_quantized"
        nodes.append(helper.make_node(
            "DequantizeLinear", [node.output[0], reader.name + "_scale", reader.name + "_zero_point"], [output],
            name=output + "_DequantizeLinear",
        ))  # fmt: skip
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def _release_memory() -> None:
    """Collect garbage and hand freed heap back to the system (glibc), so the next step's peak is not
    stacked on memory the last one no longer uses."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _save(onnx: Any, proto: Any, path: Path) -> None:
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)  # fmt: skip
