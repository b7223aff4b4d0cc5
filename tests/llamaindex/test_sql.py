"""DeepRetrievalSQLRetriever / DeepRetrievalSQLQueryEngine over a real llama_index SQLDatabase (Spider's SQLite files,
and a real PostgreSQL server), with a scripted backend through the real parse/check path: rows come back the way
NLSQLRetriever's SQLRetriever returns them; a bad generation is a "No answer" node with the reason, never an
exception (unless strict); a hostile statement never changes the database."""

from __future__ import annotations

import hashlib

import pytest
from llama_index.core import SQLDatabase
from llama_index.core.indices.struct_store.sql_retriever import SQLRetriever
from sqlalchemy import create_engine

from deepretrieval_trainer.rewriting.rewriters import RewriteError
from deepretrieval_trainer.sql.writer import SQLWriter
from llamaindex_deepretrieval import DeepRetrievalSQLQueryEngine, DeepRetrievalSQLRetriever
from tests.conftest import ScriptedRewriter
from tests.postgres_fixtures import copy_sqlite
from tests.trainer.sql.conftest import spider_db, writable_copy  # noqa: F401 - writable_copy is a fixture
from tests.trainer.sql.test_single_call_limits import entry_point_attacks

SQL = "SELECT Name, Age FROM singer WHERE Age > 30 ORDER BY Age"


def scripted(sql: str) -> SQLWriter:
    return SQLWriter(backend=ScriptedRewriter(f"the singer table</think>\n<answer>{sql}</answer>"))


@pytest.fixture
def concert(writable_copy):
    path = writable_copy("concert_singer")
    return path, SQLDatabase(create_engine(f"sqlite:///{path}"))


def test_rows_come_back_as_nlsqlretriever_returns_them(concert):
    _, sql_database = concert
    retriever = DeepRetrievalSQLRetriever(sql_database=sql_database, writer=scripted(SQL))
    nodes, metadata = retriever.retrieve_with_metadata("Which singers are older than 30, youngest first?")
    reference_nodes, reference = SQLRetriever(sql_database).retrieve_with_metadata(SQL)
    assert metadata["sql_query"] == SQL and metadata["col_keys"] == reference["col_keys"]
    assert metadata["result"] == [tuple(r) for r in reference["result"]]
    assert nodes[0].node.text == reference_nodes[0].node.text
    rows = DeepRetrievalSQLRetriever(sql_database=sql_database, writer=scripted(SQL), return_raw=False).retrieve("q")
    assert [n.node.metadata for n in rows] == [dict(zip(reference["col_keys"], r)) for r in reference["result"]]
    writer = retriever.writer.backend
    assert "singer_in_concert(" in writer.calls[0][0][-1]["content"]  # the prompt carries the schema


async def test_async_path(concert):
    _, sql_database = concert
    retriever = DeepRetrievalSQLRetriever(sql_database=sql_database, writer=scripted("SELECT count(*) FROM singer"))
    nodes = await retriever.aretrieve("How many singers do we have?")
    assert nodes[0].node.metadata["result"] == [(6,)]


@pytest.mark.parametrize("completion, reason", [
    ("no tags at all", "no <answer> tag"),
    ("x</think><answer>SELECT nope FROM singer</answer>", "error: OperationalError: no such column: nope"),
    ("x</think><answer>DROP TABLE singer</answer>", "refused: only read queries"),
])
def test_bad_generations_give_a_no_answer_node(concert, completion, reason, caplog):
    path, sql_database = concert
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    writer = SQLWriter(backend=ScriptedRewriter(completion))
    nodes, metadata = DeepRetrievalSQLRetriever(sql_database=sql_database, writer=writer).retrieve_with_metadata("q")
    assert len(nodes) == 1 and nodes[0].node.text.startswith("No answer: ") and reason in metadata["error"]
    assert "no SQL answer" in caplog.text
    strict = DeepRetrievalSQLRetriever(sql_database=sql_database, writer=SQLWriter(backend=ScriptedRewriter(completion)),
                                       strict=True)
    with pytest.raises(RewriteError, match="no SQL"):
        strict.retrieve("q")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_query_engine_returns_the_rows_and_the_sql(concert):
    _, sql_database = concert
    retriever = DeepRetrievalSQLRetriever(sql_database=sql_database, writer=scripted("SELECT count(*) FROM singer"))
    response = DeepRetrievalSQLQueryEngine(retriever=retriever).query("How many singers do we have?")
    assert response.response == "[(6,)]" and response.metadata["sql_query"] == "SELECT count(*) FROM singer"


def test_postgres_sqldatabase(postgres_server):
    copy_sqlite(postgres_server, spider_db("pets_1"), "llama_pets")
    sql_database = SQLDatabase(create_engine(postgres_server.url("llama_pets")))
    retriever = DeepRetrievalSQLRetriever(sql_database=sql_database, writer=scripted("SELECT count(*) FROM student"))
    assert retriever.writer.dialect == "postgres" and "Database: llama_pets (postgres)" in retriever.schema
    assert retriever.retrieve_with_metadata("How many students are there?")[1]["result"] == [(34,)]
    hostile = DeepRetrievalSQLRetriever(sql_database=sql_database, writer=scripted("DELETE FROM student"))
    assert "refused" in hostile.retrieve_with_metadata("q")[1]["error"]
    assert retriever.retrieve_with_metadata("again")[1]["result"] == [(34,)]


def test_single_statement_attacks_give_a_no_answer_node_within_the_limits():
    """A value, result or search past the limits (tests/trainer/sql/test_single_call_limits.py) through the retriever:
    a "No answer" node naming the limit, in bounded time and memory, on SQLite."""
    entry_point_attacks("llamaindex", str(spider_db("concert_singer")), "sqlite")


def test_single_statement_attacks_on_postgres(postgres_server):
    copy_sqlite(postgres_server, spider_db("concert_singer"), "llama_limits")
    entry_point_attacks("llamaindex", postgres_server.url("llama_limits"), "postgres")


def test_the_result_byte_cap_is_a_parameter(concert):
    _, sql_database = concert
    retriever = DeepRetrievalSQLRetriever(sql_database=sql_database, writer=scripted("SELECT Name FROM singer"),
                                          max_bytes=40)
    assert "result too large" in retriever.retrieve_with_metadata("q")[1]["error"]
    with pytest.raises(ValueError, match="max_bytes=0 must be a positive integer"):
        DeepRetrievalSQLRetriever(sql_database=sql_database, writer=scripted(SQL), max_bytes=0)


def test_wrong_arguments_name_the_fix(concert):
    _, sql_database = concert
    with pytest.raises(TypeError, match="SQLWriter"):
        DeepRetrievalSQLRetriever(sql_database=sql_database, writer=ScriptedRewriter())


@pytest.mark.slow
def test_embedded_model_end_to_end(concert):
    import torch

    torch.set_num_threads(1)
    _, sql_database = concert
    retriever = DeepRetrievalSQLRetriever(sql_database=sql_database, writer=SQLWriter.local(max_new_tokens=96))
    nodes, metadata = retriever.retrieve_with_metadata("How many singers do we have?")
    assert metadata["sql_query"] is not None or metadata["error"]  # a real answer, or a reason: never an exception
    assert nodes and isinstance(nodes[0].node.text, str)
