"""`bge-rerank download`: files into the Hugging Face cache and the ONNX export where loading looks, once.

The Hub path runs against a small HTTP server on 127.0.0.1 that answers as the Hub does (the model
API, the tree listing, HEAD/GET on /resolve/ with X-Repo-Commit, ETag/X-Linked-Etag and sizes), so
huggingface_hub's own snapshot_download really downloads into a temporary cache. Everything else
runs offline (HF_HUB_OFFLINE=1, set in conftest).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import orjson
import pytest
from typer.testing import CliRunner

from bge_rerank_cli import memory
from bge_rerank_cli.cli import app
from bge_rerank_cli.download import skip_patterns
from bge_rerank_cli.errors import ExitCode
from tests.conftest import REPO

runner = CliRunner()
REPO_ID = "acme/tiny-reranker"

# The CLI in a subprocess, reporting whether torch was imported; with LOW_MEMORY set, the free-memory
# reading says 1000 bytes (the only thing replaced: the check and everything after it are the real ones).
PROBE = """
import os, runpy, sys
if os.environ.get("LOW_MEMORY"):
    from bge_rerank_cli import memory
    memory.available_bytes = lambda: 1000
sys.argv = ["bge-rerank", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("bge_rerank_cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
print("TORCH=" + str(any(m.split(".")[0] == "torch" for m in sys.modules)), file=sys.stderr)
sys.exit(code)
"""


def probe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """The real entry point in a subprocess with a pipe for stdout, as a build script runs it."""
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **env},
        cwd=REPO,
        timeout=180,
    )


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


# --- a local directory --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_export(tiny_xlmr: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, str]]:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    env = {"BGE_RERANK_CACHE": str(tmp_path_factory.mktemp("own-cache"))}
    result = runner.invoke(app, ["download", str(tiny_xlmr), "--backend", "onnx"], env=env)  # stdout: no TTY
    assert result.exit_code == 0, result.output
    assert "exporting to ONNX (fp32) into" in result.stderr
    return orjson.loads(result.stdout), env


def test_the_json_output_says_where_things_went(local_export, tiny_xlmr: Path):
    done, env = local_export
    assert set(done) >= {"model", "revision", "commit", "snapshot", "snapshot_bytes", "backend", "quantize",
                         "export", "export_bytes", "exported", "fetched_files", "fetched_bytes", "seconds"}  # fmt: skip
    assert done["model"] == str(tiny_xlmr) and done["source"] == "local" and done["commit"] is None
    assert done["snapshot"] == str(tiny_xlmr.resolve())
    assert done["snapshot_bytes"] == sum(p.stat().st_size for p in tiny_xlmr.rglob("*") if p.is_file())
    assert done["fetched_files"] == 0 and done["backend"] == "onnx" and done["quantize"] == "none"
    export = Path(done["export"])
    assert export.parent == Path(env["BGE_RERANK_CACHE"]) / "onnx"
    assert done["exported"] is True and (export / "meta.json").is_file()
    assert done["export_bytes"] == sum(p.stat().st_size for p in export.iterdir())


def test_score_offline_finds_the_export_and_neither_exports_nor_imports_torch(local_export, tiny_xlmr: Path):
    done, env = local_export
    export = Path(done["export"])
    before = mtimes(export)
    args = [
        "score",
        "-q",
        "a",
        "-p",
        "b",
        "-m",
        str(tiny_xlmr),
        "--backend",
        "onnx",
        "--offline",
        "-f",
        "jsonl",
    ]
    result = probe(args, env)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert "score" in orjson.loads(result.stdout.splitlines()[0])
    assert b"TORCH=False" in result.stderr and b"exporting" not in result.stderr
    assert mtimes(export) == before and sorted(p.name for p in export.parent.iterdir()) == [export.name]


def test_a_second_run_says_it_is_there_and_exports_nothing(local_export, tiny_xlmr: Path):
    done, env = local_export
    export = Path(done["export"])
    before = mtimes(export)
    result = probe(["download", str(tiny_xlmr), "--backend", "onnx", "-f", "table"], env)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert (
        b"nothing to fetch" in result.stderr and b"the ONNX export (fp32) is already there" in result.stderr
    )
    assert b"TORCH=False" in result.stderr  # a cache hit loads nothing
    assert mtimes(export) == before
    table = result.stdout.decode()
    assert "ready for --backend onnx" in table and "already there" in table
    assert f"-m {tiny_xlmr} --backend onnx --offline" in table


def test_a_torch_download_imports_no_torch(tiny_xlmr: Path, tmp_path: Path):
    result = probe(
        ["download", str(tiny_xlmr), "--backend", "torch", "-f", "json"], {"BGE_RERANK_CACHE": str(tmp_path)}
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b"TORCH=False" in result.stderr
    assert orjson.loads(result.stdout)["export"] is None and not (tmp_path / "onnx").exists()


def test_an_export_that_would_not_fit_is_refused_with_its_figures(
    tiny_xlmr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    monkeypatch.setenv("BGE_RERANK_CACHE", str(tmp_path))
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    result = runner.invoke(app, ["download", str(tiny_xlmr), "--backend", "onnx", "--quantize", "int8"])
    assert result.exit_code == ExitCode.MODEL, result.output
    assert (
        "needs about 0.0 GiB of free memory (3x its" in result.stderr
        and "0.0 GiB is available" in result.stderr
    )
    assert "--backend torch" in result.stderr and "BGE_RERANK_SKIP_MEMORY_CHECK=1" in result.stderr
    assert not list(tmp_path.rglob("meta.json"))


def test_without_the_onnx_extra_it_names_the_install_before_any_work(
    tiny_xlmr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("BGE_RERANK_CACHE", str(tmp_path))
    monkeypatch.setitem(
        sys.modules, "onnxruntime", None
    )  # what `import onnxruntime` meets when not installed
    result = runner.invoke(
        app, ["download", "org/not-cached", "--backend", "onnx", "--cache-dir", str(tmp_path)]
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--backend onnx needs onnx and onnxruntime: pip install 'bge-rerank-cli[onnx]'" in result.stderr


def test_offline_and_not_cached_says_so_with_the_fix(tmp_path: Path):
    result = runner.invoke(app, ["download", "org/not-cached", "--cache-dir", str(tmp_path)])
    assert result.exit_code == ExitCode.MODEL, result.output
    line = result.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("error: model org/not-cached is not available: offline")
    assert f"not completely in the cache {tmp_path}" in line
    assert "`bge-rerank download org/not-cached`" in line and "--cache-dir" in line


def test_a_missing_directory_and_an_incomplete_one_are_named(tmp_path: Path):
    result = runner.invoke(app, ["download", str(tmp_path / "nowhere")])
    assert result.exit_code == ExitCode.MODEL and "does not exist" in result.stderr
    (tmp_path / "config.json").write_text("{}")
    result = runner.invoke(app, ["download", str(tmp_path)])
    assert result.exit_code == ExitCode.MODEL
    assert "lacks weights (model.safetensors), tokenizer files" in result.stderr


def test_a_broken_link_counts_as_missing(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "tokenizer.json").symlink_to(tmp_path / "deleted-blob")
    result = runner.invoke(app, ["download", str(tmp_path)])
    assert result.exit_code == ExitCode.MODEL
    assert f"{tmp_path} lacks tokenizer files: it is not" in result.stderr  # nothing else lacking


def test_skipped_files_are_those_a_reranker_does_not_load():
    files = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "onnx/model.onnx",
             "openvino/openvino_model.xml", "tokenizer.json", "sentencepiece.bpe.model", "assets/logo.png"]  # fmt: skip
    skip = skip_patterns(files)
    from fnmatch import fnmatchcase

    kept = [f for f in files if not any(fnmatchcase(f, p) for p in skip)]
    assert kept == ["config.json", "model.safetensors", "tokenizer.json", "sentencepiece.bpe.model"]
    assert "pytorch_model.bin" not in [
        f for f in files if not any(fnmatchcase(f, p) for p in skip_patterns(files))
    ]
    only_bin = skip_patterns(["config.json", "pytorch_model.bin", "flax_model.msgpack"])
    assert "*.bin" not in only_bin and "*.msgpack" in only_bin  # .bin is the weights there
    assert skip_patterns(["config.json", "tf_model.h5"]) == []  # no PyTorch weights: fetched whole


# --- the Hub, on loopback -------------------------------------------------------------------------------


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LoopbackHub:
    """Serves model repositories the way huggingface.co does for huggingface_hub: ``/api/models/{id}/revision/
    {rev}`` (the commit), ``/api/models/{id}/tree/{rev}`` (files, sizes, LFS ids) and HEAD/GET
    ``/{id}/resolve/{rev}/{path}`` with X-Repo-Commit, ETag (X-Linked-Etag and X-Linked-Size for LFS
    files) and Content-Length; unknown repos and revisions answer with the Hub's X-Error-Code."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = {}
        for repo, files in repos.items():
            commit = hashlib.sha1(b"".join(p.encode() + d for p, d in sorted(files.items()))).hexdigest()
            self.repos[repo] = (commit, files)
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloads(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]

    def answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.requests.append((handler.command, path))
        parts = path.strip("/").split("/")
        if parts == [""]:
            return self.send(handler, 200, b"ok", body=body)
        if parts[:2] == ["api", "models"] and len(parts) in (4, 6):  # /api/models/{id}: the default branch
            repo, kind, rev = "/".join(parts[2:4]), *(parts[4:6] or ["revision", "main"])
            found = self.resolve(handler, repo, rev, body)
            if found is None:
                return None
            commit, files = found
            if kind == "revision":
                data = {"id": repo, "sha": commit, "private": False,
                        "siblings": [{"rfilename": name} for name in files]}  # fmt: skip
                return self.send(handler, 200, json.dumps(data).encode(), body=body)
            if kind == "tree":
                return self.send(handler, 200, json.dumps(self.tree(files)).encode(), body=body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            found = self.resolve(handler, repo, rev, body)
            if found is None:
                return None
            commit, files = found
            if name not in files:
                return self.send(handler, 404, b"", body=body, headers={"X-Error-Code": "EntryNotFound",
                                                                        "X-Repo-Commit": commit})  # fmt: skip
            data = files[name]
            headers = {"X-Repo-Commit": commit, "ETag": f'"{_git_oid(data)}"'}
            if self.is_lfs(name):
                headers |= {
                    "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "X-Linked-Size": str(len(data)),
                }
            return self.send(handler, 200, data, body=body, headers=headers)
        return self.send(handler, 404, b"", body=body)

    def resolve(self, handler: BaseHTTPRequestHandler, repo: str, rev: str, body: bool):
        if repo not in self.repos:
            self.send(handler, 404, b"", body=body, headers={"X-Error-Code": "RepoNotFound"})
            return None
        commit, files = self.repos[repo]
        if rev not in ("main", commit):
            self.send(handler, 404, b"", body=body, headers={"X-Error-Code": "RevisionNotFound"})
            return None
        return commit, files

    @staticmethod
    def is_lfs(name: str) -> bool:
        return name.endswith((".safetensors", ".bin", ".onnx", ".png"))

    def tree(self, files: dict[str, bytes]) -> list[dict]:
        entries: list[dict] = []
        folders = sorted({name.rsplit("/", 1)[0] for name in files if "/" in name})
        entries += [{"type": "directory", "oid": _git_oid(f.encode()), "size": 0, "path": f} for f in folders]
        for name, data in files.items():
            entry = {"type": "file", "oid": _git_oid(data), "size": len(data), "path": name}
            if self.is_lfs(name):
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            entries.append(entry)
        return entries

    @staticmethod
    def send(handler: BaseHTTPRequestHandler, status: int, data: bytes, *, body: bool, headers=None) -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)


EXTRAS = {  # what Hub repositories carry besides what a reranker loads
    "README.md": b"# tiny reranker\n",
    "pytorch_model.bin": b"\x80" * 4096,
    "onnx/model.onnx": b"\x08" * 2048,
    "assets/logo.png": b"\x89PNG" * 64,
}
LOADED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md")


@pytest.fixture(scope="module")
def hub(tiny_xlmr: Path) -> Iterator[LoopbackHub]:
    files = {p.name: p.read_bytes() for p in tiny_xlmr.iterdir() if p.is_file()}
    server = LoopbackHub({REPO_ID: {**files, **EXTRAS}})
    yield server
    server.close()


def hub_env(hub_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(tmp_path / "hf-home"),  # no token of the machine's
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "BGE_RERANK_CACHE": str(tmp_path / "own"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def test_the_hub_download_fetches_once_what_a_reranker_loads(hub: LoopbackHub, tmp_path: Path):
    env = hub_env(hub.url, tmp_path)
    commit, files = hub.repos[REPO_ID]
    first = probe(["download", REPO_ID, "--backend", "torch"], env)
    assert first.returncode == 0, first.stderr.decode()[-3000:]
    assert b"TORCH=False" in first.stderr
    done = orjson.loads(first.stdout)
    snapshot = tmp_path / "hub" / "models--acme--tiny-reranker" / "snapshots" / commit
    assert done["snapshot"] == str(snapshot) and done["commit"] == commit and done["source"] == "hub"
    assert (tmp_path / "hub" / "models--acme--tiny-reranker" / "refs" / "main").read_text() == commit
    fetched = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
    assert fetched == sorted(LOADED)
    assert sorted(hub.downloads()) == sorted(f"/{REPO_ID}/resolve/{commit}/{name}" for name in LOADED)
    assert done["fetched_files"] == len(LOADED) and done["fetched_bytes"] == sum(
        len(files[n]) for n in LOADED
    )
    assert done["snapshot_bytes"] == done["fetched_bytes"]
    assert sorted(done["skipped"]) == sorted(set(EXTRAS) - {"README.md"})
    assert done["endpoint"] == hub.url and done["export"] is None
    stderr = first.stderr.decode()
    assert "fetching 5 of 5 files" in stderr and f"from {hub.url} into {tmp_path / 'hub'}" in stderr
    assert "skipped 3 files" in stderr and "done in" in stderr

    before, start = len(hub.downloads()), len(hub.requests)
    again = probe(["download", REPO_ID, "--backend", "torch", "-f", "json"], env)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert b"is already in the cache" in again.stderr and b"nothing to fetch" in again.stderr
    assert orjson.loads(again.stdout)["fetched_files"] == 0 and len(hub.downloads()) == before
    asked = [path for _, path in hub.requests[start:]]
    assert asked == [
        "/",
        f"/api/models/{REPO_ID}",
        f"/api/models/{REPO_ID}/tree/{commit}",
    ]  # no file, no HEAD

    forced = probe(["download", REPO_ID, "--backend", "torch", "--force"], env)
    assert forced.returncode == 0 and len(hub.downloads()) == before + len(LOADED)


def test_a_hub_model_is_exported_from_the_cache_and_scored_offline_without_torch(
    hub: LoopbackHub, tmp_path: Path
):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    env = hub_env(hub.url, tmp_path)
    result = probe(["download", REPO_ID, "--backend", "onnx"], env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    done = orjson.loads(result.stdout)
    export = Path(done["export"])
    assert done["exported"] is True and export.parent == tmp_path / "own" / "onnx"
    assert export.name.startswith("acme--tiny-reranker-none-")
    before = mtimes(export)
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing to reach
    args = ["score", "-q", "a", "-p", "b", "-m", REPO_ID, "--backend", "onnx", "--offline", "-f", "jsonl"]
    scored = probe(args, offline)
    assert scored.returncode == 0, scored.stderr.decode()[-2000:]
    assert b"TORCH=False" in scored.stderr and mtimes(export) == before
    # A host that was given the export folder alone: the export is all the ONNX backend loads.
    bare = {**offline, "HF_HUB_CACHE": str(tmp_path / "empty-hub")}
    checked = probe(["download", REPO_ID, "--backend", "onnx", "-f", "json"], bare)
    assert checked.returncode == 0, checked.stderr.decode()[-2000:]
    assert b"its ONNX export is, and that is all the ONNX backend loads" in checked.stderr
    assert orjson.loads(checked.stdout) | {"seconds": 0} == done | {
        "snapshot": None, "snapshot_bytes": 0, "commit": None, "source": "cache", "endpoint": None,
        "fetched_files": 0, "fetched_bytes": 0, "skipped": [], "skipped_bytes": 0, "exported": False,
        "seconds": 0, "steps": orjson.loads(checked.stdout)["steps"],
    }  # fmt: skip


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_unreachable_hub_uses_a_cached_model_and_otherwise_says_what_to_do(
    hub: LoopbackHub, tmp_path: Path
):
    env = hub_env(hub.url, tmp_path)
    assert probe(["download", REPO_ID, "--backend", "torch"], env).returncode == 0
    down = {**env, "HF_ENDPOINT": _closed_port()}
    cached = probe(["download", REPO_ID, "--backend", "torch", "-f", "json"], down)
    assert cached.returncode == 0, cached.stderr.decode()[-2000:]
    assert b"warning: the Hub is unreachable" in cached.stderr
    assert orjson.loads(cached.stdout)["source"] == "cache"
    missing = probe(["download", "acme/elsewhere", "--backend", "torch"], down)
    assert missing.returncode == ExitCode.MODEL and missing.stdout == b""
    line = missing.stderr.decode().splitlines()[0]
    assert line.startswith(
        f"error: model acme/elsewhere is not in the cache {tmp_path / 'hub'} and the Hub is unreachable"
    )
    assert "`bge-rerank download acme/elsewhere`" in line


def test_an_unknown_repo_or_revision_is_one_error_line(hub: LoopbackHub, tmp_path: Path):
    env = hub_env(hub.url, tmp_path)
    result = probe(["download", "acme/no-such-model", "--backend", "torch"], env)
    assert result.returncode == ExitCode.MODEL
    assert result.stderr.decode().startswith(f"error: model acme/no-such-model was not found on {hub.url}.")
    result = probe(["download", REPO_ID, "--revision", "v9", "--backend", "torch"], env)
    assert result.returncode == ExitCode.MODEL
    assert (
        f"has no revision 'v9' on {hub.url}" in result.stderr.decode()
        and "--revision" in result.stderr.decode()
    )


def test_the_memory_check_refuses_before_the_weights_are_fetched(hub: LoopbackHub, tmp_path: Path):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    env = {**hub_env(hub.url, tmp_path), "LOW_MEMORY": "1"}
    before = len(hub.downloads())
    result = probe(["download", REPO_ID, "--backend", "onnx"], env)
    assert result.returncode == ExitCode.MODEL, result.stderr.decode()[-2000:]
    assert b"of free memory" in result.stderr and b"TORCH=False" in result.stderr
    assert len(hub.downloads()) == before  # refused before any file was fetched
