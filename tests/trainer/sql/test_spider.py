import json

import pytest

from deepretrieval_trainer.data import DataError
from deepretrieval_trainer.sql.spider import EVAL_DATABASES, TRAIN_DATABASES, load_sql_examples


def test_cross_database_split(spider_dir):
    train, dev = load_sql_examples(spider_dir, "train"), load_sql_examples(spider_dir, "dev")
    assert set(train.databases) == set(TRAIN_DATABASES) and set(dev.databases) == set(EVAL_DATABASES)
    assert not set(train.databases) & set(dev.databases)
    assert (len(train.examples), len(dev.examples)) == (510, 224)
    everything = load_sql_examples(spider_dir, "all")
    assert len(everything.examples) == 734 and len(everything.databases) == 14


def test_named_databases_and_errors(spider_dir, tmp_path):
    assert {e.db_id for e in load_sql_examples(spider_dir, databases=["pets_1"]).examples} == {"pets_1"}
    with pytest.raises(DataError, match="split='test'"):
        load_sql_examples(spider_dir, "test")
    with pytest.raises(DataError, match="no dev_exec.jsonl or examples.jsonl"):
        load_sql_examples(tmp_path)
    (tmp_path / "examples.jsonl").write_text(json.dumps({"db_id": "x", "question": "q?"}) + "\n")
    with pytest.raises(DataError, match=r"examples.jsonl:1: give the reference as 'query'"):
        load_sql_examples(tmp_path, "all")
    (tmp_path / "examples.jsonl").write_text(json.dumps({"db_id": "x", "question": "q?", "query": "SELECT 1"}) + "\n")
    with pytest.raises(DataError, match="x.sqlite: missing"):
        load_sql_examples(tmp_path, "all")
