"""The Boolean parser and the embedded FTS5 engine over the real MEDLINE and NFCorpus collections."""

from __future__ import annotations

import re
import sqlite3

import pytest

from deepretrieval_trainer.literature.boolean import BooleanQueryError, is_format_error, translate
from deepretrieval_trainer.literature.fts5 import FTS5Search
from deepretrieval_trainer.retrieval.data import load_corpus
from deepretrieval_trainer.retrieval.dates import DateRange, search_with_dates
from deepretrieval_trainer.retrieval.search import SearchBackend

from ...conftest import collection_path


@pytest.fixture(scope="module")
def medline(tmp_path_factory):
    return FTS5Search(load_corpus(collection_path("medline")), index_path=tmp_path_factory.mktemp("fts") / "med.sqlite")


@pytest.fixture(scope="module")
def nfcorpus(tmp_path_factory):
    return FTS5Search.from_path(collection_path("nfcorpus"), index_path=tmp_path_factory.mktemp("fts") / "nf.sqlite")


def hits(engine, query, k=2000) -> set[str]:
    return set(engine.search([query], k)[0])


def test_it_is_a_search_backend_ranking_up_to_k(medline):
    assert isinstance(medline, SearchBackend)
    ranked = medline.search(["lens OR crystalline", "cancer"], 5)
    assert [len(r) for r in ranked] == [5, 5]
    assert len(hits(medline, "cancer")) > 5


def test_each_operator_moves_results_the_expected_way(medline):
    lens, protein = hits(medline, "lens"), hits(medline, "protein")
    assert lens and protein
    assert hits(medline, "lens AND protein") == lens & protein
    assert hits(medline, "lens OR protein") == lens | protein
    assert hits(medline, "lens NOT protein") == lens - protein
    assert hits(medline, "lens protein") == lens & protein  # adjacency is AND, as in PubMed
    assert hits(medline, "lens OR protein AND cataract") == (lens | protein) & hits(medline, "cataract")  # left to right
    assert hits(medline, "lens OR (protein AND cataract)") == lens | (protein & hits(medline, "cataract"))


def test_phrases_wildcards_and_field_tags(medline, nfcorpus):
    phrase, words = hits(medline, '"crystalline lens"'), hits(medline, "crystalline lens")
    assert phrase and phrase < words
    assert hits(medline, "cardi*") > hits(medline, "cardiac")
    statin = hits(nfcorpus, "statin")
    assert hits(nfcorpus, "statin[tiab]") == statin
    assert hits(nfcorpus, "statin[ti]") == set()  # NFCorpus has no titles: only abstracts
    assert hits(nfcorpus, "statin[ab]") == statin
    assert hits(nfcorpus, "statin[mh]") == statin  # MeSH is not indexed: searched as text, with a note
    assert hits(nfcorpus, "statin AND smith[au]") == statin  # metadata tags drop the term


def test_title_tag_searches_the_title_column(tmp_path):
    corpus = {"1": {"title": "aspirin trial", "text": "stroke outcomes"}, "2": {"title": "stroke", "text": "aspirin use"}}
    engine = FTS5Search(corpus, index_path=tmp_path / "tiny.sqlite")
    assert sorted(engine.search(["aspirin[tiab]"], 10)[0]) == ["1", "2"]
    assert engine.search(["aspirin[ti]"], 10) == [["1"]]
    assert engine.search(["aspirin[ab]"], 10) == [["2"]]


def test_translation_notes_what_it_dropped():
    translation = translate("(aspirin[tiab] OR stroke[mh]) AND smith[au]")
    assert translation.expression == '("aspirin") OR ("stroke")'
    assert any("[mh]" in note for note in translation.notes) and any("[au]" in note for note in translation.notes)


@pytest.mark.parametrize("query, problem", [
    ("", "empty"), ("lens AND", "no right-hand operand"), ("NOT lens", "no left-hand operand"),
    ("(lens OR protein", "unbalanced '('"), ("lens)", "unbalanced ')'"), ("lens ()", "empty parentheses"),
    ('"crystalline lens', "unterminated quote"), ("lens[tiab", "unbalanced '['"), ("[ti] lens", "follows no term"),
    ("lens OR OR protein", "no right-hand operand"), ("*", "wildcard"), ("the AND of", "nothing searchable"),
])
def test_malformed_queries_raise_a_clear_format_error(medline, query, problem):
    with pytest.raises(BooleanQueryError, match=re.escape(problem)) as caught:
        medline.search([query], 10)
    assert isinstance(caught.value, ValueError) and is_format_error(caught.value)
    assert repr(query) in str(caught.value)


def test_search_each_isolates_a_malformed_query(medline):
    results = medline.search_each(["lens", "lens AND", "protein"], 3)
    assert len(results[0]) == 3 and len(results[2]) == 3
    assert isinstance(results[1], BooleanQueryError)


@pytest.mark.parametrize("query", [
    "lens'); DROP TABLE docs; --", "x\" OR 1=1 --", "lens; DELETE FROM texts", "lens\" NEAR(\"a\" \"b\") \"",
    "title:lens* OR abstract:(x)", "lens' UNION SELECT sql FROM sqlite_master --",
])
def test_sql_and_fts5_syntax_in_queries_cannot_break_out(medline, query):
    try:
        results = medline.search([query], 10)[0]
    except BooleanQueryError:
        results = []
    assert all(doc.isdigit() for doc in results)  # ids only, never schema text
    assert medline.search(["lens"], 1000) and medline.size == 1033
    with sqlite3.connect(medline.index_path) as connection:
        assert connection.execute("SELECT count(*) FROM texts").fetchone()[0] == 1033


def test_the_index_is_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(tmp_path))
    corpus = load_corpus(collection_path("adi"))
    first = FTS5Search(corpus)
    second = FTS5Search(corpus)
    assert first.built and not second.built
    assert first.index_path == second.index_path and first.index_path.is_relative_to(tmp_path)
    assert second.search(["information retrieval"], 20) == first.search(["information retrieval"], 20)
    changed = dict(corpus, extra={"title": "new document", "text": "retrieval"})
    assert FTS5Search(changed).built  # another fingerprint, another index
    assert FTS5Search(corpus, rebuild=True).built


def test_documents_returns_the_original_text(medline):
    doc_id = medline.search(["crystalline lens"], 1)[0][0]
    assert "lens" in medline.documents([doc_id, "no-such-id"])[doc_id]["text"]


async def test_async_search_and_date_windows(medline):
    assert await medline.asearch(["lens"], 4) == medline.search(["lens"], 4)
    assert search_with_dates(medline, ["lens"], 4, [None]) == medline.search(["lens"], 4)
    with pytest.raises(ValueError, match="cannot filter by publication date"):
        search_with_dates(medline, ["lens"], 4, [DateRange.before("2000")])
