"""Query sources (raw, prf, base, adapter, server) -> per-query metrics through one retriever, paired tests, reports."""
