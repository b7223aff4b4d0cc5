"""Literature search: PICO -> Boolean queries, answered by embedded FTS5, PubMed and ClinicalTrials.gov."""

# Each engine is a SearchBackend: a reward source in training and a retriever in deployment.
