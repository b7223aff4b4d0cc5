"""DeepRetrievalSQLWriter + ReadOnlySQLQuery: every init parameter round-trips through to_dict/from_dict and pipeline
YAML (secrets as env-var references only); a pipeline runs question -> SQL -> rows on Spider's real SQLite files and
a real PostgreSQL server; bad or hostile generations give no rows and a reason, never an exception (unless strict)."""

from __future__ import annotations

import hashlib
import os

import pytest
from haystack import Pipeline
from haystack.core.errors import SerializationError
from haystack.utils import Secret

from deepretrieval_trainer.rewriting.rewriters import RewriteError
from deepretrieval_trainer.sql.writer import SQLWriter
from haystack_deepretrieval import DeepRetrievalSQLWriter, ReadOnlySQLQuery
from tests.conftest import ScriptedRewriter
from tests.postgres_fixtures import copy_sqlite
from tests.trainer.sql.conftest import spider_db, writable_copy  # noqa: F401 - writable_copy is a fixture
from tests.trainer.sql.test_single_call_limits import entry_point_attacks

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

WRITER = {"backend": "openai", "model": "sql-adapter", "adapter": None, "base_url": "http://127.0.0.1:8011/v1",
          "api_key": Secret.from_env_var("MY_KEY", strict=False), "database": "/data/db.sqlite",
          "password": Secret.from_env_var("MY_DB_PASSWORD", strict=False), "dialect": "postgres", "sample_values": 3,
          "max_tokens": 77, "temperature": 0.3, "timeout": 12.5, "max_retries": 5, "device": "cpu", "strict": True}
RUNNER = {"database": "postgresql+psycopg://reader@db.internal:5433/shop",
          "password": Secret.from_env_var("MY_DB_PASSWORD", strict=False), "timeout_s": 3.5, "max_rows": 77,
          "max_bytes": 4096, "strict": True}


def _params(component) -> dict:
    return component.to_dict()["init_parameters"]


def test_every_parameter_round_trips():
    for cls, values in ((DeepRetrievalSQLWriter, WRITER), (ReadOnlySQLQuery, RUNNER)):
        component = cls(**values)
        data = component.to_dict()
        assert set(data["init_parameters"]) == set(values)
        restored = cls.from_dict(data)
        assert _params(restored) == data["init_parameters"]
        for name, value in values.items():
            restored_value = getattr(restored, name)
            assert (restored_value.to_dict() if isinstance(value, Secret) else restored_value) == \
                (value.to_dict() if isinstance(value, Secret) else value), name


def test_passwords_never_go_into_the_yaml():
    with pytest.raises(ValueError, match="holds a password"):
        ReadOnlySQLQuery(database="postgresql+psycopg://reader:hunter2@db/shop")
    with pytest.raises(SerializationError, match="cannot be serialized"):
        DeepRetrievalSQLWriter.from_writer(SQLWriter(backend=ScriptedRewriter())).to_dict()


KEY = "sk-live-0123456789abcdef"
CLEAR = {"a plain string": KEY, "a token secret": {"type": "token", "token": KEY, "strict": False}}
SECRETS = {"writer api_key": (DeepRetrievalSQLWriter, {"backend": "openai", "model": "m"}, "api_key"),
           "writer password": (DeepRetrievalSQLWriter, {"backend": "openai", "model": "m"}, "password"),
           "runner password": (ReadOnlySQLQuery, {"database": "postgresql+psycopg://reader@db/shop"}, "password")}


@pytest.mark.parametrize("form", CLEAR.values(), ids=CLEAR.keys())
@pytest.mark.parametrize("secret", SECRETS)
def test_a_clear_secret_in_pipeline_yaml_is_refused_and_never_repeated(secret, form, caplog):
    """As the other components do (tests/haystack/test_secrets.py): the loader's error names the fix, not the key."""
    import logging

    import yaml
    from haystack.core.errors import DeserializationError

    caplog.set_level(logging.DEBUG)
    cls, values, key = SECRETS[secret]
    pipeline = Pipeline()
    pipeline.add_component("c", cls(**values))
    data = pipeline.to_dict()
    data["components"]["c"]["init_parameters"][key] = form
    text = yaml.safe_dump(data)
    assert KEY in text
    with pytest.raises(DeserializationError) as caught:
        Pipeline.loads(text)
    message = str(caught.value) + str(caught.value.__cause__)
    assert KEY not in message, message
    assert "env_var" in message and "clear text" in message and repr(key) in message
    assert all(KEY not in record.getMessage() for record in caplog.records)


def _pipeline(writer: DeepRetrievalSQLWriter, database: str) -> Pipeline:
    pipeline = Pipeline()
    pipeline.add_component("writer", writer)
    pipeline.add_component("runner", ReadOnlySQLQuery(database=database))
    pipeline.connect("writer.sql", "runner.sql")
    return pipeline


