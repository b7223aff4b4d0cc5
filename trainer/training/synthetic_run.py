"""A training run on labels made without judgments (``labels: synthetic``, or a folder ``deepretrieval synthesize``
wrote): which retriever, which rows, and the run folder's record of how the labels were made.

```
RUN_DIR/
  labels/          the label folder (label_folder.py) made for this run (labels: synthetic)
  synthesis.json   how the labels were made (a copy of the label folder's), whatever their source
  run.json         ... "labels": {"source", "folder", "kept", "method"}
```

A run whose ``labels/`` already holds labels made with the same synthesis settings (a resumed run, or one started
again after a crash before its first checkpoint) trains on them instead of making new ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ..common.errors import ConfigError
from ..retrieval.search import SearchBackend
from .config import RetrieverConfig, TrainConfig
from .engine import check_batch, is_main_process, world_size
from .label_folder import REPORT, read_report, read_rows
from .run_dir import RunDir, write_atomically
from .synthetic import synthesize

logger = logging.getLogger(__name__)

LABELS_FOLDER = "labels"


def labels_documents(config: TrainConfig) -> str:
    """The ``SCHEME:PATH`` the labels come from: ``synthesis.documents``, else (labels from a folder) the source its
    report names, else ``beir:<data.path>``."""
    if config.synthesis.documents:
        return config.synthesis.documents
    if config.labels not in ("qrels", "synthetic"):
        source = str(read_report(config.labels).get("documents", {}).get("source", ""))
        scheme, _, path = source.partition(":")
        if path and Path(path).expanduser().exists():
            return source
    if config.data.path:
        return f"beir:{config.data.path}"
    raise ConfigError(f"labels={config.labels!r}: which documents (and so which retriever)? Set "
                      "synthesis.documents (--synthesis-documents beir:PATH | llamaindex:PATH | haystack:PATH), or "
                      "the retriever (--retriever-framework, --retriever-kind, --retriever-path)")


def documents_retriever(retriever: RetrieverConfig | None, documents: str, data_path: str = ""
                        ) -> tuple[RetrieverConfig, str]:
    """The retriever to build, and the path to build it over: as configured where a path is given
    (``retriever.path`` or ``data_path``), else the documents' own index: ``llamaindex:PATH`` the persisted index
    (kind ``storage``), ``haystack:PATH`` BM25 over the saved store (kind ``store``), ``beir:PATH`` the configured
    framework's BM25 over that collection."""
    retriever = retriever or RetrieverConfig()
    if retriever.path or data_path:
        return retriever, data_path
    scheme, _, path = documents.partition(":")
    if scheme == "llamaindex":
        return RetrieverConfig(framework="llamaindex", kind="storage", path=path, id_key=retriever.id_key), path
    if scheme == "haystack":
        return RetrieverConfig(framework="haystack", kind="store", path=path, id_meta_key=retriever.id_meta_key), path
    folder = Path(path).expanduser()
    return retriever, str(folder.parent if folder.is_file() else folder)


def training_labels(config: TrainConfig, search: SearchBackend, *, progress: bool = True) -> list[dict[str, Any]]:
    """The rows ``config.labels`` names (made now through ``search`` for ``synthetic``), recorded in the run folder."""
    run = RunDir(config.run_dir)
    if config.labels == "synthetic":
        folder = run.path / LABELS_FOLDER
        rows, report = _reused(config, folder) or _made(config, search, run, folder, progress)
    else:
        folder = Path(config.labels).expanduser()
        rows, report = read_rows(folder)
    if is_main_process():
        run.path.mkdir(parents=True, exist_ok=True)
        write_atomically(run.path / REPORT, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
        run.write_info(labels={"source": config.labels, "folder": str(folder), "kept": len(rows),
                               "method": report.get("method", {}).get("method"), "synthesis": REPORT})
    logger.info("training on %d pseudo-queries (%s; how they were made: %s)", len(rows), folder, run.path / REPORT)
    return rows


def _settings(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(dataclasses.replace(config.synthesis, documents=labels_documents(config)))


def _reused(config: TrainConfig, folder: Path):
    if not (folder / REPORT).is_file():
        return None
    report = read_report(folder)
    if report.get("config") != _settings(config) or report.get("status") not in ("completed", "interrupted"):
        if report.get("status") in ("completed", "interrupted"):
            raise ConfigError(f"{folder} holds labels made with other synthesis settings than this run's: remove "
                              "it to make new ones, or choose a new run_dir")
        return None  # a synthesis that stopped: made again
    logger.info("%s already holds the labels this run makes (%s pseudo-queries): training on them", folder,
                report.get("kept"))
    return read_rows(folder)


def _made(config: TrainConfig, search: SearchBackend, run: RunDir, folder: Path, progress: bool):
    if world_size() > 1:
        raise ConfigError(f"labels=synthetic under {world_size()} processes would make the labels once per process: "
                          "make them first (deepretrieval synthesize --out FOLDER), then train with --labels FOLDER")
    check_batch(config)  # what train() checks first, checked before the labels are made
    if not config.resume and (run.checkpoint_folders() or run.adapter.exists()):
        raise ConfigError(f"run_dir={str(run.path)!r} already holds a run: pass resume=True (--resume) to continue "
                          "it, or choose a new run_dir")
    run.check_writable()  # before the labels are made, not after
    settings = dataclasses.replace(config.synthesis, documents=labels_documents(config))
    if settings.method == "doc2query" and config.torch_threads is not None:  # the model writes on the run's threads
        import torch

        torch.set_num_threads(config.torch_threads)
    labels = synthesize(search, settings.documents, settings, out=folder, dtype=config.dtype, progress=progress)
    for line in labels.examples():
        logger.info("  %s", line)
    logger.info("%s", labels.summary())
    return labels.rows, labels.report
