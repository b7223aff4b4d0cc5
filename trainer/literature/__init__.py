"""Literature search: PICO -> Boolean queries, answered by an embedded SQLite FTS5 engine, PubMed E-utilities
and ClinicalTrials.gov. Each engine is a SearchBackend (a reward source and a deployment retriever)."""
