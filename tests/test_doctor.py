"""doctor: each check is a pure function of an injected snapshot, tested for every condition."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from bge_rerank_cli.config import LoaderConfig
from bge_rerank_cli.cpuinfo import CpuInfo
from bge_rerank_cli.doctor import CheckResult, run_checks
from bge_rerank_cli.doctor import checks as C
from bge_rerank_cli.doctor.snapshot import (
    CacheInfo,
    GpuInfo,
    ModelCheck,
    ModelFiles,
    Snapshot,
    TorchInfo,
    model_files,
    resolve_cache,
)
from bge_rerank_cli.hub import Reachability
from tests.conftest import REPO, run_cli

GB = 1024**3
MODEL = "BAAI/bge-reranker-v2-m3"
CACHED = ModelFiles(
    MODEL,
    present=True,
    snapshot="/cache/models--BAAI--bge-reranker-v2-m3/snapshots/abc",
    files=("config.json", "model.safetensors", "tokenizer.json"),
    size_bytes=2 * GB,
    shape={"params": 567_755_777, "hidden": 1024, "layers": 24, "heads": 16},
)


def healthy(**changes) -> Snapshot:
    base = Snapshot(
        config=LoaderConfig(model=MODEL),
        python="3.11.7",
        platform="Linux 6.1 x86_64",
        packages={
            "torch": "2.13.0",
            "transformers": "5.24.0",
            "sentence-transformers": "6.2.0",
            "tokenizers": "0.23.3",
            "huggingface-hub": "2.4.0",
            "numpy": "2.4.6",
        },
        unmet=(),
        env={},
        cache=CacheInfo("/cache", "HF_HUB_CACHE", True, True, None, 100 * GB),
        model=CACHED,
        hub=Reachability(True, "https://huggingface.co answered HTTP 200"),
        torch=TorchInfo(version="2.13.0", threads=2, cpu_capability="AVX2"),
        cpu=CpuInfo("AMD EPYC", 2, 2, ("AVX2",)),
    )
    return replace(base, **changes)


def installed(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def by_name(snapshot: Snapshot) -> dict[str, CheckResult]:
    return {r.name: r for r in run_checks(snapshot)}


def test_a_healthy_machine_passes_everything():
    results = run_checks(healthy())
    assert [r.name for r in results if r.status != "ok"] == []
    assert len(results) == len(C.CHECKS)


def test_tensorflow_with_keras_3_and_no_tf_keras():
    packages = {**healthy().packages, "transformers": "4.44.2", "tensorflow": "2.16.1", "keras": "3.3.3"}
    result = C.check_tensorflow(healthy(packages=packages))
    assert result.status == "warn"
    assert "keras.src" in result.finding and "Keras 3" in result.finding
    assert "never imports TensorFlow" in result.finding
    assert (
        "pip install tf-keras" in result.fix
        and "USE_TF=0" in result.fix
        and "uninstall tensorflow" in result.fix
    )
    fixed = C.check_tensorflow(healthy(packages={**packages, "tf-keras": "2.16.0"}))
    assert fixed.status == "ok"
    old_keras = C.check_tensorflow(healthy(packages={**packages, "keras": "2.15.0"}))
    assert old_keras.status == "ok"


@pytest.mark.parametrize(
    ("transformers", "env", "status"),
    [
        ("4.44.2", {}, "warn"),  # transformers 4 imports TensorFlow when it finds it: the keras.src crash
        ("4.44.2", {"USE_TF": "0"}, "ok"),  # the fix the check offers, honoured
        ("4.44.2", {"USE_TF": "false"}, "ok"),
        ("4.44.2", {"USE_TF": "1"}, "warn"),
        ("5.0.0", {}, "ok"),  # transformers 5 contains no TensorFlow code
        ("5.24.0", {"USE_TF": "1"}, "ok"),
    ],
)
def test_tensorflow_check_follows_the_installed_transformers_and_use_tf(
    transformers: str, env: dict, status: str
):
    packages = {**healthy().packages, "transformers": transformers, "tensorflow": "2.16.1", "keras": "3.3.3"}
    result = C.check_tensorflow(healthy(packages=packages, env=env))
    assert result.status == status, result.finding
    if transformers.startswith("5"):
        assert "no TensorFlow code" in result.finding


def test_transformers_cache_is_a_warning_naming_its_replacement():
    result = C.check_cache_location(healthy(env={"TRANSFORMERS_CACHE": "/old/cache"}))
    assert result.status == "warn"
    assert "TRANSFORMERS_CACHE=/old/cache" in result.finding
    assert "HF_HUB_CACHE" in result.fix


def test_unwritable_cache():
    unwritable = CacheInfo("/ro", "HF_HOME/hub", True, False, "Permission denied", 100 * GB)
    missing = ModelFiles(MODEL, shape=CACHED.shape)
    assert C.check_cache_writable(healthy(cache=unwritable, model=missing)).status == "fail"
    assert C.check_cache_writable(healthy(cache=unwritable)).status == "warn"  # model already cached


def test_incomplete_download_is_found_on_disk(tmp_path: Path):
    repo = tmp_path / "models--BAAI--bge-reranker-v2-m3"
    snap = repo / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    (repo / "blobs").mkdir()
    (repo / "blobs" / "deadbeef.incomplete").write_bytes(b"partial")
    (snap / "config.json").write_text("{}")
    files = model_files(LoaderConfig(model=MODEL), str(tmp_path))
    assert files.incomplete == ("deadbeef.incomplete",)
    result = C.check_model_files(healthy(model=files))
    assert result.status == "fail"
    assert "interrupted download" in result.finding and "hf download BAAI/bge-reranker-v2-m3" in result.fix
    (snap / "model.safetensors").symlink_to(repo / "blobs" / "gone")
    broken = model_files(LoaderConfig(model=MODEL), str(tmp_path))
    assert broken.broken_links == ("model.safetensors",)


def test_model_missing_while_offline():
    snapshot = healthy(model=ModelFiles(MODEL, shape=CACHED.shape), env={"HF_HUB_OFFLINE": "1"}, hub=None)
    results = by_name(snapshot)
    assert results["model-files"].status == "fail"
    assert "offline mode is on" in results["model-files"].finding
    assert results["offline-mode"].status == "fail"
    assert "HF_HUB_OFFLINE" in results["offline-mode"].fix
    assert results["hub"].status == "ok"  # not probed


def test_model_missing_with_hub_reachable_is_only_a_warning():
    assert C.check_model_files(healthy(model=ModelFiles(MODEL))).status == "warn"


def test_hub_unreachable_is_a_warning_when_cached_and_a_failure_when_not():
    down = Reachability(False, "https://huggingface.co unreachable: timed out")
    assert C.check_hub(healthy(hub=down)).status == "warn"
    assert C.check_hub(healthy(hub=down, model=ModelFiles(MODEL))).status == "fail"


def test_no_cuda():
    cpu_only = TorchInfo(version="2.13.0+cpu", threads=2)
    assert C.check_cuda(healthy(torch=cpu_only)).status == "ok"
    wants = C.check_cuda(healthy(torch=cpu_only, config=LoaderConfig(model=MODEL, device="cuda")))
    assert wants.status == "fail" and "CPU-only" in wants.finding
    driver_unused = C.check_cuda(healthy(torch=cpu_only, nvidia_driver="NVRM version: 550.54"))
    assert driver_unused.status == "warn"
    no_gpu = TorchInfo(version="2.13.0+cu128", cuda_build="12.8", cuda_available=False, threads=2)
    assert C.check_cuda(healthy(torch=no_gpu)).status == "warn"
    assert "sees no GPU" in C.check_cuda(healthy(torch=no_gpu)).finding


def test_fake_cuda_device_with_little_memory():
    small = GpuInfo(0, "Tiny GPU", (7, 5), 2 * GB, 1 * GB, False)
    big = GpuInfo(1, "Big GPU", (9, 0), 80 * GB, 79 * GB, True)
    torch_info = TorchInfo(
        version="2.13.0", cuda_build="12.8", cuda_available=True, gpus=(small, big), threads=2
    )
    on_small = C.check_gpu_fit(healthy(torch=torch_info, config=LoaderConfig(model=MODEL, device="cuda:0")))
    assert on_small.status == "fail" and "--batch-size" in on_small.fix
    on_big = C.check_gpu_fit(healthy(torch=torch_info, config=LoaderConfig(model=MODEL, device="cuda:1")))
    assert on_big.status == "ok"
    listing = C.check_cuda(healthy(torch=torch_info)).finding
    assert "Tiny GPU" in listing and "sm_75" in listing and "bf16 no" in listing and "bf16 yes" in listing


def test_known_bad_versions():
    unmet = ("transformers needs tokenizers<0.23,>=0.22, but 0.21.0 is installed",)
    assert C.check_versions(healthy(unmet=unmet)).status == "fail"
    old_torch = {**healthy().packages, "torch": "2.1.2", "numpy": "2.0.1"}
    result = C.check_versions(healthy(packages=old_torch))
    assert result.status == "fail" and "NumPy 1.x" in result.finding
    missing = {**healthy().packages, "sentence-transformers": None}
    assert C.check_versions(healthy(packages=missing)).status == "fail"


def test_model_check_failure_is_reported():
    result = C.check_model_load(healthy(model_check=ModelCheck(error="model x is not available")))
    assert result.status == "fail"


def test_a_check_that_raises_becomes_that_checks_failure(monkeypatch: pytest.MonkeyPatch):
    def check_boom(snapshot: Snapshot) -> CheckResult:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(C, "CHECKS", (C.check_python, check_boom))
    results = C.run_checks(healthy())
    assert results[1].name == "boom" and results[1].status == "fail" and "kaboom" in results[1].finding


def test_cache_resolution_agrees_with_huggingface_hub():
    from huggingface_hub import constants

    path, _ = resolve_cache(dict(os.environ), None, str(Path.home()))
    assert path == str(Path(constants.HF_HUB_CACHE))
    assert resolve_cache({"HF_HOME": "/h"}, None, "/home/u") == ("/h/hub", "HF_HOME/hub")
    assert resolve_cache({"HF_HOME": "/h", "HF_HUB_CACHE": "/c"}, None, "/home/u")[0] == "/c"
    assert resolve_cache({}, "/explicit", "/home/u") == ("/explicit", "--cache-dir")


def test_doctor_json_through_the_cli(tmp_path: Path):
    env = {"TRANSFORMERS_CACHE": str(tmp_path / "old"), "HF_HUB_CACHE": str(tmp_path)}
    result = run_cli(["doctor", "--format", "json"], env=env)
    report = orjson.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert {"tensorflow-keras", "cache-location", "cuda", "model-files", "cpu"} <= set(checks)
    assert checks["cache-location"]["status"] == "warn"
    assert "TRANSFORMERS_CACHE" in checks["cache-location"]["finding"]
    assert (
        report["ok"] is False and result.returncode == 5
    )  # ExitCode.CHECKS_FAILED; default model not cached, offline


def test_doctor_passes_on_a_local_model_with_check_model(tiny_xlmr: Path):
    result = run_cli(
        ["doctor", "--format", "json", "--model", str(tiny_xlmr), "--check-model", "--device", "cpu"]
    )
    report = orjson.loads(result.stdout)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert failed == [] and result.returncode == 0
    load = next(c for c in report["checks"] if c["name"] == "model-load")
    assert "one pair scored" in load["finding"]
    optional = next(c for c in report["checks"] if c["name"] == "optional-backends")
    for package in ("matplotlib", "redis"):  # read from the installed packages' metadata
        assert optional["details"][package] == installed(package)


def test_ray_is_reported_with_its_cluster():
    packages = {**healthy().packages, "ray": "2.60.0"}
    ok = C.check_optional(healthy(packages=packages))
    assert ok.status == "ok" and "ray 2.60.0" in ok.finding and "starts a local Ray" in ok.finding
    down = C.check_optional(
        healthy(packages=packages, ray_cluster="10.0.0.1:6379 is not reachable (timed out)")
    )
    assert down.status == "warn" and "RAY_ADDRESS" in down.fix
    missing = C.check_optional(healthy())
    assert "bge-rerank-cli[ray]" in missing.fix


def test_every_extra_is_reported_with_its_install_hint():
    bare = C.check_optional(healthy())  # no extra installed
    assert bare.status == "ok"
    assert "matplotlib not installed" in bare.finding and "redis not installed" in bare.finding
    for extra in ("onnx", "ray", "serve", "plot", "cache"):
        assert f"`pip install 'bge-rerank-cli[{extra}]'`" in bare.fix
    assert "For eval --plot and bench --plot: `pip install 'bge-rerank-cli[plot]'`." in bare.fix
    assert "For --score-cache redis://: `pip install 'bge-rerank-cli[cache]'`." in bare.fix
    assert bare.details["matplotlib"] is None and bare.details["redis"] is None

    packages = {**healthy().packages, "matplotlib": "3.11.2", "redis": "8.2.0", "onnxruntime-gpu": "1.32.0"}
    some = C.check_optional(healthy(packages=packages))
    assert "matplotlib 3.11.2" in some.finding and "redis 8.2.0" in some.finding
    assert "onnxruntime 1.32.0" in some.finding  # the GPU build stands for the onnx extra too
    assert "[plot]" not in some.fix and "[cache]" not in some.fix and "[onnx]" not in some.fix
    assert "bge-rerank-cli[ray]" in some.fix and "bge-rerank-cli[serve]" in some.fix
    assert some.details["matplotlib"] == "3.11.2" and some.details["redis"] == "8.2.0"


def test_the_extras_reported_are_those_pyproject_declares():
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from bge_rerank_cli.doctor.snapshot import EXTRAS, PACKAGES

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {e.name for e in EXTRAS} == set(declared) - {"dev"}
    for extra in EXTRAS:
        names = {Requirement(spec).name for spec in declared[extra.name]}
        assert extra.packages[0] in names, extra.name  # the package whose version stands for the extra
        assert set(extra.packages) <= set(PACKAGES)  # collected by the snapshot


def test_probe_ray_against_a_closed_local_port():
    from bge_rerank_cli.doctor.snapshot import probe_ray

    assert probe_ray(None, 1.0) is None
    assert "not reachable" in (probe_ray("127.0.0.1:9", 1.0) or "")


def test_doctor_view_keeps_every_fix_whole_at_80_columns():
    import io

    from rich.console import Console

    from bge_rerank_cli.cli.doctor import _render

    missing = replace(
        CACHED, present=False, snapshot=None, files=()
    )  # not cached, Hub unreachable: long fixes
    results = run_checks(
        healthy(model=missing, hub=Reachability(False, "https://huggingface.co unreachable"))
    )
    assert any(r.status == "fail" and "hf download BAAI/bge-reranker-v2-m3" in r.fix for r in results)
    for width in (80, 200):
        buffer = io.StringIO()
        _render(results, Console(file=buffer, width=width, soft_wrap=True, color_system=None))
        text = buffer.getvalue()
        lines = text.splitlines()
        commands = [line.strip() for line in lines if line.lstrip().startswith("$ ")]
        words = text.split()
        for r in results:
            for word in f"{r.name}: {r.finding} fix: {r.fix}".split():
                assert word in words, word  # wrapped between words, never inside one
            for command in re.findall(r"`([^`]+)`", r.fix):
                assert f"$ {command}" in commands  # on a line of its own, whole, to copy
        assert "…" not in text
        assert all(len(line) <= width for line in lines if not line.lstrip().startswith("$ "))


def test_an_empty_model_folder_is_named_in_our_words(tmp_path: Path):
    from bge_rerank_cli.backends import load_scorer
    from bge_rerank_cli.errors import ModelError

    with pytest.raises(ModelError, match=r"has no config\.json: it is not a Hugging Face model folder"):
        load_scorer(LoaderConfig(model=str(tmp_path)))


def test_a_failed_model_load_gives_its_own_fix():
    from bge_rerank_cli.doctor.snapshot import ModelCheck

    failed = C.check_model_load(healthy(model_check=ModelCheck(error="boom", hint="Do this.")))
    assert (failed.status, failed.fix) == ("fail", "Do this.")
    bare = C.check_model_load(healthy(model_check=ModelCheck(error="boom")))
    assert "BGE_RERANK_DEBUG=1 bge-rerank score -m" in bare.fix and "checks above" not in bare.fix


def test_sizes_read_well_small_and_large():
    assert C.size(2 * GB) == "2.00 GiB" and C.size(300 * 1024) == "0.3 MiB" and C.size(5 * 2**20) == "5.0 MiB"
