"""Training labels without judgments, through a real retriever (the core's BM25 over ADI): the model-free writer,
the rank window and near-duplicate filter checked against fresh searches, the BEIR-layout folder load_queries and
load_qrels read, what it records, and the faults: nothing kept, a retriever failing halfway, Ctrl-C, a bad folder."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter

import pytest

from deepretrieval_trainer.common.errors import ConfigError, DataError
from deepretrieval_trainer.retrieval.bm25 import BM25Search
from deepretrieval_trainer.retrieval.data import load_corpus, load_qrels, load_queries
from deepretrieval_trainer.retrieval.documents import SourceDocument, sample_documents
from deepretrieval_trainer.retrieval.prf import PseudoRelevanceFeedback
from deepretrieval_trainer.rewriting.doc2query import STOPWORDS, CropWriter
from deepretrieval_trainer.training.config import SynthesisConfig, TrainConfig
from deepretrieval_trainer.training.label_folder import read_rows
from deepretrieval_trainer.training.retrieval import training_rows
from deepretrieval_trainer.training.synthetic import NO_HEADROOM, NearDuplicates, rank_distribution, synthesize
from tests.conftest import collection_path

ADI = collection_path("adi")


@pytest.fixture(scope="module")
def adi_search():
    return BM25Search(load_corpus(ADI))


def test_cropped_queries_are_spans_without_their_rarest_words():
    documents = sample_documents(f"beir:{ADI}", 82).documents
    written = list(CropWriter(per_document=2, seed=3).stream(documents))
    assert written == list(CropWriter(per_document=2, seed=3).stream(documents))  # seeded
    assert len(written) == 164 and [i for i, _, _ in written] == [i // 2 for i in range(164)]
    frequency = Counter(w for d in documents for w in {x.lower() for x in re.findall(r"\w+", d.content)})
    queries = [(documents[i], q) for i, q, _ in written if q is not None]
    assert len(queries) > 120
    for document, query in queries:
        words = re.findall(r"\w+", document.content)
        kept = query.split()
        assert 2 <= len(kept) <= 12 and kept[0].lower() not in STOPWORDS and kept[-1].lower() not in STOPWORDS
        assert any(in_order(kept, words[start:start + 12]) for start in range(len(words)))  # a span, words removed
    # the words removed are the span's rarest: across all queries, kept words are more frequent than the document's
    kept_df = [frequency[w.lower()] for _, q in queries for w in q.split() if w.lower() not in STOPWORDS]
    all_df = [frequency[w.lower()] for d, _ in queries for w in re.findall(r"\w+", d.content)
              if w.lower() not in STOPWORDS and len(w) > 1 and not w.isdigit()]
    assert sum(kept_df) / len(kept_df) > 1.3 * sum(all_df) / len(all_df)
    reasons = {r for _, q, r in written if q is None}
    assert reasons <= {"fewer than 2 content words in the span"}


def in_order(part, whole):
    rest = iter(whole)
    return all(word in rest for word in part)


def test_near_duplicates_by_word_sets():
    seen = NearDuplicates(0.8)
    assert seen.add("Vitamin D and fractures") and not seen.add("vitamin d, and FRACTURES!")  # same after normalising
    assert seen.add("aspirin heart attack risk trial") and not seen.add("aspirin heart attack risk trial men")  # 5/6
    assert seen.add("aspirin heart attack")  # 3/5 of the kept one: kept
    assert not seen.add("...") and len(seen.kept) == 3


def test_prefix_filtering_finds_what_comparing_every_pair_finds():
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(12)]
    queries = [" ".join(rng.sample(vocabulary, rng.randint(1, 6))) for _ in range(400)]
    for threshold in (0.5, 0.8, 1.0):
        seen = NearDuplicates(threshold)
        kept_fast = [q for q in queries if seen.add(q)]
        kept_slow: list[set] = []
        for q in queries:
            words = set(q.split())
            if all(len(words & k) < threshold * len(words | k) for k in kept_slow):
                kept_slow.append(words)
        assert [set(q.split()) for q in kept_fast] == kept_slow


def test_kept_pairs_rank_their_document_inside_the_window_through_the_retriever(adi_search):
    labels = synthesize(adi_search, f"beir:{ADI}", sample=82, queries_per_document=3, min_rank=2, max_rank=20,
                        progress=False)
    report = labels.report
    assert labels.pairs and report["kept"] == len(labels.pairs)
    found = adi_search.search([p.query for p in labels.pairs], 20)
    for pair, ranking in zip(labels.pairs, found, strict=True):
        assert ranking.index(pair.doc_id) + 1 == pair.rank and 2 <= pair.rank <= 20  # the rank, searched again
    assert sum(report["rank_distribution"].values()) == report["written"]
    assert report["rank_distribution"]["1"] == report["dropped"]["rank < 2"] > 0
    assert report["written"] == report["kept"] + sum(report["dropped"].values())
    words = [frozenset(w.lower() for w in re.findall(r"\w+", p.query)) for p in labels.pairs]
    assert all(len(a & b) < 0.8 * len(a | b) for a, b in itertools.combinations(words, 2))
    rows = labels.rows
    assert rows[0] == {"query": labels.pairs[0].query, "qrels": {labels.pairs[0].doc_id: 1.0},
                       "query_id": labels.pairs[0].query_id}
    assert len(training_rows(rows)) == len(rows)  # what train() takes
    everything = synthesize(adi_search, f"beir:{ADI}", sample=82, queries_per_document=3, min_rank=1, max_rank=20,
                            dedup_jaccard=1.0, progress=False)
    assert everything.report["kept"] > report["kept"] and any(p.rank == 1 for p in everything.pairs)


def test_headroom_keeps_the_pairs_where_rm3_ranks_the_document_higher(adi_search, tmp_path):
    settings = {"sample": 82, "queries_per_document": 3, "max_rank": 40}
    plain = synthesize(adi_search, f"beir:{ADI}", progress=False, **settings)
    out = tmp_path / "labels"
    labels = synthesize(adi_search, f"beir:{ADI}", headroom="prf", out=out, progress=False, **settings)
    report = labels.report
    assert 0 < report["kept"] < plain.report["kept"] and report["dropped"][NO_HEADROOM] > 0
    assert report["written"] == report["kept"] + sum(report["dropped"].values())
    raw = adi_search.search([p.query for p in labels.pairs], 40)
    assert all(r.index(p.doc_id) + 1 == p.rank >= 2 for p, r in zip(labels.pairs, raw, strict=True))  # in the window
    # checked again with a fresh RM3 over the same retriever: each kept document ranks higher under the expansion
    feedback = PseudoRelevanceFeedback(adi_search)
    queries = [p.query for p in labels.pairs]
    expanded = [feedback.expand(q, hits) for q, hits in zip(queries, adi_search.search_documents(queries, 10))]
    for pair, ranking in zip(labels.pairs, adi_search.search(expanded, 40), strict=True):
        assert ranking.index(pair.doc_id) + 1 == pair.prf_rank < pair.rank
    assert report["headroom"]["method"] == "prf" and report["headroom"]["rm3"]["docs"] == 10
    assert sum(report["headroom"]["kept_rank_distribution"].values()) == report["kept"]
    candidates = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    dropped = [c for c in candidates if c["verdict"] == NO_HEADROOM]
    assert len(dropped) == report["dropped"][NO_HEADROOM]
    assert all(c["prf_rank"] is None or c["prf_rank"] >= c["rank"] for c in dropped)
    assert [q["metadata"]["prf_rank"] for q in map(json.loads, (out / "queries.jsonl").read_text().splitlines())] == [
        p.prf_rank for p in labels.pairs]


class SearchWithoutText:
    """A real BM25 search over ADI that returns ids only (no search_documents), as a remote id-only service."""

    def __init__(self, search):
        self.inner = search

    def search(self, queries, k):
        return self.inner.search(queries, k)


def test_headroom_needs_the_documents_text_and_says_so_before_writing(adi_search, tmp_path):
    with pytest.raises(ConfigError, match=r"synthesis.headroom=prf: .*no search_documents.*or set headroom none"):
        synthesize(SearchWithoutText(adi_search), f"beir:{ADI}", sample=10, headroom="prf", out=tmp_path / "l",
                   progress=False)
    assert not (tmp_path / "l" / "candidates.jsonl").exists()
    assert synthesize(SearchWithoutText(adi_search), f"beir:{ADI}", sample=40, progress=False).pairs  # none: fine


def test_the_folder_is_beir_layout_and_records_how_it_was_made(adi_search, tmp_path):
    out = tmp_path / "labels"
    labels = synthesize(adi_search, f"beir:{ADI}", SynthesisConfig(sample=40, seed=7, split="train"), out=out,
                        progress=False)
    queries, qrels = load_queries(out), load_qrels(out, "train")
    assert list(queries) == [p.query_id for p in labels.pairs] == list(qrels)
    corpus = load_corpus(ADI)
    assert all(set(judged) <= set(corpus) and list(judged.values()) == [1.0] for judged in qrels.values())
    report = json.loads((out / "synthesis.json").read_text())
    assert report["status"] == "completed" and report["method"]["method"] == "crop"
    assert report["documents"]["sampled"] == 40 and report["documents"]["read"] == 82
    assert report["rank_window"] == [2, 100] and report["seeds"] == {"sample": 7, "method": 7}
    assert report["retriever"] == "BM25Search" and report["split"] == "train"
    assert set(report["timings"]) >= {"read_s", "write_s", "search_s", "total_s", "queries_per_minute"}
    candidates = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(candidates) == report["written"] and sum(c["verdict"] == "kept" for c in candidates) == report["kept"]
    rows, again = read_rows(out)
    assert rows == labels.rows and again == report
    assert not list(tmp_path.glob(".labels*"))  # no staging folder left behind


def test_labels_are_never_written_into_the_data_or_over_other_files(adi_search, tmp_path):
    with pytest.raises(ConfigError, match="inside the documents' folder"):
        synthesize(adi_search, f"beir:{ADI}", sample=5, out=ADI / "synthetic", progress=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds files"):
        synthesize(adi_search, f"beir:{ADI}", sample=5, out=tmp_path / "taken", progress=False)
    assert not (ADI / "synthetic").exists() and (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_nothing_kept_is_an_error_with_the_distribution_written(adi_search, tmp_path):
    out = tmp_path / "labels"
    with pytest.raises(DataError, match=r"none of the \d+ pseudo-queries ranks its document within \[50, 60\].*"
                                        r"widen the window"):
        synthesize(adi_search, f"beir:{ADI}", sample=30, min_rank=50, max_rank=60, out=out, progress=False)
    report = json.loads((out / "synthesis.json").read_text())
    assert report["status"] == "no pairs kept" and report["kept"] == 0 and not (out / "queries.jsonl").exists()
    labels = synthesize(adi_search, f"beir:{ADI}", sample=30, out=out, progress=False)  # the folder is reused
    assert labels.pairs and (out / "queries.jsonl").is_file()


class FailsAfterProbe:
    """A real BM25 search over ADI whose index goes away after the first (probe) search."""

    def __init__(self, search):
        self.inner, self.calls = search, 0

    def search(self, queries, k):
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("index server went away")
        return self.inner.search(queries, k)


def test_a_retriever_failing_after_the_queries_are_written_leaves_them_on_disk(adi_search, tmp_path):
    out = tmp_path / "labels"
    with pytest.raises(ConnectionError):
        synthesize(FailsAfterProbe(adi_search), f"beir:{ADI}", sample=20, out=out, progress=False)
    report = json.loads((out / "synthesis.json").read_text())
    assert report["status"].startswith("stopped: the retriever failed (ConnectionError")
    assert len((out / "candidates.jsonl").read_text().splitlines()) == report["written"] > 0
    with pytest.raises(DataError, match="holds no labels"):
        read_rows(out)


class InterruptedSearch(FailsAfterProbe):
    """A real BM25 search over ADI with Ctrl-C pressed during its third search (the headroom check's RM3)."""

    def search_documents(self, queries, k):
        return self.inner.search_documents(queries, k)

    def search(self, queries, k):
        self.calls += 1
        if self.calls > 2:
            raise KeyboardInterrupt
        return self.inner.search(queries, k)


def test_ctrl_c_while_searching_keeps_the_queries_written(adi_search, tmp_path):
    out = tmp_path / "labels"
    with pytest.raises(KeyboardInterrupt):
        synthesize(InterruptedSearch(adi_search), f"beir:{ADI}", sample=20, headroom="prf", out=out, progress=False)
    report = json.loads((out / "synthesis.json").read_text())
    assert report["status"] == "interrupted while searching"
    assert len((out / "candidates.jsonl").read_text().splitlines()) == report["written"] > 0


def test_a_window_where_rm3_never_ranks_higher_is_an_error_that_says_so(adi_search, tmp_path):
    # in the window [1, 1] the document is already first, so no expansion can rank it higher
    with pytest.raises(DataError, match=r"on none of them does RM3 feedback rank it higher.*set headroom none"):
        synthesize(adi_search, f"beir:{ADI}", sample=40, min_rank=1, max_rank=1, headroom="prf",
                   out=tmp_path / "l", progress=False)
    report = json.loads((tmp_path / "l" / "synthesis.json").read_text())
    assert report["status"] == "no pairs kept" and report["dropped"][NO_HEADROOM] == report["headroom"]["checked"] > 0


class InterruptedWriter(CropWriter):
    """The crop writer, with Ctrl-C pressed after the 10th query."""

    def stream(self, documents):
        for count, item in enumerate(super().stream(documents), start=1):
            if count > 10:
                raise KeyboardInterrupt
            yield item


def test_ctrl_c_while_writing_keeps_the_queries_written(adi_search, tmp_path):
    labels = synthesize(adi_search, f"beir:{ADI}", sample=60, writer=InterruptedWriter(), min_rank=1,
                        out=tmp_path / "labels", progress=False)
    assert labels.report["status"] == "interrupted" and labels.report["written"] <= 10 and labels.pairs
    assert read_rows(tmp_path / "labels")[0] == labels.rows


def test_the_rank_distribution_bins():
    assert rank_distribution([1, 2, 3, 4, 10, 11, 100, None], 100) == {
        "1": 1, "2-3": 2, "4-10": 2, "11-20": 1, "21-50": 0, "51-100": 1, "not in top 100": 1}
    assert list(rank_distribution([], 5)) == ["1", "2-3", "4-5", "not in top 5"]


@pytest.mark.parametrize(("values", "message"), [
    ({"min_rank": 5, "max_rank": 2}, "above max_rank"),
    ({"dedup_jaccard": 0}, "must be in"),
    ({"method": "magic"}, "choose one of"),
    ({"method": "doc2query", "queries_per_document": 3}, "set synthesis.temperature"),
    ({"documents": "../shared/data/adi"}, "SCHEME:PATH"),
    ({"split": "../up"}, "plain name"),
    ({"sample": 0}, "positive integer"),
    ({"headroom": "rm3"}, r"choose one of \['none', 'prf'\]"),
])
def test_bad_synthesis_settings_name_the_fix(values, message):
    with pytest.raises(ConfigError, match=message):
        SynthesisConfig(**values)


def test_train_config_labels(tmp_path):
    config = TrainConfig(labels="synthetic", synthesis={"documents": f"beir:{ADI}", "sample": 10})
    assert config.synthesis.sample == 10 and config.to_dict()["synthesis"]["documents"] == f"beir:{ADI}"
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="needs documents"):
        TrainConfig(labels="synthetic")
    with pytest.raises(ConfigError, match="choose qrels, synthetic, or a folder"):
        TrainConfig(labels=str(tmp_path))
    with pytest.raises(ConfigError, match="not 'sql'"):
        TrainConfig(labels="synthetic", task="sql", synthesis={"documents": f"beir:{ADI}"})


def test_an_iterable_of_documents_and_its_ids(adi_search):
    corpus = load_corpus(ADI)
    rows = [SourceDocument(doc_id, doc["title"], doc["text"]) for doc_id, doc in corpus.items()]
    labels = synthesize(adi_search, rows, sample=82, progress=False)
    assert labels.report["documents"]["source"] == "documents" and {p.doc_id for p in labels.pairs} <= set(corpus)


class WritesNothing(CropWriter):
    """A writer whose every answer is unusable, as a model that never closes its answer."""

    def stream(self, documents):
        for index, _ in enumerate(documents):
            yield index, None, "no <answer> tag in the completion"


def test_no_query_written_at_all_is_an_error_with_the_reasons(adi_search, tmp_path):
    with pytest.raises(DataError, match=r"no pseudo-query could be written from the 10 documents sampled "
                                        r"\(\{'no <answer> tag in the completion': 10\}\)"):
        synthesize(adi_search, f"beir:{ADI}", sample=10, writer=WritesNothing(), out=tmp_path / "l", progress=False)
    assert json.loads((tmp_path / "l" / "synthesis.json").read_text())["not_written"] == {
        "no <answer> tag in the completion": 10}
