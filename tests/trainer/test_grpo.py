"""GRPO training: bad input fails before any model loads; short real runs against a real LlamaIndex BM25 retriever
and a real Haystack retriever write rewards, checkpoints and a peft adapter the local backend loads, and resume."""

from __future__ import annotations

import json

import pytest

from deepretrieval_trainer.common.errors import ConfigError, DataError
from deepretrieval_trainer.retrieval.bm25 import BM25Search
from deepretrieval_trainer.rewriting.card import read_card
from deepretrieval_trainer.rewriting.rewriters import LocalRewriter
from deepretrieval_trainer.training.config import TrainConfig
from deepretrieval_trainer.training.retrieval import train

NO_MODEL = "/nonexistent/model"  # loading this would raise OSError: seeing our error proves nothing loaded


def tiny(run_dir, **values) -> TrainConfig:
    base = dict(run_dir=str(run_dir), max_steps=2, save_steps=1, prompts_per_step=1, num_generations=2,
                max_completion_length=32, max_queries=4, torch_threads=1, learning_rate=1e-4)
    return TrainConfig(**{**base, **values})


class BrokenSearch:
    def search(self, queries, k):
        raise ConnectionError("index server down")

    async def asearch(self, queries, k):
        raise ConnectionError("index server down")


def test_bad_data_and_retriever_fail_before_the_model_loads(tmp_path, adi_test):
    search = BM25Search(adi_test.corpus)
    config = tiny(tmp_path / "run", model=NO_MODEL)
    with pytest.raises(DataError, match="'qrels' must be a non-empty"):
        train(search, [{"query": "q", "qrels": {}}], config)
    with pytest.raises(DataError, match="'query' must be non-empty"):
        train(search, [{"query": "  ", "qrels": {"1": 1}}], config)
    with pytest.raises(DataError, match="no training query has a relevant document"):
        train(search, [{"query": "q", "qrels": {"1": 0}}], config)
    with pytest.raises(DataError, match="pass a Collection"):
        train(search, "adi/test", config)
    with pytest.raises(ConfigError, match="without a search"):
        train(object(), adi_test, config)
    with pytest.raises(ConnectionError, match="index server down"):
        train(BrokenSearch(), adi_test, config)
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    with pytest.raises(ConfigError, match="resume=True"):
        train(search, adi_test, config)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_batch_must_split_over_processes(tmp_path, adi_test, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="multiple of 3"):
        train(BM25Search(adi_test.corpus), adi_test, tiny(tmp_path / "run", model=NO_MODEL))


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _check_adapter(adapter, adi_test):
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    rewriter = LocalRewriter(adapter=adapter, max_new_tokens=32)
    [result] = rewriter.rewrite([next(iter(adi_test.judged_queries.values()))])
    assert isinstance(result.query, str) and result.query


def test_max_raw_reward_keeps_only_queries_the_raw_query_does_not_already_solve(tmp_path, adi_test):
    from deepretrieval_trainer.retrieval.metrics import ndcg_at_k
    from deepretrieval_trainer.rewriting.tasks import get_task
    from deepretrieval_trainer.training.retrieval import headroom_rows, training_rows

    search = BM25Search(adi_test.corpus)
    rows = training_rows(adi_test)
    task = get_task("retrieval")
    k = task.reward_k
    raw = {r.query_id: ndcg_at_k(search.search([r.query_text], k)[0], r.qrels, k) for r in rows}
    assert min(raw.values()) < 0.5 < max(raw.values())  # ADI has both: the filter must split them
    assert headroom_rows(search, rows, tiny(tmp_path), task) == rows  # None: every query
    kept = headroom_rows(search, rows, tiny(tmp_path, max_raw_reward=0.5), task)
    assert {r.query_id for r in kept} == {q for q, v in raw.items() if v < 0.5}
    with pytest.raises(DataError, match="leaves no training query.*raise max_raw_reward"):
        headroom_rows(search, rows, tiny(tmp_path, max_raw_reward=0.0), task)  # nothing scores below 0
    with pytest.raises(ConfigError, match="does not apply to task 'sql'"):
        tiny(tmp_path, task="sql", max_raw_reward=0.5)
    # training applies it before anything loads: an impossible threshold fails with the data error, not the model's
    with pytest.raises(DataError, match="leaves no training query"):
        train(search, adi_test, tiny(tmp_path / "run", model=NO_MODEL, max_raw_reward=0.0))


