"""Text-to-SQL: question + schema -> one read-only SQL query, rewarded by execution accuracy.

The "retriever" of this task is a database. :mod:`.guard` admits exactly one read statement (parsed by sqlglot);
:mod:`.sqlite` and :mod:`.engines` run it read-only with a time limit and a row cap (the engine, not the caller,
enforces read-only); :mod:`.results` compares results as Spider's execution evaluation does; :mod:`.rewards` are
the TRL reward callables; :mod:`.writer` turns a model backend into a SQL writer with the usual fallback
discipline; :mod:`.spider` loads Spider with a cross-database split; :mod:`.train` and :mod:`.evaluate` drive
``deepretrieval train/eval --task sql``.
"""
