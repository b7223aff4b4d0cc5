"""Text-to-SQL in LlamaIndex: a DeepRetrieval SQL writer where ``NLSQLRetriever`` / ``NLSQLTableQueryEngine`` go.

:class:`DeepRetrievalSQLRetriever` takes a ``SQLDatabase`` and a :class:`~deepretrieval_trainer.sql.writer.SQLWriter`
(the embedded model in-process, a trained SQL adapter, or a vLLM server) and returns what ``NLSQLRetriever`` returns:
one node with the result rows as text and ``sql_query`` / ``result`` / ``col_keys`` in its metadata
(``return_raw=False``: one node per row). The SQL runs on a read-only connection of the database's file (SQLite) or
in a read-only transaction (PostgreSQL), with a time limit and at most ``max_rows`` rows and ``max_bytes`` bytes of
result, never through ``SQLDatabase.run_sql`` (which runs in a writable transaction). A bad generation, a refused
statement or a failing or oversized query gives a single "No answer" node with the reason in ``metadata["error"]``
and a logged warning, unless ``strict=True``.
:class:`DeepRetrievalSQLQueryEngine` is ``NLSQLTableQueryEngine`` with this retriever.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.indices.struct_store.sql_query import BaseSQLTableQueryEngine
from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import NodeWithScore, QueryBundle, QueryType, TextNode
from llama_index.core.utilities.sql_wrapper import SQLDatabase

from deepretrieval_trainer.rewriting.rewriters import RewriteError
from deepretrieval_trainer.sql.engines import open_database
from deepretrieval_trainer.sql.results import MAX_RESULT_BYTES, QueryResult
from deepretrieval_trainer.sql.schema import describe
from deepretrieval_trainer.sql.writer import SQLGeneration, SQLWriter

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "system_prompt"
_HIDDEN = ["sql_query", "result", "col_keys", "error"]


class DeepRetrievalSQLRetriever(BaseRetriever):
    """Question -> SQL (``writer``) -> read-only execution on ``sql_database`` -> result nodes."""

    def __init__(self, *, sql_database: SQLDatabase, writer: SQLWriter, tables: Optional[Sequence[str]] = None,
                 sample_values: int = 0, return_raw: bool = True, timeout_s: float = 2.0, max_rows: int = 1000,
                 max_bytes: int = MAX_RESULT_BYTES, strict: bool = False,
                 callback_manager: Optional[CallbackManager] = None,
                 verbose: bool = False) -> None:
        if not isinstance(sql_database, SQLDatabase):
            raise TypeError(f"sql_database={sql_database!r}: pass a llama_index SQLDatabase")
        if not isinstance(writer, SQLWriter):
            raise TypeError(f"writer={writer!r}: pass a deepretrieval_trainer.sql.writer.SQLWriter "
                            "(SQLWriter.local() or SQLWriter.server(...))")
        self.sql_database = sql_database
        self.database = open_database(sql_database, timeout_s=timeout_s, max_rows=max_rows, max_bytes=max_bytes)
        writer.dialect = self.database.dialect
        self.writer = writer
        self.tables = list(tables) if tables is not None else sorted(sql_database.get_usable_table_names())
        self.sample_values = sample_values
        self.return_raw = return_raw
        self.strict = strict
        self._schema: str | None = None
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @property
    def schema(self) -> str:
        """The schema text the prompt carries (read once from the database)."""
        if self._schema is None:
            self._schema = describe(self.database, tables=self.tables, sample_values=self.sample_values)
        return self._schema

    def _get_prompts(self) -> PromptDictType:
        return {SYSTEM_PROMPT: PromptTemplate(self.writer.task.system)}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        if SYSTEM_PROMPT in prompts:
            import dataclasses

            self.writer.backend.task = dataclasses.replace(self.writer.task,
                                                           system=prompts[SYSTEM_PROMPT].get_template())

    def retrieve_with_metadata(self, str_or_query_bundle: QueryType) -> Tuple[List[NodeWithScore], Dict]:
        """The nodes and ``{"sql_query", "result", "col_keys"}`` (plus ``error`` when there is no answer)."""
        question = _question(str_or_query_bundle)
        return self._answer(question, self.writer.write([(question, self.schema)])[0])

    async def aretrieve_with_metadata(self, str_or_query_bundle: QueryType) -> Tuple[List[NodeWithScore], Dict]:
        question = _question(str_or_query_bundle)
        return self._answer(question, (await self.writer.awrite([(question, self.schema)]))[0])

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return self.retrieve_with_metadata(query_bundle)[0]

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return (await self.aretrieve_with_metadata(query_bundle))[0]

    def _answer(self, question: str, generation: SQLGeneration) -> Tuple[List[NodeWithScore], Dict]:
        if not generation.ok:
            return self._no_answer(question, generation.sql, generation.reason or "no SQL")
        result = self.database.execute(generation.sql)
        if not result.ok:
            return self._no_answer(question, generation.sql, f"{result.kind}: {result.error}")
        return self._nodes(generation.sql, result)

    def _nodes(self, sql: str, result: QueryResult) -> Tuple[List[NodeWithScore], Dict]:
        rows, columns = [tuple(r) for r in result.rows], list(result.columns)
        metadata = {"sql_query": sql, "result": rows, "col_keys": columns}
        if not self.return_raw:
            return [NodeWithScore(node=TextNode(text="", metadata=dict(zip(columns, row)))) for row in rows], metadata
        node = TextNode(text=str(rows), metadata=metadata, excluded_embed_metadata_keys=list(_HIDDEN),
                        excluded_llm_metadata_keys=list(_HIDDEN))
        return [NodeWithScore(node=node)], metadata

    def _no_answer(self, question: str, sql: Optional[str], reason: str) -> Tuple[List[NodeWithScore], Dict]:
        if self.strict:
            raise RewriteError(f"no SQL answer for {question!r}: {reason}")
        logger.warning("no SQL answer for %r: %s", question, reason)
        metadata = {"sql_query": sql, "result": [], "col_keys": [], "error": reason}
        node = TextNode(text=f"No answer: {reason}", metadata=metadata, excluded_embed_metadata_keys=list(_HIDDEN),
                        excluded_llm_metadata_keys=list(_HIDDEN))
        return [NodeWithScore(node=node)], metadata


class DeepRetrievalSQLQueryEngine(BaseSQLTableQueryEngine):
    """``NLSQLTableQueryEngine`` with :class:`DeepRetrievalSQLRetriever`: the rows as the response
    (``synthesize_response=False``, the default here) or an answer an ``llm`` writes from them."""

    def __init__(self, *, retriever: DeepRetrievalSQLRetriever, llm: Any = None, synthesize_response: bool = False,
                 **kwargs: Any) -> None:
        if llm is None and not synthesize_response:
            from llama_index.core.llms.mock import MockLLM

            llm = MockLLM()  # never called; keeps Settings.llm (OpenAI by default) from being resolved
        self._sql_retriever = retriever
        super().__init__(llm=llm, synthesize_response=synthesize_response, **kwargs)

    @property
    def sql_retriever(self) -> DeepRetrievalSQLRetriever:
        return self._sql_retriever


def _question(str_or_query_bundle: QueryType) -> str:
    return str_or_query_bundle if isinstance(str_or_query_bundle, str) else str_or_query_bundle.query_str
