"""The literature JSONL format: validation, converters from the real collections, the CLI command."""

from __future__ import annotations

import json

import pytest

from deepretrieval_trainer.cli import main
from deepretrieval_trainer.common.errors import DataError
from deepretrieval_trainer.literature.dataset import (
    from_collection,
    load_literature,
    parse_example,
    training_rows,
    write_literature,
)
from deepretrieval_trainer.retrieval.data import load_beir
from deepretrieval_trainer.retrieval.dates import DateRange
from deepretrieval_trainer.rewriting.tasks import get_task

from ...conftest import collection_path


def write_lines(path, *rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_topic_and_pico_rows_load_with_dates(tmp_path):
    file = write_lines(tmp_path / "l.jsonl",
                       {"id": 7, "topic": "aspirin for stroke", "relevant": ["1", 2], "pub_date": "2019-05-01"},
                       {"id": "r2", "P": "adults with AF", "I": "apixaban", "C": "", "O": "stroke",
                        "relevant": ["NCT00412984"], "meta": {"review": "CD1"}})
    first, second = load_literature(file)
    assert (first.id, first.query, first.relevant, first.pub_date) == ("7", {"topic": "aspirin for stroke"}, ("1", "2"),
                                                                       "2019/05/01")
    assert first.date_range == DateRange(end="2019/05/01") and second.date_range is None
    assert second.query == {"P": "adults with AF", "I": "apixaban", "O": "stroke"}
    prompt = get_task("literature").messages(second.query)[-1]["content"]
    assert "Population: adults with AF" in prompt and "Comparison" not in prompt
    assert get_task("literature").messages(first.query)[-1]["content"] == "Topic: aspirin for stroke"
    assert training_rows([first]) == [{"query": {"topic": "aspirin for stroke"}, "qrels": {"1": 1.0, "2": 1.0},
                                       "query_id": "7", "pub_date": "2019/05/01"}]
    assert load_literature(write_lines(tmp_path / "again.jsonl", *[e.to_row() for e in (first, second)])) == [first, second]


@pytest.mark.parametrize("row, problem", [
    ({"topic": "x", "relevant": ["1"]}, "'id' must be non-empty"),
    ({"id": "a", "relevant": ["1"]}, "no query"),
    ({"id": "a", "topic": "  ", "P": "", "relevant": ["1"]}, "no query"),
    ({"id": "a", "topic": "x", "relevant": []}, "'relevant' must be a non-empty list"),
    ({"id": "a", "topic": "x", "relevant": "1"}, "'relevant' must be a non-empty list"),
    ({"id": "a", "topic": "x", "relevant": ["1", None]}, "ids must be non-empty"),
    ({"id": "a", "topic": "x", "relevent": ["1"]}, "unknown keys ['relevent']"),
    ({"id": "a", "topic": 3, "relevant": ["1"]}, "'topic' must be text"),
    ({"id": "a", "topic": "x", "relevant": ["1"], "pub_date": "May 2019"}, "pub_date='May 2019' is not a date"),
    ({"id": "a", "topic": "x", "relevant": ["1"], "pub_date": "2019/02/30"}, "day 30 does not exist"),
    ({"id": "a", "topic": "x", "relevant": ["1"], "meta": []}, "'meta' must be a JSON object"),
])
def test_bad_rows_name_the_problem(row, problem):
    with pytest.raises(DataError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_example(row, "f.jsonl:3")


def test_file_problems_name_the_line(tmp_path):
    with pytest.raises(DataError, match=r"l.jsonl:2: not valid JSON"):
        load_literature(write_lines(tmp_path / "l.jsonl", {"id": "a", "topic": "x", "relevant": ["1"]}, "{oops"))
    with pytest.raises(DataError, match=r"d.jsonl:2: duplicate id 'a'"):
        load_literature(write_lines(tmp_path / "d.jsonl", *[{"id": "a", "topic": "x", "relevant": ["1"]}] * 2))
    with pytest.raises(DataError, match="the file is empty"):
        load_literature(write_lines(tmp_path / "e.jsonl", ""))
    with pytest.raises(DataError, match="no such file"):
        load_literature(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("name, split, count", [("medline", "test", 30), ("scifact", "dev", 158), ("nfcorpus", "dev", 324)])
def test_converts_the_shared_collections(name, split, count, tmp_path):
    collection = load_beir(collection_path(name), split, drop_unknown_docs=True)
    examples = from_collection(collection)
    assert len(examples) == count
    first = examples[0]
    assert first.query == {"topic": collection.queries[first.id]}
    assert set(first.relevant) == {d for d, g in collection.qrels[first.id].items() if g > 0}
    assert write_literature(tmp_path / "x.jsonl", examples) == count
    assert load_literature(tmp_path / "x.jsonl") == examples


def test_cli_convert_and_check(tmp_path, capsys):
    out = tmp_path / "med.jsonl"
    assert main(["literature-data", "convert", str(collection_path("medline")), "--split", "test", "-o", str(out)]) == 0
    assert main(["literature-data", "check", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 30 topics" in printed and "30 topics (0 with PICO fields, 0 with pub_date), 696 relevant ids" in printed
    write_lines(tmp_path / "bad.jsonl", {"id": "a", "topic": "x"})
    assert main(["literature-data", "check", str(tmp_path / "bad.jsonl")]) == 2
    assert "'relevant' must be a non-empty list" in capsys.readouterr().err
