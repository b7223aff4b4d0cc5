"""Text-to-SQL: question + schema -> one read-only SQL query, rewarded by execution accuracy."""

# The "retriever" of this task is a database. guard admits exactly one read statement (parsed by sqlglot); sqlite and
# engines run it read-only with a time limit and a row cap (the engine, not the caller, enforces read-only); results
# compares results as Spider's execution evaluation does; rewards are the TRL reward callables; writer turns a model
# backend into a SQL writer with the usual fallback discipline; spider loads Spider with a cross-database split;
# train and evaluate drive `deepretrieval train/eval --task sql`.
