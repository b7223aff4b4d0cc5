import json
from collections import Counter

import pytest

from deepretrieval_trainer.common.errors import ConfigError, DataError
from deepretrieval_trainer.sql.hardness import components, hardness
from deepretrieval_trainer.sql.spider import load_sql_examples
from deepretrieval_trainer.training.config import TrainConfig

# The four examples of Spider's README (https://yale-lily.github.io/spider), one per level, and the counts behind them.
SPIDER_README = [
    ("SELECT COUNT(*) FROM cars_data WHERE cylinders > 4", "easy", (1, 0, 0)),
    ("SELECT T2.name, COUNT(*) FROM concert AS T1 JOIN stadium AS T2 ON T1.stadium_id = T2.stadium_id "
     "GROUP BY T1.stadium_id", "medium", (2, 0, 1)),
    ("SELECT T2.name, T2.capacity FROM concert AS T1 JOIN stadium AS T2 ON T1.stadium_id = T2.stadium_id "
     "WHERE T1.year >= 2014 GROUP BY T2.stadium_id ORDER BY COUNT(*) DESC LIMIT 1", "extra", (5, 0, 1)),
]


@pytest.mark.parametrize(("sql", "level", "counts"), SPIDER_README)
def test_spider_readme_examples(sql, level, counts):
    assert hardness(sql) == level
    c = components(sql)
    assert (c.component1, c.component2, c.others) == counts


@pytest.mark.parametrize(("sql", "counts", "level"), [
    ("SELECT count(*) FROM singer", (0, 0, 0), "easy"),
    # OR and LIKE count as components; two WHERE conditions count once in "others"
    ("SELECT name FROM singer WHERE country = 'France' OR name LIKE 'A%'", (3, 0, 1), "hard"),
    ("SELECT name FROM singer WHERE country = 'France' AND age > 30", (1, 0, 1), "medium"),
    # a subquery in a condition is nested; what is inside it is not counted at the outer level
    ("SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer WHERE country = 'France')", (1, 1, 0), "hard"),
    ("SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM singer_in_concert)", (1, 1, 0), "hard"),
    ("SELECT name FROM a UNION SELECT name FROM b", (0, 1, 0), "hard"),
    ("SELECT name FROM a INTERSECT SELECT name FROM b WHERE x = 1", (0, 1, 0), "hard"),
    # two aggregates and two selected columns: two "others"
    ("SELECT avg(age), max(age) FROM singer", (0, 0, 2), "medium"),
    ("SELECT avg(age), max(age), country FROM singer WHERE age > 1 AND age < 9 GROUP BY country, name", (2, 0, 4),
     "hard"),
    ("SELECT a FROM t WHERE x IN (SELECT x FROM u) AND y IN (SELECT y FROM v) ORDER BY a", (2, 2, 1), "extra"),
])
def test_counts_and_levels(sql, counts, level):
    c = components(sql)
    assert (c.component1, c.component2, c.others) == counts
    assert hardness(sql) == level


def test_not_a_query():
    with pytest.raises(ValueError, match="not a SELECT"):
        hardness("DELETE FROM singer")


def test_curriculum_filter_on_spider(spider_dir):
    train = load_sql_examples(spider_dir, "train")
    levels = Counter(hardness(e.gold_sql) for e in train.examples)
    assert sum(levels.values()) == 510 and set(levels) == {"easy", "medium", "hard", "extra"}
    easy = load_sql_examples(spider_dir, "train", max_hardness="easy")
    medium = load_sql_examples(spider_dir, "train", max_hardness="medium")
    assert len(easy.examples) == levels["easy"]
    assert len(medium.examples) == levels["easy"] + levels["medium"]
    assert {hardness(e.gold_sql) for e in easy.examples} == {"easy"}
    assert easy.meta == {"max_hardness": "easy"} and easy.fingerprint != train.fingerprint  # resume sees the change
    assert len(load_sql_examples(spider_dir, "train", max_hardness="extra").examples) == 510


def test_curriculum_errors(spider_dir, tmp_path):
    with pytest.raises(DataError, match="choose one of"):
        load_sql_examples(spider_dir, "train", max_hardness="trivial")
    (tmp_path / "examples.jsonl").write_text(json.dumps({"db_id": "x", "question": "q?", "result": [[1]]}) + "\n")
    with pytest.raises(DataError, match="needs a gold 'query' to grade"):
        load_sql_examples(tmp_path, "all", max_hardness="easy")
    with pytest.raises(ConfigError, match="data.max_hardness='hardest' is not supported"):
        TrainConfig(task="sql", data={"max_hardness": "hardest"})
    with pytest.raises(ConfigError, match="applies to task 'sql', not 'retrieval'"):
        TrainConfig(task="retrieval", data={"max_hardness": "easy"})
