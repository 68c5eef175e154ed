"""Every console, bash and Python block in README.md and docs/ runs as written, on tiny local models.

The Hub ids the docs name (BAAI/bge-reranker-v2-m3, Qwen/Qwen3-Reranker-0.6B, ...) resolve offline to
random-weight models of the same kind, placed in a Hugging Face cache made for the test; the files the
docs call the reader's own (``pairs.jsonl``, ``candidates.jsonl``, ``bm25.run``, ...) are made from
``sample_data/`` in a fresh working folder per page. Blocks of one page run in order and share that
folder, their servers and one Python interpreter, as a reader working down the page would.

What is checked, besides each command exiting 0: an ``error: ...`` line shown under a command means it
must fail with that very line on stderr; a JSON object shown under a command must come back with at
least its keys. Other shown output (scores, tables) is not compared: the weights are random.

A block, or one ``$`` line, that cannot run here carries a visible comment saying what it needs
(``# needs a GPU``, ``# needs the network``); it is skipped with that reason.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLES

pytestmark = pytest.mark.slow  # servers, a 15,000-pair job stopped part-way, every page's commands

PAGES = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "cli.md")]
LANGS = ("console", "bash", "python")
NEEDS = re.compile(r"#\s*(needs\b.*)$")
COMMAND_TIMEOUT = 300.0
SERVE_START_TIMEOUT = 120.0
INTERRUPTED_REPEAT = 1500  # 15,000 pairs: seconds on a tiny model, time to stop the job part-way


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def needs(self) -> str | None:
        """A block-wide marker: a comment line of its own (``# needs ...``)."""
        for line in self.text.splitlines():
            match = NEEDS.match(line.strip())
            if match and not line.lstrip().startswith("$"):
                return match.group(1)
        return None


@dataclass
class Command:
    text: str
    line: int
    shown: list[str] = field(default_factory=list)  # the output the page shows under it

    def needs(self) -> str | None:
        match = NEEDS.search(self.text.splitlines()[0])
        return match.group(1) if match else None


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S):
        if match.group(1) in LANGS:
            line = text.count("\n", 0, match.start()) + 2
            found.append(Block(str(page.relative_to(REPO)), line, match.group(1), match.group(2)))
    return found


def commands_of(block: Block) -> list[Command]:
    """A console block's ``$`` commands (with ``\\`` continuations) and the lines shown under each."""
    commands: list[Command] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            text, start = line[2:], block.line + i
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text + "\n" + lines[i]
            commands.append(Command(text, start))
        elif commands and line.strip():
            commands[-1].shown.append(line)
        i += 1
    return commands


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


# --- the world a reader has: models behind Hub ids, their own files, a shell -------------------------


def _hub_cache(root: Path, models: dict[str, Path]) -> Path:
    """A Hugging Face cache holding each ``id -> folder`` as its main revision, as a download leaves it."""
    for model_id, folder in models.items():
        repo = root / ("models--" + model_id.replace("/", "--"))
        commit = hashlib.sha1(model_id.encode()).hexdigest()
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        shutil.copytree(folder, repo / "snapshots" / commit, dirs_exist_ok=True)
    return root


def _beir_candidates() -> list[bytes]:
    """The BEIR sample's BM25 run as rerank JSONL: one record per query, its candidates in run order."""
    beir = SAMPLES / "beir-sample"
    corpus = {d["_id"]: d for d in map(json.loads, (beir / "corpus.jsonl").read_text("utf-8").splitlines())}
    queries = {
        q["_id"]: q["text"] for q in map(json.loads, (beir / "queries.jsonl").read_text("utf-8").splitlines())
    }
    runs: dict[str, list[str]] = {}
    for line in (beir / "bm25.run").read_text("utf-8").splitlines():
        qid, _, docid, *_ = line.split()
        runs.setdefault(qid, []).append(docid)
    return [
        json.dumps(
            {
                "qid": qid,
                "query": queries[qid],
                "documents": [{"id": d, "text": corpus[d]["text"]} for d in docs],
            },
            ensure_ascii=False,
        ).encode()
        + b"\n"
        for qid, docs in runs.items()
    ]


