"""The ready-to-run image (Containerfile, scripts/build-image.sh), built for real: from a debootstrap base
made here, the tiny model baked in, installed from the wheelhouse only. The container runs with a published
loopback port and is called through the Cohere SDK from this host; its scores equal `bge-rerank score`
here. It runs as a user without root, declares its health check, and a stop drains and exits 143.

Slow (a few minutes: debootstrap, the wheelhouse, the build). Skipped, with the reason, where no container
engine can build: no Podman and no running Docker engine, or no debootstrap or root for the base.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_serve import DOCS, QUERY, batch_scores, expected_order

httpx = pytest.importorskip("httpx")
cohere = pytest.importorskip("cohere")

pytestmark = pytest.mark.slow


def _engine() -> tuple[str | None, str]:
    """The engine that can build here (podman first, as the script picks), or ``None`` and why not."""
    for name in ("podman", "docker"):
        if shutil.which(name) and subprocess.run([name, "info"], capture_output=True).returncode == 0:
            return name, ""
    return None, "no container engine can build here: no podman, and docker has no running engine"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


VARIANTS = {"full": [], "slim": ["--backend", "onnx", "--slim"]}  # slim: the ONNX export on onnxruntime


@pytest.fixture(scope="module", params=list(VARIANTS))
def image(request: pytest.FixtureRequest, tiny_xlmr: Path) -> Iterator[tuple[str, str, str]]:
    engine, why = _engine()
    if engine is None:
        pytest.skip(why)
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        pytest.skip("the debootstrap base needs debootstrap and root (apt-get install debootstrap)")
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the wheelhouse is made with this Python, which must be 3.11 as in the image")
    variant = str(request.param)
    tag = f"localhost/bge-rerank-test:{variant}-{uuid.uuid4().hex[:8]}"
    build = subprocess.run(
        ["bash", "scripts/build-image.sh", "--model", str(tiny_xlmr), "--base", "debootstrap", "--tag", tag,
         *VARIANTS[variant]],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "PYTHON": sys.executable, "CONTAINER_ENGINE": engine},
    )  # fmt: skip
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    try:
        yield engine, tag, variant
    finally:
        _run(engine, "rmi", "-f", tag)


def test_the_image_serves_the_baked_model_as_the_host_scores_it(image: tuple[str, str, str], tiny_xlmr: Path):
    engine, tag, variant = image
    backend = "onnx" if variant == "slim" else "torch"
    port, name = _free_port(), f"bge-rerank-test-{uuid.uuid4().hex[:8]}"
    started = _run(engine, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", tag)
    assert started.returncode == 0, started.stderr
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, _run(engine, "logs", name).stderr[-3000:]
            time.sleep(0.5)

        info = httpx.get(url + "/info", timeout=10).json()
        assert info["model"] == f"/opt/bge-rerank/model/{tiny_xlmr.name}" and info["backend"] == backend
        assert info["score_cache"] == {"where": "/data/scores.sqlite", "working": True}
        client = cohere.ClientV2(base_url=url, api_key="unused")  # the image sets no key: open
        response = client.rerank(model="bge-reranker-v2-m3", query=QUERY, documents=DOCS, top_n=4)
        reference = batch_scores(tiny_xlmr, DOCS, "--backend", backend)  # `bge-rerank score` on this host
        assert [r.index for r in response.results] == expected_order(reference)[:4]
        for result in response.results:
            assert result.relevance_score == pytest.approx(reference[result.index]["score"], abs=1e-5)

        if variant == "slim":  # the ONNX path alone: none of the torch stack is installed
            probe = (
                "import importlib.util as u; print([m for m in ('torch', 'transformers', "
                "'sentence_transformers') if u.find_spec(m)])"
            )
            assert _run(engine, "exec", name, "python3", "-c", probe).stdout.strip() == "[]"
        user = _run(engine, "exec", name, "id", "-u").stdout.strip()
        assert user not in ("", "0"), user
        assert _run(engine, "inspect", "--format", "{{.Config.User}}", name).stdout.strip() == "10001"
        health = _run(engine, "inspect", "--format", "{{json .Config.Healthcheck}}", name).stdout
        assert "/health" in health, health
        if engine == "podman":  # docker has no command that runs the check once
            assert _run(engine, "healthcheck", "run", name).returncode == 0

        stopped = _run(engine, "stop", "-t", "20", name)
        assert stopped.returncode == 0, stopped.stderr
        assert _run(engine, "inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "143"
        log = _run(engine, "logs", name)
        text = log.stdout + log.stderr
        assert "requests in flight finished" in text and "Traceback" not in text, text[-3000:]
    finally:
        _run(engine, "rm", "-f", name)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--quantize", "int8"], "--quantize int8 needs --backend onnx"),
        (["--backend", "tensorrt"], "--backend must be auto, torch or onnx"),
        (["--frobnicate"], "unknown argument --frobnicate"),
    ],
)
def test_the_build_script_refuses_bad_arguments_before_building(args: list[str], said: str):
    result = _run("bash", str(REPO / "scripts" / "build-image.sh"), *args)
    assert result.returncode == 2 and f"error: {said}" in result.stderr, result.stderr
    assert "building with" not in result.stderr  # refused before touching an engine


def test_the_build_script_explains_itself():
    result = _run("bash", str(REPO / "scripts" / "build-image.sh"), "--help")
    assert result.returncode == 0 and "--base debootstrap" in result.stdout and "wheelhouse" in result.stdout
