"""docs/sql.md matches the code (every import, name, keyword, YAML component parameter, link and CLI flag resolves:
tests/doc_checks.py) and every code block runs. The sql block creates the read-only role on a real PostgreSQL server
(copied from Spider's concert_singer) and the role really cannot write; the YAML blocks are the pipeline the python
block builds and a valid TrainConfig; the python blocks run in order in one namespace (the real embedded model: slow);
the bash blocks run the CLI (a real 2-step training and its evaluation: slow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deepretrieval_trainer.sql.evaluate import best_step
from deepretrieval_trainer.training.config import TrainConfig
from tests import doc_checks
from tests.postgres_fixtures import copy_sqlite

from .conftest import spider_db

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "sql.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)


@pytest.fixture(scope="module")
def reader_database(postgres_server):
    """concert_singer on the PostgreSQL server, with the doc's read-only role created by the doc's sql block."""
    copy_sqlite(postgres_server, spider_db("concert_singer"), "concert_singer")
    with postgres_server.admin("concert_singer") as admin:
        for statement in blocks("sql")[0].split(";"):
            if statement.strip():
                admin.execute(statement)
    return postgres_server


def _python(block: str, server) -> str:
    return block.replace("127.0.0.1:5432", f"127.0.0.1:{server.port}")


def test_every_import_name_keyword_yaml_parameter_link_and_flag_in_the_doc_exists():
    problems = doc_checks.problems(DOC)
    assert not problems, "\n".join(problems)


def test_yaml_blocks_are_the_pipeline_and_a_valid_config():
    from haystack import Pipeline

    from haystack_deepretrieval import DeepRetrievalSQLWriter, ReadOnlySQLQuery

    db_path = "../shared/data/spider/database/concert_singer/concert_singer.sqlite"
    pipeline = Pipeline()
    pipeline.add_component("writer", DeepRetrievalSQLWriter(database=db_path, max_tokens=128))
    pipeline.add_component("runner", ReadOnlySQLQuery(database=db_path, max_rows=1000))
    pipeline.connect("writer.sql", "runner.sql")
    pipeline_yaml, recipe = blocks("yaml")
    assert pipeline.dumps() == pipeline_yaml
    assert Pipeline.loads(pipeline_yaml).dumps() == pipeline_yaml
    config = TrainConfig.from_dict(yaml.safe_load(recipe))
    assert config.task == "sql" and config.model == "Qwen/Qwen2.5-Coder-3B-Instruct" and config.use_vllm


def test_the_read_only_role_cannot_write(reader_database, monkeypatch):
    import psycopg

    monkeypatch.chdir(ROOT)
    with psycopg.connect(host="127.0.0.1", port=reader_database.port, user="deepretrieval_reader",
                         password="change-me", dbname="concert_singer", autocommit=True) as plain:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            plain.execute("DELETE FROM singer")  # even a plain connection of the role, without this library
    pg_block = next(b for b in blocks("python") if "open_database" in b)
    namespace: dict = {}
    exec(compile(_python(pg_block, reader_database), f"{DOC}:postgres", "exec"), namespace)
    assert namespace["shop"].execute("SELECT count(*) FROM singer").rows == ((6,),)


@pytest.mark.slow
def test_every_block_runs(reader_database, monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.chdir(ROOT)  # the doc reads ../shared/data relative to the project root
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "docs_sql"}
    try:
        for number, block in enumerate(blocks("python"), start=1):
            exec(compile(_python(block, reader_database), f"{DOC}:python-block-{number}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "singer(Singer_ID INT primary key" in out and "Question: How many singers do we have?" in out
    assert "((6,),)" in out and "not DROP" in out and "exactly one statement" in out and "not authorized" in out
    assert "SQLAlchemyDatabase postgres ((6,),)" in out
    assert re.search(r"^ok: (True|False) \| sql: ", out, re.M) and "engine: True" in out and "sql:" in out
    assert "sql http://127.0.0.1:8000/v1" in out
    script = blocks("bash")[0].replace("runs/", f"{tmp_path}/runs/")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "adapter:" in done.stdout and "4 examples on 1 databases" in done.stdout
    assert re.search(r"^gold\s+100\.0%", done.stdout, re.M) and re.search(r"^trained\s+\d", done.stdout, re.M)
    assert "exact McNemar" in done.stdout
    dataset = json.loads((tmp_path / "runs" / "sql-doc" / "run.json").read_text())["dataset"]
    assert dataset["max_hardness"] == "easy" and dataset["queries"] == 4  # the curriculum flag reached the run
    # the step was chosen on network_1, which training never saw: base (step 0) and checkpoints 1 and 2
    assert "network_1" not in dataset["databases"] and dataset["excluded_databases"] == ["network_1"]
    choice = json.loads((tmp_path / "runs" / "sql-doc" / "validation.json").read_text())
    assert choice["databases"] == ["network_1"] and choice["examples"] == 12  # its easy questions
    accuracy = {int(step): value for step, value in choice["accuracy"].items()}
    shares = {int(step): value for step, value in choice["template_share"].items()}
    assert set(accuracy) == set(shares) == {0, 1, 2} and all(0 <= v <= 1 for v in shares.values())
    cutoff = max(0.5, choice["gold_template_share"])  # network_1's easy gold SQL: one shape for half of them
    assert choice["collapsed"] == [s for s in (1, 2) if shares[s] > cutoff]  # one query shape for most questions
    assert choice["chosen_step"] == best_step(accuracy, excluded=choice["collapsed"])
    assert choice["filters"]["dropped_uninformative"] == 0  # network_1's easy gold results all hold rows
    assert re.search(r"^validation \(network_1, 12 examples\): step 0 \d", done.stdout, re.M)
    assert "chosen: " in done.stdout
    assert (tmp_path / "runs" / "sql-doc" / "validation" / "generations" / "step-2.jsonl").is_file()
