"""`--engine ray`: a local Ray (2 CPUs) on the tiny model gives the local engine's records, line for line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from bge_rerank_cli.cli import app
from tests.conftest import REPO, SAMPLES

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def read_dir(folder: Path) -> list[dict]:
    return [
        orjson.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_bytes().splitlines()
    ]


def local_records(args: list[str], data: bytes | None = None) -> list[dict]:
    result = runner.invoke(app, [*args, "-f", "jsonl", "--quiet"], input=data)
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def by_line(records: list[dict]) -> dict[int, dict]:
    return {r.pop("line"): r for r in records if r.pop("file", None) is not None}


@pytest.mark.parametrize(
    ("command", "sample", "actors"), [("rerank", "rerank.jsonl", "1"), ("score", "mixed_pairs.jsonl", "2")]
)
def test_ray_records_equal_the_local_engine(
    tiny_xlmr: Path, tmp_path: Path, command: str, sample: str, actors: str
):
    source = SAMPLES / sample
    local = local_records([command, str(source), "-m", str(tiny_xlmr)])
    out = tmp_path / "out"
    args = [command, "--engine", "ray", "--model", str(tiny_xlmr), "-o", str(out), str(source)]
    args += [
        "--actors",
        actors,
        "--cpus-per-actor",
        "0.5",
    ]  # leave a CPU of the two for Ray Data's read tasks
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    remote = by_line(read_dir(out))
    assert sorted(remote) == list(range(1, len(local) + 1))
    for line, record in enumerate(local, start=1):
        mine = remote[line]
        if command == "score":
            assert mine.pop("score") == pytest.approx(record.pop("score"), abs=1e-6)
            assert mine.pop("logit") == pytest.approx(record.pop("logit"), abs=1e-5)
        else:
            for a, b in zip(mine["results"], record["results"], strict=True):
                assert a.pop("score") == pytest.approx(b.pop("score"), abs=1e-6)
                assert a.pop("logit") == pytest.approx(b.pop("logit"), abs=1e-5)
        assert mine == record


def test_ray_with_a_decoder_reranker_equals_the_local_engine(tiny_qwen3: Path, tmp_path: Path):
    """A Qwen3-Reranker through Ray actors: the same template, prefix reuse and scores as locally."""
    source = SAMPLES / "rerank.jsonl"
    local = local_records(["rerank", str(source), "-m", str(tiny_qwen3)])
    out = tmp_path / "out"
    args = ["rerank", "--engine", "ray", "--model", str(tiny_qwen3), "-o", str(out), str(source)]
    result = runner.invoke(app, [*args, "--actors", "1", "--cpus-per-actor", "0.5"])
    assert result.exit_code == 0, result.output
    remote = by_line(read_dir(out))
    assert sorted(remote) == list(range(1, len(local) + 1))
    for line, record in enumerate(local, start=1):
        mine = remote[line]
        for a, b in zip(mine["results"], record["results"], strict=True):
            assert a.pop("score") == pytest.approx(b.pop("score"), abs=1e-6)
            assert a.pop("logit") == pytest.approx(b.pop("logit"), abs=1e-5)
        assert mine == record


def test_ray_skip_mode_writes_errors_beside_the_output(tiny_xlmr: Path, tmp_path: Path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b'{"query": "q", "passage": "p"}\n{"query": 1}\nnot json\n{"query": "q", "passage": "x"}\n'
    )
    out = tmp_path / "out"
    args = [
        "score",
        "--engine",
        "ray",
        "-m",
        str(tiny_xlmr),
        "-o",
        str(out),
        str(source),
        "--on-error",
        "skip",
    ]
    assert runner.invoke(app, args).exit_code == 0
    assert sorted(r["line"] for r in read_dir(out)) == [1, 4]
    assert sorted(r["line"] for r in read_dir(out / "errors")) == [2, 3]

    failing = runner.invoke(app, [*args[:-2], "--on-error", "fail", "-o", str(tmp_path / "out2")])
    assert failing.exit_code == 3
    assert "line 2" in failing.stderr and "Traceback" not in failing.output


def test_ray_usage_errors(tiny_xlmr: Path, tmp_path: Path):
    result = runner.invoke(
        app, ["score", "--engine", "ray", "-m", str(tiny_xlmr), str(SAMPLES / "pairs.jsonl")]
    )
    assert result.exit_code == 2 and "give -o DIR" in result.stderr


def test_without_ray_the_message_names_the_extra():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "sys.argv = ['bge-rerank', 'score', '--engine', 'ray', '-o', 'x', 'in.jsonl']\n"
        "from bge_rerank_cli.cli import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert b"pip install 'bge-rerank-cli[ray]'" in result.stderr


def test_ray_actors_share_the_score_cache(tiny_xlmr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Actors open the cache the driver names (a SQLite file here, by its absolute path): a rerun is all
    hits, with the same records."""
    from bge_rerank_cli.score_cache import SqliteStore, parse_size

    monkeypatch.chdir(tmp_path)
    outputs = []
    for run in ("first", "rerun"):
        out = tmp_path / run
        args = ["score", "--engine", "ray", "--model", str(tiny_xlmr), "-o", str(out), str(SAMPLES / "pairs.jsonl"),
                "--cpus-per-actor", "0.5", "--score-cache", "scores.sqlite"]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs.append(sorted(read_dir(out), key=lambda r: r["line"]))
    assert outputs[0] == outputs[1]
    stats = SqliteStore(tmp_path / "scores.sqlite", parse_size("1GB")).stats()
    model = stats.models[str(tiny_xlmr)]
    assert (model.entries, model.hits, model.misses) == (10, 10, 10)
