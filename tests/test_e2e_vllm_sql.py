"""Text-to-SQL end to end on the real vLLM server (the session fixture): a SQL adapter from a short real training run
of ``train_sql`` is loaded into the running server under its own name (vLLM runtime LoRA loading, as
``deepretrieval serve --hot-swap`` does), then the core SQLWriter, the LlamaIndex retriever and a Haystack pipeline
ask it for SQL over Spider's concert_singer and run the answer read-only (or report why there is none)."""

from __future__ import annotations

import hashlib
import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import pytest
from haystack import Pipeline
from llama_index.core import SQLDatabase
from sqlalchemy import create_engine

from deepretrieval_trainer.rewriting.serve import load_adapter
from deepretrieval_trainer.sql.schema import describe
from deepretrieval_trainer.sql.spider import load_sql_examples
from deepretrieval_trainer.sql.sqlite import SQLiteDatabase
from deepretrieval_trainer.sql.train import train_sql
from deepretrieval_trainer.sql.writer import SQLWriter
from deepretrieval_trainer.training.config import TrainConfig
from haystack_deepretrieval import DeepRetrievalSQLWriter, ReadOnlySQLQuery
from llamaindex_deepretrieval import DeepRetrievalSQLRetriever
from tests.conftest import collection_path
from tests.trainer.sql.conftest import spider_db, writable_copy  # noqa: F401 - writable_copy is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
SQL_NAME = "deepretrieval-sql-test"
QUESTIONS = ["How many singers do we have?", "What is the average age of all singers?"]


@pytest.fixture(scope="module")
def sql_server(vllm_server, tmp_path_factory):
    run = tmp_path_factory.mktemp("sql") / "run"
    config = TrainConfig(task="sql", run_dir=str(run), max_steps=2, save_steps=2, prompts_per_step=1,
                         num_generations=2, max_completion_length=32, max_queries=4, torch_threads=1)
    adapter = train_sql(load_sql_examples(collection_path("spider"), "train"), config)
    load_adapter(vllm_server.base_url, SQL_NAME, adapter, replace=False)
    return vllm_server


def test_the_served_sql_adapter_answers_through_the_core_writer(sql_server):
    schema = describe(SQLiteDatabase(spider_db("concert_singer")))
    with SQLWriter.server(SQL_NAME, base_url=sql_server.base_url, max_tokens=96) as writer:
        answers = writer.write([(q, schema) for q in QUESTIONS])
    assert all(a.completion or a.reason for a in answers)
    assert not any(a.reason and a.reason.startswith("backend error") for a in answers), [a.reason for a in answers]


async def test_llamaindex_and_haystack_with_the_server(sql_server, writable_copy):
    path = writable_copy("concert_singer")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    retriever = DeepRetrievalSQLRetriever(sql_database=SQLDatabase(create_engine(f"sqlite:///{path}")),
                                          writer=SQLWriter.server(SQL_NAME, base_url=sql_server.base_url))
    for question in QUESTIONS:
        nodes, metadata = await retriever.aretrieve_with_metadata(question)
        assert nodes and ("error" not in metadata or not metadata["error"].startswith("backend error"))
    pipeline = Pipeline()
    pipeline.add_component("writer", DeepRetrievalSQLWriter(backend="openai", model=SQL_NAME,
                                                            base_url=sql_server.base_url, database=str(path)))
    pipeline.add_component("runner", ReadOnlySQLQuery(database=str(path)))
    pipeline.connect("writer.sql", "runner.sql")
    loaded = Pipeline.loads(pipeline.dumps())
    result = loaded.run({"writer": {"question": QUESTIONS[0]}}, include_outputs_from={"writer"})
    meta = result["writer"]["meta"]
    assert meta["ok"] or not meta["reason"].startswith("backend error"), meta
    if result["writer"]["sql"] is None:
        assert "no SQL to run" in result["runner"]["error"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
