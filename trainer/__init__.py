"""deepretrieval_trainer: the shared core (tasks, answer parsing, rewriters, metrics, data, search, rewards, GRPO).

Imports nothing heavy: torch, transformers, trl and peft load only when a feature that needs them runs.
"""

from .answer import Rewrite, parse_answer
from .data import Collection, DataError, load_beir
from .rewriters import BaseRewriter, LocalRewriter, Rewriter, RewriteError, RewriteResult
from .search import SearchBackend
from .tasks import TASKS, Task, Tiers, get_task

__all__ = [
    "BaseRewriter", "Collection", "DataError", "LocalRewriter", "Rewrite", "RewriteError", "RewriteResult",
    "Rewriter", "SearchBackend", "TASKS", "Task", "Tiers", "get_task", "load_beir", "parse_answer",
]
__version__ = "0.1.0"
