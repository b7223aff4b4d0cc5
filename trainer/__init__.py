"""deepretrieval_trainer: the shared core (tasks, answer parsing, rewriters, metrics, data, search, rewards, GRPO).

Imports nothing heavy: torch, transformers, trl and peft load only when a feature that needs them runs.
"""

from .retrieval.data import Collection, DataError, load_beir
from .retrieval.search import SearchBackend
from .rewriting.answer import Rewrite, parse_answer
from .rewriting.rewriters import BaseRewriter, LocalRewriter, RewriteError, Rewriter, RewriteResult
from .rewriting.tasks import TASKS, Task, Tiers, get_task

__all__ = [
    "BaseRewriter", "Collection", "DataError", "LocalRewriter", "Rewrite", "RewriteError", "RewriteResult",
    "Rewriter", "SearchBackend", "TASKS", "Task", "Tiers", "get_task", "load_beir", "parse_answer",
]
__version__ = "0.1.0"
