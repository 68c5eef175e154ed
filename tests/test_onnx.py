"""The ONNX backend: exported once into our own cache, equal to torch, and torch-free on a cache hit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bge_rerank_cli.backends import load_scorer
from bge_rerank_cli.backends.onnx_scorer import export_dir
from bge_rerank_cli.cli import app
from bge_rerank_cli.config import LoaderConfig
from bge_rerank_cli.engine import score_pairs
from bge_rerank_cli.records import Pair
from tests.conftest import REPO, SAMPLES

pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
pytest.importorskip("onnxscript", reason="the [onnx] extra is not installed")
runner = CliRunner()
PAIRS = [
    Pair("what is deep learning", "deep learning trains neural networks"),
    Pair("json", "read a json file"),
]
PAIRS += [Pair("如何申请软件著作权?", "软件著作权登记需要提交申请表"), Pair("query " * 30, "passage " * 400)]


@pytest.fixture(scope="module", autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("bge-cache")
    old = os.environ.get("BGE_RERANK_CACHE")
    os.environ["BGE_RERANK_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("BGE_RERANK_CACHE", None)
    else:
        os.environ["BGE_RERANK_CACHE"] = old


def test_onnx_export_agrees_with_torch(tiny_model: Path, own_cache: Path):
    torch_scores = score_pairs(load_scorer(LoaderConfig(model=str(tiny_model), device="cpu")), PAIRS)
    config = LoaderConfig(model=str(tiny_model), backend="onnx")
    onnx_scores = score_pairs(load_scorer(config), PAIRS)
    assert [s.logit for s in onnx_scores] == pytest.approx([s.logit for s in torch_scores], abs=1e-4)
    assert [s.dropped_tokens for s in onnx_scores] == [s.dropped_tokens for s in torch_scores]
    folder = export_dir(config)
    assert folder.parent == own_cache / "onnx"  # our own cache, not the Hugging Face snapshot folder
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["meta.json", "model.onnx", "model.onnx.data", "tokenizer.json"]


def test_int8_is_an_explicit_opt_in_with_finite_scores(tiny_xlmr: Path):
    scorer = load_scorer(LoaderConfig(model=str(tiny_xlmr), backend="onnx", quantize="int8"))
    scores = score_pairs(scorer, PAIRS)
    assert all(abs(s.logit) < 1e6 for s in scores)
    assert scorer.describe()["dtype"] == "int8"
    args = ["score", "-m", str(tiny_xlmr), "--quantize", "int8", "-q", "a", "-p", "b"]
    result = runner.invoke(app, [*args, "--backend", "torch"])
    assert result.exit_code == 2 and "--quantize int8 needs --backend onnx" in result.stderr
    assert runner.invoke(app, args).exit_code == 0  # --backend auto (the default) runs int8 on ONNX


def test_a_cached_export_scores_in_a_fresh_process_without_torch(tiny_xlmr: Path, own_cache: Path):
    assert (
        runner.invoke(
            app, ["score", "-m", str(tiny_xlmr), "--backend", "onnx", "-q", "a", "-p", "b"]
        ).exit_code
        == 0
    )
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['bge-rerank', 'score', '-m', {str(tiny_xlmr)!r}, '--backend', 'onnx', "
        f"'{SAMPLES / 'pairs.jsonl'}', '-f', 'jsonl']\n"
        "try:\n    runpy.run_module('bge_rerank_cli', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "print('TORCH=' + str('torch' in sys.modules), file=sys.stderr)\n"
    )
    env = {**os.environ, "BGE_RERANK_CACHE": str(own_cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, env=env, timeout=120)
    assert b"TORCH=False" in result.stderr, result.stderr.decode()[-800:]
    assert len(result.stdout.splitlines()) == 10


def test_without_onnxruntime_the_message_names_the_extra(tiny_xlmr: Path, tmp_path: Path):
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        f"sys.argv = ['bge-rerank', 'score', '-m', {str(tiny_xlmr)!r}, '--backend', 'onnx', '-q', 'a', '-p', 'b']\n"
        "from bge_rerank_cli.cli import main; main()"
    )
    env = {**os.environ, "BGE_RERANK_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 2
    assert b"pip install 'bge-rerank-cli[onnx]'" in result.stderr


def test_one_export_folder_per_model_however_its_path_is_written(
    tiny_xlmr: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tiny_xlmr.parent)
    relative = export_dir(LoaderConfig(model=tiny_xlmr.name, backend="onnx"))
    assert relative == export_dir(LoaderConfig(model=str(tiny_xlmr) + "/", backend="onnx"))
    assert relative != export_dir(LoaderConfig(model=str(tiny_xlmr), backend="onnx", quantize="int8"))


def test_a_model_saved_again_at_its_path_is_exported_again(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The export is found by the model's path; a folder saved over with other weights is not scored by
    the old export: it is exported again (said once), and the export then agrees with torch on the new
    weights. An export whose model files are gone (a slim image) is used as it is."""
    import shutil

    from tools.random_model import build_xlmr

    model = tmp_path / "model"
    build_xlmr(model, seed=3)
    config = LoaderConfig(model=str(model), backend="onnx")
    first = [s.logit for s in score_pairs(load_scorer(config), PAIRS)]
    shutil.rmtree(model)
    build_xlmr(model, seed=4)  # fine-tuned and saved to the same folder
    load_scorer.cache_clear()  # a new process
    with caplog.at_level("WARNING", logger="bge_rerank_cli"):
        again = [s.logit for s in score_pairs(load_scorer(config), PAIRS)]
    assert sum("changed since it was exported" in r.getMessage() for r in caplog.records) == 1
    torch_now = score_pairs(load_scorer(LoaderConfig(model=str(model), device="cpu")), PAIRS)
    assert again == pytest.approx([s.logit for s in torch_now], abs=1e-4) and again != pytest.approx(first)

    model.rename(tmp_path / "gone")  # only the export is left: it runs, no export is tried
    load_scorer.cache_clear()
    caplog.clear()
    alone = [s.logit for s in score_pairs(load_scorer(config), PAIRS)]
    assert alone == again and not any("export" in r.getMessage() for r in caplog.records)