def test_max_raw_reward_keeps_a_query_the_engine_rejects_without_searching_it(tmp_path, adi_test, monkeypatch):
    from deepretrieval_trainer.literature.fts5 import FTS5Search
    from deepretrieval_trainer.rewriting.tasks import get_task
    from deepretrieval_trainer.training.retrieval import headroom_rows, training_rows

    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(tmp_path / "cache"))
    engine = FTS5Search(adi_test.corpus)  # malformed="raise": searching the bad query would raise
    qid, qrels = next(iter(adi_test.qrels.items()))
    rows = training_rows([{"query": "(indexing AND", "qrels": qrels}, {"query": adi_test.queries[qid], "qrels": qrels}])
    kept = headroom_rows(engine, rows, tiny(tmp_path, max_raw_reward=1.0), get_task("retrieval"))
    assert rows[0] in kept  # scored 0, so kept: the rewrite may still find something


@pytest.mark.slow
def test_llamaindex_bm25_run_writes_adapter_and_resumes(tmp_path, adi_test, data_dir):
    import llamaindex_deepretrieval
    from llamaindex_deepretrieval import LlamaIndexSearch

    assert llamaindex_deepretrieval.train is train
    search = LlamaIndexSearch.from_beir(data_dir / "adi")
    run_dir = tmp_path / "run"
    adapter = llamaindex_deepretrieval.train(search, adi_test, tiny(run_dir))
    assert adapter == run_dir / "adapter"
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("rewards/format/mean", "rewards/retrieval/mean", "format/valid_rate", "search/time_s",
                "search/cache_hit_rate", "time/generation_s", "time/backward_s", "step_s"):
        assert all(isinstance(r[key], float) for r in rows), key
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["dataset"]["fingerprint"] == adi_test.fingerprint
    assert info["retriever"] == "LlamaIndexSearch" and info["steps"] == 2
    assert (run_dir / "reward_curve.png").stat().st_size > 0 and (run_dir / "config.yaml").is_file()
    assert "vllm serve" in (run_dir / "README.md").read_text()
    assert (run_dir / "checkpoints" / "checkpoint-2").is_dir()
    # the adapter and every checkpoint carry the card: how the adapter was trained, for whoever serves it
    card = read_card(adapter)
    assert (card.task, card.framing, card.retriever, card.base_model) == ("retrieval", "replace", "LlamaIndexSearch",
                                                                          "smollm2-135m-instruct")
    assert read_card(run_dir / "checkpoints" / "checkpoint-1") == card == read_card(run_dir / "checkpoints" /
                                                                                     "checkpoint-2")

    train(search, adi_test, tiny(run_dir, max_steps=3, resume=True))
    state = json.loads((run_dir / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [r["step"] for r in _metrics(run_dir)] == [1, 2, 3]
    _check_adapter(adapter, adi_test)

    # Resuming a finished run trains nothing more (the HF trainer alone would add a step past max_steps) and
    # restores a lost final adapter from the last checkpoint.
    final = (adapter / "adapter_model.safetensors").read_bytes()
    for item in adapter.iterdir():
        item.unlink()
    assert train(search, adi_test, tiny(run_dir, max_steps=3, resume=True)) == adapter
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2, 3]
    assert not (run_dir / "checkpoints" / "checkpoint-4").exists()
    assert (adapter / "adapter_model.safetensors").read_bytes() == final
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["steps"] == 3
    _check_adapter(adapter, adi_test)


class InterruptingSearch:
    """The real Haystack search, but the user hits Ctrl-C during the n-th search call."""

    def __init__(self, search, at_call: int):
        self.inner, self.at_call, self.calls = search, at_call, 0

    def search(self, queries, k):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt
        return self.inner.search(queries, k)

    async def asearch(self, queries, k):
        return self.search(queries, k)


@pytest.mark.slow
def test_haystack_run_survives_ctrl_c_and_resumes(tmp_path, adi_test, data_dir):
    import haystack_deepretrieval
    from haystack_deepretrieval import HaystackSearch

    search = HaystackSearch.from_beir(data_dir / "adi")
    run_dir = tmp_path / "run"
    # call 1: the probe before loading; call 2: step 1's rewards; call 3: step 2's rewards -> Ctrl-C
    adapter = haystack_deepretrieval.train(InterruptingSearch(search, at_call=3), adi_test, tiny(run_dir))
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["steps"] == 1
    assert (adapter / "adapter_model.safetensors").is_file()
    assert _metrics(run_dir)[0]["rewards/retrieval/mean"] is not None

    haystack_deepretrieval.train(search, adi_test, tiny(run_dir, resume=True))
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["steps"] == 2
    _check_adapter(adapter, adi_test)