def test_pipeline_yaml_round_trip_keeps_both_components():
    pipeline = _pipeline(DeepRetrievalSQLWriter(**{**WRITER, "strict": False}), RUNNER["database"])
    loaded = Pipeline.loads(pipeline.dumps())
    assert _params(loaded.get_component("writer")) == _params(pipeline.get_component("writer"))
    assert _params(loaded.get_component("runner")) == _params(pipeline.get_component("runner"))
    assert loaded.dumps() == pipeline.dumps()


def _answer(sql: str) -> str:
    return f"x</think>\n<answer>{sql}</answer>"


def _scripted(completion: str, database: str) -> DeepRetrievalSQLWriter:
    return DeepRetrievalSQLWriter.from_writer(SQLWriter(backend=ScriptedRewriter(completion)), database=database)


def test_question_to_rows_on_sqlite(writable_copy):
    path = str(writable_copy("concert_singer"))
    pipeline = _pipeline(_scripted(_answer("SELECT Name FROM singer WHERE Age > 40 ORDER BY Name"), path), path)
    result = pipeline.run({"writer": {"question": "Who is older than 40?"}}, include_outputs_from={"writer"})
    assert result["runner"] == {"rows": [["Joe Sharp"], ["John Nizinik"], ["Rose White"]], "columns": ["Name"], "error": None}
    assert result["writer"]["meta"]["ok"] and "Database: concert_singer" in \
        pipeline.get_component("writer")._writer.backend.calls[0][0][-1]["content"]


@pytest.mark.parametrize("completion, reason", [
    ("garbage without tags", "no SQL to run"),
    (_answer("DELETE FROM singer"), "refused: only read queries"),
    (_answer("SELECT * FROM singer AS a, singer AS b, singer AS c, singer AS d, singer AS e, singer AS f"),
     "too_many_rows"),
])
def test_no_rows_and_a_reason(writable_copy, completion, reason):
    path = writable_copy("concert_singer")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    pipeline = _pipeline(_scripted(completion, str(path)), str(path))
    result = pipeline.run({"writer": {"question": "q"}}, include_outputs_from={"writer"})
    assert result["runner"]["rows"] == [] and result["runner"]["error"]
    assert reason in f"{result['writer']['meta']['reason']} {result['runner']['error']}"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with pytest.raises(RewriteError, match="ReadOnlySQLQuery"):
        ReadOnlySQLQuery(database=str(path), strict=True).run(sql="DELETE FROM singer")


def test_single_statement_attacks_give_no_rows_and_a_reason_within_the_limits(postgres_server):
    """A value, result or search past the limits (tests/trainer/sql/test_single_call_limits.py) through
    ReadOnlySQLQuery: no rows and an error naming the limit, in bounded time and memory, on both engines."""
    entry_point_attacks("haystack", str(spider_db("concert_singer")), "sqlite")
    copy_sqlite(postgres_server, spider_db("concert_singer"), "haystack_limits")
    entry_point_attacks("haystack", postgres_server.url("haystack_limits"), "postgres")


def test_the_result_byte_cap(writable_copy):
    path = str(writable_copy("concert_singer"))
    output = ReadOnlySQLQuery(database=path, max_bytes=40).run(sql="SELECT Name FROM singer")
    assert output["rows"] == [] and "result too large" in output["error"] and "limit 40 bytes" in output["error"]
    with pytest.raises(ValueError, match="max_bytes=0 must be a positive integer"):
        ReadOnlySQLQuery(database=path, max_bytes=0)


def test_postgres_runner_with_the_password_as_a_secret(postgres_server, monkeypatch):
    copy_sqlite(postgres_server, spider_db("poker_player"), "haystack_poker")
    with postgres_server.admin("haystack_poker") as admin:
        admin.execute("CREATE ROLE haystack_reader LOGIN PASSWORD 'reader-secret'")
        admin.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO haystack_reader")
    monkeypatch.setenv("DEEPRETRIEVAL_SQL_PASSWORD", "reader-secret")
    url = postgres_server.url("haystack_poker", user="haystack_reader")
    pipeline = _pipeline(_scripted(_answer("SELECT count(*) FROM poker_player"), url), url)
    runner_yaml = pipeline.get_component("runner").to_dict()
    assert "reader-secret" not in str(runner_yaml)  # the password stays an env-var reference
    assert ReadOnlySQLQuery.from_dict(runner_yaml).run(sql="SELECT count(*) FROM poker_player")["rows"] == [[5]]
    assert pipeline.run({"writer": {"question": "How many poker players are there?"}})["runner"]["rows"] == [[5]]


@pytest.mark.slow
def test_yaml_pipeline_with_the_embedded_model(writable_copy):
    import torch

    torch.set_num_threads(1)
    path = str(writable_copy("concert_singer"))
    pipeline = Pipeline.loads(_pipeline(DeepRetrievalSQLWriter(database=path, max_tokens=96), path).dumps())
    result = pipeline.run({"writer": {"question": "How many singers do we have?"}}, include_outputs_from={"writer"})
    meta = result["writer"]["meta"]
    assert meta["ok"] or meta["reason"]  # a real model: an answer, or a reason, never an exception
    assert result["runner"]["error"] is None or result["runner"]["rows"] == []
