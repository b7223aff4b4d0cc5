"""Train a query rewriter with GRPO against your retriever.

    deepretrieval train --config train.yaml [--max-steps 50 --learning-rate 1e-5 --resume ...]

The YAML file is a TrainConfig; every field is also a flag (nested ones as --data-path, --retriever-framework).
Its `data:` section names the BEIR collection and split, its `retriever:` section the framework and how to
build the retriever: llamaindex (bm25 | storage), haystack (bm25 | pipeline | store) or bm25s (the core's quick BM25).

Without judgments: `--labels synthetic --synthesis-documents beir:PATH|llamaindex:PATH|haystack:PATH` makes the
labels from the documents first (as `deepretrieval synthesize` does) and keeps them, and how they were made, in the
run folder; `--labels FOLDER` trains on a folder `deepretrieval synthesize` wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing
from typing import Any

from ..training.config import DataConfig, RetrieverConfig, SynthesisConfig, TrainConfig

logger = logging.getLogger(__name__)

NESTED = {"data": DataConfig, "retriever": RetrieverConfig, "synthesis": SynthesisConfig}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(cls: type, name: str) -> Any:
    """The field's type, an Optional/Union unwrapped to its first member (``list[str]`` stays ``list[str]``)."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return hint
    return next(a for a in typing.get_args(hint) if a is not type(None))


def _add_fields(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    for f in dataclasses.fields(cls):
        if f.name in NESTED:
            continue
        dest = f"{prefix}{f.name}"
        kind = _kind(cls, f.name)
        if kind is bool:
            parser.add_argument(_flag(dest), dest=dest, action=argparse.BooleanOptionalAction, default=None)
        elif kind is int or kind is float:
            parser.add_argument(_flag(dest), dest=dest, type=kind, default=None, metavar=kind.__name__.upper())
        elif typing.get_origin(kind) is list or f.name == "lora_target_modules":
            parser.add_argument(_flag(dest), dest=dest, type=str, default=None, metavar="YAML",
                                help="a YAML value, e.g. '[[0.5, 4], [0.1, 1]]' or 'all-linear'")
        else:
            parser.add_argument(_flag(dest), dest=dest, type=str, default=None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a TrainConfig YAML file; flags override its values")
    _add_fields(parser, TrainConfig)
    for name, cls in NESTED.items():
        _add_fields(parser.add_argument_group(f"{name} section"), cls, prefix=f"{name}_")


def _nested_value(cls: type, name: str, value: Any, flag: str) -> Any:
    """A nested flag's value: list fields (e.g. --data-validation-databases '[flight_2]') are YAML."""
    return _yaml_flag(value, flag) if typing.get_origin(_kind(cls, name)) is list else value


def _yaml_flag(value: str, flag: str) -> Any:
    """A flag written as a YAML value, read as the config file is (aliases bounded); an error names the flag."""
    import yaml

    from ..common.errors import ConfigError
    from ..common.yaml_files import load_yaml

    try:
        return load_yaml(value, source=flag)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag}: not a YAML value ({' '.join(str(exc).split())[:300]}); write one, e.g. "
                          "'[[0.5, 4], [0.1, 1]]'") from None
    except RecursionError:
        raise ConfigError(f"{flag}: the YAML value nests too deep to read") from None


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line, as (nested) config values."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in NESTED:
            continue
        value = getattr(args, f.name, None)
        if value is not None:
            parse_yaml = f.name in ("reward_tiers", "lora_target_modules")
            values[f.name] = _yaml_flag(value, _flag(f.name)) if parse_yaml else value
    for name, cls in NESTED.items():
        nested = {f.name: _nested_value(cls, f.name, getattr(args, f"{name}_{f.name}"), _flag(f"{name}_{f.name}"))
                  for f in dataclasses.fields(cls) if getattr(args, f"{name}_{f.name}", None) is not None}
        if nested:
            values[name] = nested
    return values


def load_config(args: argparse.Namespace) -> TrainConfig:
    given = overrides(args)
    if args.config:
        return TrainConfig.from_yaml(args.config, **given)
    return TrainConfig.from_dict(given)


def run(args: argparse.Namespace) -> int:
    from ..retrieval.data import load_beir
    from ..training.retrieval import train
    from ..training.retrievers import build_search

    config = load_config(args)
    if config.task == "sql":  # text-to-SQL: data.path is a Spider-layout folder; the reward runs its databases
        from ..sql.train import train_from_config

        return train_from_config(config)
    if config.labels != "qrels":  # labels made from the documents, no judgments needed
        from ..training.synthetic_run import documents_retriever, labels_documents, training_labels

        retriever, path = documents_retriever(config.retriever, labels_documents(config), config.data.path)
        search = build_search(retriever, path)
        adapter = train(search, training_labels(config, search), config)
    else:
        if not config.data.path:
            raise ValueError("no training data: set data.path (--data-path) to a BEIR collection folder, or train "
                             "without judgments: --labels synthetic --synthesis-documents SCHEME:PATH")
        dataset = load_beir(config.data.path, config.data.split, drop_unknown_docs=config.data.drop_unknown_docs)
        search = build_search(config.retriever, config.data.path)
        adapter = train(search, dataset, config)
    print(f"adapter: {adapter}")
    print(f"serve it: deepretrieval serve --adapter {adapter.parent}")
    return 0
