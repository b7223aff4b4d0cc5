"""The retriever side: the SearchBackend protocol, framing (what text is searched), BM25, BEIR data, metrics, RM3."""