def _reader_files(folder: Path, model: Path, repeat: int) -> None:
    """The files the docs call the reader's own, made from the sample data (``repeat`` times over, for a
    page that stops a job part-way with ^C)."""
    for name in ("sample_data", "bench"):
        (folder / name).symlink_to(REPO / name)
    beir = SAMPLES / "beir-sample"
    pairs = (SAMPLES / "pairs.jsonl").read_bytes() * repeat
    candidates = b"".join(_beir_candidates()) * repeat
    (folder / "pairs.jsonl").write_bytes(pairs)
    (folder / "pairs.jsonl.gz").write_bytes(gzip.compress(pairs))
    (folder / "candidates.jsonl").write_bytes(candidates)
    (folder / "first_stage.jsonl").write_bytes(candidates)
    (folder / "my_queries.jsonl").write_bytes(b"".join(_beir_candidates()[:2]))
    shutil.copy(beir / "bm25.run", folder / "bm25.run")
    shutil.copy(beir / "corpus.jsonl", folder / "corpus.jsonl")
    shutil.copy(beir / "queries.jsonl", folder / "queries.jsonl")
    shutil.copy(beir / "qrels" / "test.tsv", folder / "qrels.txt")
    shutil.copytree(model, folder / "my-reranker")


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_xlmr: Path,
    tiny_qwen3: Path,
    tiny_gemma: Path,
    tiny_mxbai: Path,
):
    root = tmp_path_factory.mktemp("docs-world")
    cache = _hub_cache(
        root / "hf-cache",
        {
            "BAAI/bge-reranker-v2-m3": tiny_xlmr,
            "Qwen/Qwen3-Reranker-0.6B": tiny_qwen3,
            "Qwen/Qwen3-Reranker-4B": tiny_qwen3,
            "BAAI/bge-reranker-v2-gemma": tiny_gemma,
            "mixedbread-ai/mxbai-rerank-base-v2": tiny_mxbai,
        },
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BGE_RERANK_", "HF_", "COLUMNS", "PYTEST"))
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        BGE_RERANK_CACHE=str(root / "bge-rerank-cache"),
        PYTHONPATH=str(REPO),
    )
    return root, env, tiny_xlmr


class Page:
    """One page's session: its working folder, its background processes, its Python interpreter."""

    def __init__(self, name: str, root: Path, env: dict[str, str], model: Path) -> None:
        self.folder = root / name.replace("/", "-").replace(".", "-")
        self.folder.mkdir()
        stops = any(line == "^C" for b in ALL_BLOCKS if b.page == name for line in b.text.splitlines())
        _reader_files(self.folder, model, repeat=INTERRUPTED_REPEAT if stops else 1)
        self.env = env
        self.background: list[subprocess.Popen[bytes]] = []
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        self.python: subprocess.Popen[str] | None = None

    def close(self) -> None:
        if self.python is not None:
            self.python.kill()
            self.python.wait()
            self.python = None
        for proc in self.background:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def pages(world) -> Iterator[dict[str, Page]]:
    opened: dict[str, Page] = {}
    yield opened
    for page in opened.values():
        page.close()


def _page(pages: dict[str, Page], world, block: Block) -> Page:
    if block.page not in pages:
        for other in pages.values():  # the previous page is done: its servers stop
            other.close()
        pages[block.page] = Page(block.page, *world)
    return pages[block.page]


# --- running commands ---------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVE_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the server on port {port} was not ready after {SERVE_START_TIMEOUT:.0f} s")


def _serve(page: Page, command: Command) -> None:
    """`bge-rerank serve`, shown in the foreground or with `&`: started in the background, as a reader
    runs it in another terminal, and waited for until /ready answers. It runs until the page ends."""
    text = command.text.rstrip().removesuffix("&").strip()
    port_match = re.search(r"--port[ =](\d+)", text)
    port = int(port_match.group(1)) if port_match else 8080
    if port in page.servers:
        _stop(page.servers.pop(port))
    if not _port_free(port):
        pytest.skip(f"port {port} is taken on this machine")
    log = page.folder / f"serve-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {text}"],
            cwd=page.folder,
            env=page.env,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    page.background.append(proc)
    page.servers[port] = proc
    _wait_ready(proc, port, log)


