"""A Haystack ``Document`` as the core's ``DocumentHit``: one conversion for the reward's search and the component."""

from __future__ import annotations

from haystack import Document

from deepretrieval_trainer.retrieval.search import DocumentHit


def document_hit(document: Document, *, doc_id: str | None = None, title_meta_key: str | None = "title") -> DocumentHit:
    """A Haystack ``Document`` as a core ``DocumentHit``: ``content`` without a leading title, the title from
    ``meta[title_meta_key]``, ``score``; ``doc_id`` defaults to ``Document.id``."""
    title = document.meta.get(title_meta_key) if title_meta_key else None
    return DocumentHit.from_content(doc_id if doc_id is not None else document.id, document.content,
                                    title=str(title) if title is not None else "", score=document.score)
