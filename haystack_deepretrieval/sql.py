"""Text-to-SQL in Haystack: ``DeepRetrievalSQLWriter`` turns a question (+ schema) into one checked read query, and
``ReadOnlySQLQuery`` runs it read-only. Both serialize (``to_dict``/``from_dict``, pipeline YAML).

- The writer uses the embedded model or a trained SQL adapter in-process (``backend="local"``), or a vLLM server
  (``backend="openai"``, the adapter chosen by ``model``). Its ``schema`` input, when not connected, is read from
  ``database``. A bad generation gives ``sql=None`` and the reason in ``meta`` (logged), unless ``strict``.
- The runner opens ``database`` (a SQLite file path, or a SQLAlchemy URL without its password: the password is a
  ``Secret``, never serialized in clear) read-only, with a time limit, a row cap and a byte cap. A missing, refused,
  failing or oversized query gives empty ``rows`` and the reason in ``error``, unless ``strict``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal, Optional

from haystack import component, default_from_dict, default_to_dict
from haystack.utils import Secret, deserialize_secrets_inplace

from deepretrieval_trainer.rewriting.rewriters import RewriteError
from deepretrieval_trainer.sql.results import MAX_RESULT_BYTES, check_limits

from .serialization import refuse_clear_secrets  # importing it registers this package with the YAML allowlist

logger = logging.getLogger(__name__)

PASSWORD_ENV = "DEEPRETRIEVAL_SQL_PASSWORD"
API_KEY_ENV_VARS = ["DEEPRETRIEVAL_API_KEY", "OPENAI_API_KEY"]


def _check_database(database: Optional[str]) -> None:
    if database is None:
        return
    if not isinstance(database, str) or not database.strip():
        raise ValueError(f"database={database!r}: give a SQLite file path or a SQLAlchemy URL")
    if "://" in database:
        from sqlalchemy.engine import make_url

        if make_url(database).password is not None:
            raise ValueError(f"database URL {make_url(database)!r} holds a password: remove it from the URL and "
                             f"pass password=Secret.from_env_var('{PASSWORD_ENV}') so it is never serialized")


def _open(database: str, password: Optional[Secret], *, timeout_s: float = 2.0, max_rows: int = 10_000,
          max_bytes: int = MAX_RESULT_BYTES):
    from deepretrieval_trainer.sql.engines import open_database

    target: Any = database
    secret = password.resolve_value() if password is not None else None
    if "://" in database and secret:
        from sqlalchemy.engine import make_url

        target = make_url(database).set(password=secret)
    return open_database(target, timeout_s=timeout_s, max_rows=max_rows, max_bytes=max_bytes)


def _secret_dict(secret: Optional[Secret]) -> Optional[dict]:
    return secret.to_dict() if secret is not None else None


@component
class DeepRetrievalSQLWriter:
    """Writes one read-only SQL query for ``question`` over ``schema`` (or ``database``'s schema)."""

    def __init__(self, *, backend: Literal["local", "openai"] = "local", model: Optional[str] = None,
                 adapter: Optional[str] = None, base_url: Optional[str] = None,
                 api_key: Optional[Secret] = Secret.from_env_var(API_KEY_ENV_VARS, strict=False),  # noqa: B008
                 database: Optional[str] = None,
                 password: Optional[Secret] = Secret.from_env_var(PASSWORD_ENV, strict=False),  # noqa: B008
                 dialect: str = "sqlite", sample_values: int = 0, max_tokens: int = 192, temperature: float = 0.0,
                 timeout: float = 30.0, max_retries: int = 2, device: str = "cpu", strict: bool = False) -> None:
        if backend not in ("local", "openai"):
            raise ValueError(f"backend={backend!r}: choose 'local' or 'openai'")
        if backend == "openai" and not model:
            raise ValueError("backend='openai' needs model=...: the served SQL adapter's name")
        if backend == "openai" and adapter is not None:
            raise ValueError(f"adapter={adapter!r} is for backend='local'; serve it (deepretrieval serve --adapter) "
                             "and pass its name as model")
        if backend == "local" and base_url is not None:
            raise ValueError(f"base_url={base_url!r} is for backend='openai'")
        if max_tokens < 1 or temperature < 0 or timeout <= 0 or max_retries < 0 or sample_values < 0:
            raise ValueError(f"max_tokens={max_tokens} (>= 1), temperature={temperature} (>= 0), timeout={timeout} "
                             f"(> 0), max_retries={max_retries} (>= 0), sample_values={sample_values} (>= 0)")
        _check_database(database)
        self.backend, self.model, self.adapter, self.base_url, self.api_key = backend, model, adapter, base_url, api_key
        self.database, self.password, self.dialect, self.sample_values = database, password, dialect, sample_values
        self.max_tokens, self.temperature = max_tokens, temperature
        self.timeout, self.max_retries = timeout, max_retries
        self.device, self.strict = device, strict
        self._writer = None
        self._prebuilt = False
        self._schema: Optional[str] = None
        self._lock = threading.Lock()

    @classmethod
    def from_writer(cls, writer, *, database: Optional[str] = None) -> DeepRetrievalSQLWriter:
        """Wrap an already built core ``SQLWriter`` (any backend). Such a component runs but does not serialize."""
        from deepretrieval_trainer.sql.writer import SQLWriter

        if not isinstance(writer, SQLWriter):
            raise TypeError(f"{type(writer).__name__} is not a deepretrieval_trainer.sql.writer.SQLWriter")
        instance = cls(database=database, dialect=writer.dialect, strict=writer.strict)
        instance._writer, instance._prebuilt = writer, True
        return instance

    def warm_up(self) -> None:
        """Load the local model, or create the server client (idempotent)."""
        self._ready()

    def _ready(self):
        with self._lock:
            if self._writer is None:
                self._writer = self._build()
            return self._writer

    def _build(self):
        from deepretrieval_trainer.sql.writer import SQLWriter

        if self.backend == "local":
            writer = SQLWriter.local(self.model, adapter=self.adapter, max_new_tokens=self.max_tokens,
                                     temperature=self.temperature, device=self.device, dialect=self.dialect,
                                     strict=self.strict)
            writer.backend.load()
            return writer
        options: dict[str, Any] = {"base_url": self.base_url} if self.base_url else {}
        return SQLWriter.server(self.model, max_tokens=self.max_tokens, temperature=self.temperature,
                                timeout=self.timeout, max_retries=self.max_retries, dialect=self.dialect,
                                strict=self.strict, api_key=self.api_key.resolve_value() if self.api_key else None,
                                **options)

    def _schema_text(self, schema: Optional[str]) -> str:
        if schema:
            return schema
        if self.database is None:
            raise ValueError("DeepRetrievalSQLWriter needs a schema: connect its 'schema' input or set database=...")
        if self._schema is None:
            from deepretrieval_trainer.sql.schema import describe

            self._schema = describe(_open(self.database, self.password), sample_values=self.sample_values)
        return self._schema

    @component.output_types(sql=Optional[str], meta=dict[str, Any])
    def run(self, question: str, schema: Optional[str] = None) -> dict[str, Any]:
        """:returns: ``sql`` (None when there is no answer) and ``meta`` (``ok``, ``reason``, ``latency_s``)."""
        answer = self._ready().write([(question, self._schema_text(schema))])[0]
        return self._outputs(answer)

    @component.output_types(sql=Optional[str], meta=dict[str, Any])
    async def run_async(self, question: str, schema: Optional[str] = None) -> dict[str, Any]:
        import asyncio

        writer = self._writer or await asyncio.to_thread(self._ready)
        text = self._schema_text(schema) if schema or self._schema else await asyncio.to_thread(self._schema_text, None)
        return self._outputs((await writer.awrite([(question, text)]))[0])

    @staticmethod
    def _outputs(answer) -> dict[str, Any]:
        return {"sql": answer.sql, "meta": {"question": answer.question, "ok": answer.ok, "reason": answer.reason,
                                            "latency_s": answer.latency_s}}

    def to_dict(self) -> dict[str, Any]:
        if self._prebuilt:
            from haystack.core.errors import SerializationError

            raise SerializationError("this DeepRetrievalSQLWriter wraps a Python SQLWriter (from_writer) and cannot be "
                                     "serialized; build it from parameters (backend=..., model=..., adapter=...)")
        return default_to_dict(
            self, backend=self.backend, model=self.model, adapter=self.adapter, base_url=self.base_url,
            api_key=_secret_dict(self.api_key), database=self.database, password=_secret_dict(self.password),
            dialect=self.dialect, sample_values=self.sample_values, max_tokens=self.max_tokens,
            temperature=self.temperature, timeout=self.timeout, max_retries=self.max_retries, device=self.device,
            strict=self.strict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeepRetrievalSQLWriter:
        refuse_clear_secrets(data, ["api_key", "password"])
        data = {**data, "init_parameters": dict(data.get("init_parameters", {}))}
        deserialize_secrets_inplace(data["init_parameters"], keys=["api_key", "password"])
        return default_from_dict(cls, data)


@component
class ReadOnlySQLQuery:
    """Runs one read-only SQL statement on ``database`` (read-only connection/transaction, time limit, at most
    ``max_rows`` rows and ``max_bytes`` bytes of result)."""

    def __init__(self, *, database: str,
                 password: Optional[Secret] = Secret.from_env_var(PASSWORD_ENV, strict=False),  # noqa: B008
                 timeout_s: float = 2.0, max_rows: int = 1000, max_bytes: int = MAX_RESULT_BYTES,
                 strict: bool = False) -> None:
        if not database:
            raise ValueError("database is required: a SQLite file path or a SQLAlchemy URL (no password in it)")
        _check_database(database)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be > 0 seconds")
        check_limits(max_rows, max_bytes)
        self.database, self.password, self.timeout_s, self.strict = database, password, timeout_s, strict
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self._database = None

    def warm_up(self) -> None:
        if self._database is None:
            self._database = _open(self.database, self.password, timeout_s=self.timeout_s, max_rows=self.max_rows,
                                   max_bytes=self.max_bytes)

    @component.output_types(rows=list[list[Any]], columns=list[str], error=Optional[str])
    def run(self, sql: Optional[str] = None) -> dict[str, Any]:
        """:returns: ``rows`` and ``columns``, or empty ones and ``error`` (why nothing ran)."""
        if not sql:
            return self._failed("no SQL to run (the writer gave no answer)")
        self.warm_up()
        result = self._database.execute(sql)
        if not result.ok:
            return self._failed(f"{result.kind}: {result.error}")
        return {"rows": [list(r) for r in result.rows], "columns": list(result.columns), "error": None}

    def _failed(self, reason: str) -> dict[str, Any]:
        if self.strict:
            raise RewriteError(f"ReadOnlySQLQuery: {reason}")
        logger.warning("ReadOnlySQLQuery returns no rows: %s", reason)
        return {"rows": [], "columns": [], "error": reason}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, database=self.database, password=_secret_dict(self.password),
                               timeout_s=self.timeout_s, max_rows=self.max_rows, max_bytes=self.max_bytes,
                               strict=self.strict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReadOnlySQLQuery:
        refuse_clear_secrets(data, ["password"])
        data = {**data, "init_parameters": dict(data.get("init_parameters", {}))}
        deserialize_secrets_inplace(data["init_parameters"], keys=["password"])
        return default_from_dict(cls, data)


__all__ = ["DeepRetrievalSQLWriter", "ReadOnlySQLQuery"]