def _run(page: Page, command: Command, where: str) -> None:
    text = command.text
    if re.match(r"\s*bge-rerank serve\b", text):
        _serve(page, command)
        return
    for tool in ("curl", "jq", "zcat"):
        if re.search(rf"(^|[|;&]\s*){tool}\b", text) and shutil.which(tool) is None:
            pytest.skip(f"{where}: needs {tool}, which this machine lacks")
    if "^C" in command.shown:
        _interrupt(page, command, where)
        return
    if text.rstrip().endswith("&"):
        proc = subprocess.Popen(
            ["bash", "-c", text.rstrip()[:-1]],
            cwd=page.folder,
            env=page.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        page.background.append(proc)
        return
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", text],
        cwd=page.folder,
        env=page.env,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    stdout = result.stdout.decode(errors="replace")
    stderr = result.stderr.decode(errors="replace")
    shown_errors = [line for line in command.shown if line.startswith("error:")]
    told = f"{where}: $ {text}\n--- exit {result.returncode}; stderr:\n{stderr[-3000:]}"
    if shown_errors:
        assert result.returncode != 0, f"the page shows an error, but the command succeeded.\n{told}"
        for line in shown_errors:
            assert _squeeze(line) in _squeeze(stderr), f"the page shows {line!r}, stderr differs.\n{told}"
        return
    assert result.returncode == 0, told
    for line in command.shown:
        expected = _json_object(line)
        if expected is None:
            continue
        got = [obj for out in stdout.splitlines() if (obj := _json_object(out)) is not None]
        assert any(set(expected) <= set(obj) for obj in got), (
            f"{where}: the page shows an object with keys {sorted(expected)}; the command printed:\n"
            f"{stdout[:2000]}"
        )


def _interrupt(page: Page, command: Command, where: str) -> None:
    """A command the page shows stopped with ^C: SIGINT once its output file holds records, as a reader
    presses Ctrl-C part-way; it must stop with 130 and leave a job that --resume continues."""
    target = re.search(r"-o (\S+)", command.text)
    assert target, f"{where}: a command shown with ^C needs -o FILE to show a stopped job"
    output = page.folder / target.group(1)
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command.text}"],
        cwd=page.folder,
        env=page.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )

    def state() -> tuple[int, int] | None:
        return (output.stat().st_size, output.stat().st_mtime_ns) if output.exists() else None

    before = state()  # an earlier command of the page may have left a file by that name
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        now = state()
        if now is not None and now != before and now[0] > 0:  # this job has written records
            os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=COMMAND_TIMEOUT)
    told = f"{where}: $ {command.text}\n--- exit {proc.returncode}; stderr:\n{stderr.decode(errors='replace')[-3000:]}"
    assert proc.returncode == 130, f"the page shows it stopped by ^C (exit 130).\n{told}"


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def _json_object(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --- Python blocks: one interpreter per page, blocks run in its namespace in order ---------------------

DRIVER = r"""
import contextlib, io, json, sys, traceback
namespace = {"__name__": "__main__"}
replies = sys.stdout
for request in sys.stdin:
    request = json.loads(request)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(request["code"], request["where"], "exec"), namespace)
        reply = {"ok": True, "out": out.getvalue()}
    except BaseException:
        reply = {"ok": False, "out": out.getvalue(), "error": traceback.format_exc()}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
"""


def _python(page: Page, block: Block) -> None:
    if page.python is None:
        page.python = subprocess.Popen(
            [sys.executable, "-c", DRIVER],
            cwd=page.folder,
            env=page.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    proc = page.python
    assert proc.stdin is not None and proc.stdout is not None
    # Line numbers in a traceback point into the page: the block's code starts at its line.
    code = "\n" * (block.line - 1) + block.text
    proc.stdin.write(json.dumps({"code": code, "where": str(REPO / block.page)}) + "\n")
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], COMMAND_TIMEOUT)
    if not ready:
        pytest.fail(f"{block.where}: the block did not finish in {COMMAND_TIMEOUT:.0f} s")
    reply = json.loads(proc.stdout.readline() or '{"ok": false, "error": "the interpreter died"}')
    assert reply["ok"], f"{block.where}:\n{reply['error']}"


# --- the test: one step per console command, per bash or Python block ------------------------------------


@dataclass(frozen=True)
class Step:
    block: Block
    command: Command | None  # None: the whole (bash or Python) block

    @property
    def where(self) -> str:
        return f"{self.block.page}:{self.command.line if self.command else self.block.line}"

    def needs(self) -> str | None:
        return self.block.needs() or (self.command.needs() if self.command else None)


STEPS = [
    Step(block, command)
    for block in ALL_BLOCKS
    for command in (commands_of(block) if block.lang == "console" else [None])
]


@pytest.mark.parametrize("step", STEPS, ids=[step.where for step in STEPS])
def test_doc_step_runs(step: Step, world, pages: dict[str, Page]) -> None:
    page = _page(pages, world, step.block)
    if (needs := step.needs()) is not None:
        pytest.skip(needs)
    if step.command is not None:
        _run(page, step.command, step.where)
    elif step.block.lang == "python":
        _python(page, step.block)
    else:
        _run(page, Command(step.block.text, step.block.line), step.where)


def test_the_runner_reads_blocks_as_a_reader_does():
    """The parser this test relies on: continuations, shown output, markers."""
    block = Block(
        "x.md",
        10,
        "console",
        '$ bge-rerank a \\\n    --b c\n{"k": 1}\n$ pip install x  # needs the network\nerror: boom\n',
    )
    first, second = commands_of(block)
    assert first.text == "bge-rerank a \\\n    --b c" and first.shown == ['{"k": 1}'] and first.line == 10
    assert second.needs() == "needs the network" and second.shown == ["error: boom"]
    assert Block("x.md", 1, "python", "# needs a GPU\nimport torch\n").needs() == "needs a GPU"
    assert len(STEPS) > 60
