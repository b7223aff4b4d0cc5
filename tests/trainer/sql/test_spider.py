import json

import pytest

from deepretrieval_trainer.common.errors import DataError
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


def test_drop_table_counts_on_spider(spider_dir):
    import re

    easy = load_sql_examples(spider_dir, "train", max_hardness="easy")
    kept = load_sql_examples(spider_dir, "train", max_hardness="easy", drop_table_counts=True)
    bare = re.compile(r"select\s+count\(\*\)\s+from\s+\w+\s*;?", re.I)
    assert (len(easy.examples), len(kept.examples)) == (130, 106)
    assert kept.meta == {"max_hardness": "easy", "dropped_table_counts": 24}
    assert kept.fingerprint != easy.fingerprint  # a resumed run sees the change
    assert not any(bare.fullmatch(e.gold_sql.strip()) for e in kept.examples)
    assert sum(bool(bare.fullmatch(e.gold_sql.strip())) for e in easy.examples) == 22  # +2 whose result is a count
    # a count with a condition is a different answer, and stays
    assert any(re.match(r"select\s+count\(\*\).*\bwhere\b", e.gold_sql, re.I | re.S) for e in kept.examples)


def test_drop_table_counts_rows_reference_and_errors(tmp_path):
    import sqlite3

    from deepretrieval_trainer.common.errors import ConfigError
    from deepretrieval_trainer.training.config import TrainConfig

    (tmp_path / "database" / "shop").mkdir(parents=True)
    with sqlite3.connect(tmp_path / "database" / "shop" / "shop.sqlite") as db:
        db.executescript("CREATE TABLE item (id INTEGER, name TEXT);"
                         "INSERT INTO item VALUES (1, 'a'), (2, 'b'), (3, 'c');"
                         "CREATE TABLE tag (id INTEGER); INSERT INTO tag VALUES (7);")
    rows = [{"db_id": "shop", "question": "How many items?", "result": [[3]]},  # no id here nor on the 3rd
            {"id": "t", "db_id": "shop", "question": "How many tags?", "query": "SELECT count(*) FROM tag"},
            {"db_id": "shop", "question": "Items after 1?",
             "query": "SELECT count(*) FROM item WHERE id > 1"},
            {"id": "s", "db_id": "shop", "question": "Names?", "query": "SELECT name FROM item"}]
    (tmp_path / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = load_sql_examples(tmp_path, "all", drop_table_counts=True)
    assert [e.question for e in kept.examples] == ["Items after 1?", "Names?"]
    assert kept.meta["dropped_table_counts"] == 2
    (tmp_path / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    with pytest.raises(DataError, match="drop_table_counts leaves none"):
        load_sql_examples(tmp_path, "all", drop_table_counts=True)
    (tmp_path / "examples.jsonl").write_text(json.dumps({**rows[3], "query": "SELECT nope FROM item"}) + "\n")
    with pytest.raises(DataError, match="example s \\(shop\\): the gold query fails"):
        load_sql_examples(tmp_path, "all", drop_table_counts=True)
    with pytest.raises(ConfigError, match="applies to task 'sql'"):
        TrainConfig(task="retrieval", data={"drop_table_counts": True})


def test_uninformative_answers_on_spider_and_on_rows(spider_dir, tmp_path):
    import sqlite3

    from deepretrieval_trainer.sql.spider import uninformative_answers

    # flight_2 pads its codes and cities with a space, so 10 of its 26 easy gold queries find nothing (or count 0)
    flights = load_sql_examples(spider_dir, "train", databases=["flight_2"], max_hardness="easy")
    blind = uninformative_answers(flights.examples, flights.databases)
    assert (len(blind), sum(blind)) == (26, 10)
    assert all(('"APG"' in e.gold_sql or '"ATO"' in e.gold_sql or '"Aberdeen"' in e.gold_sql)
               for e, b in zip(flights.examples, blind) if b)
    kept = load_sql_examples(spider_dir, "train", databases=["flight_2"], max_hardness="easy",
                             drop_uninformative=True)
    assert len(kept.examples) == 16 and kept.meta["dropped_uninformative"] == 10
    assert kept.fingerprint != flights.fingerprint
    assert not any(uninformative_answers(kept.examples, kept.databases))
    (tmp_path / "database" / "shop").mkdir(parents=True)
    with sqlite3.connect(tmp_path / "database" / "shop" / "shop.sqlite") as db:
        db.executescript("CREATE TABLE item (id INTEGER, price REAL); INSERT INTO item VALUES (1, 0), (2, NULL);")
    rows = [{"db_id": "shop", "question": "Items over 5?", "query": "SELECT id FROM item WHERE id > 5"},  # no rows
            {"db_id": "shop", "question": "How many over 5?", "query": "SELECT count(*) FROM item WHERE id > 5"},
            {"db_id": "shop", "question": "Price and note of 2?", "result": [[None, 0]]},
            {"db_id": "shop", "question": "Price of 1?", "query": "SELECT price FROM item WHERE id = 1"},  # 0: blind
            {"id": "k", "db_id": "shop", "question": "How many?", "query": "SELECT count(*) FROM item"},
            {"db_id": "shop", "question": "Zero rows of two?", "result": [[0], [0]]}]  # two rows: informative
    (tmp_path / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = load_sql_examples(tmp_path, "all", drop_uninformative=True)
    assert [e.question for e in kept.examples] == ["How many?", "Zero rows of two?"]
    (tmp_path / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    with pytest.raises(DataError, match="drop_uninformative leaves none"):
        load_sql_examples(tmp_path, "all", drop_uninformative=True)


def test_validation_databases_are_kept_out_of_training(spider_dir):
    from deepretrieval_trainer.commands.train import overrides
    from deepretrieval_trainer.common.errors import ConfigError
    from deepretrieval_trainer.sql.train import training_collection, validation_collection
    from deepretrieval_trainer.training.config import TrainConfig

    config = TrainConfig(task="sql", data={"path": str(spider_dir), "max_hardness": "easy",
                                           "validation_databases": ["flight_2", "network_1"]})
    train, validation = training_collection(config), validation_collection(config)
    assert set(train.databases) == set(TRAIN_DATABASES) - {"flight_2", "network_1"}
    assert set(validation.databases) == {"flight_2", "network_1"}
    assert len(train.examples) == 130 - 26 - 12  # the easy ones, as trained
    # validation: the easy ones too, less the 10 of flight_2 whose gold finds nothing (any empty guess would match)
    assert len(validation.examples) == 26 - 10 + 12 and validation.meta["dropped_uninformative"] == 10
    assert train.meta["excluded_databases"] == ["flight_2", "network_1"]
    assert train.fingerprint != training_collection(TrainConfig(task="sql", data={
        "path": str(spider_dir), "max_hardness": "easy"})).fingerprint  # a resumed run sees the change
    with pytest.raises(DataError, match=r"exclude_databases \['pets_1'\]: not databases of split 'train'"):
        load_sql_examples(spider_dir, "train", exclude_databases=["pets_1"])
    with pytest.raises(DataError, match="no examples"):
        load_sql_examples(spider_dir, "train", exclude_databases=TRAIN_DATABASES)
    with pytest.raises(ConfigError, match=r"validation_databases \['pets_1'\] are not databases of split 'train'"):
        validation_collection(TrainConfig(task="sql", data={"path": str(spider_dir),
                                                            "validation_databases": ["pets_1"]}))
    with pytest.raises(ConfigError, match="no validation databases"):
        validation_collection(TrainConfig(task="sql", data={"path": str(spider_dir)}))
    with pytest.raises(ConfigError, match="applies to task 'sql'"):
        TrainConfig(task="retrieval", data={"validation_databases": ["flight_2"]})
    # the CLI flag takes a YAML list, as the YAML file's data: {validation_databases: [...]} does
    import argparse

    from deepretrieval_trainer.commands.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--task", "sql", "--data-validation-databases", "[flight_2, network_1]"])
    assert overrides(args)["data"] == {"validation_databases": ["flight_2", "network_1"]}
