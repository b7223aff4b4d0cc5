"""The training configuration: one dataclass, loadable from YAML, validated before anything heavy loads.

Every field is a CLI flag of ``deepretrieval train`` (``--learning-rate``; nested ``--data-path``,
``--retriever-framework``). TRL 1.16 changed several GRPO defaults, so the ones that shape learning
(``beta``, ``loss_type``, ``learning_rate``, ``num_generations``, ``max_completion_length``, ``temperature``)
are set here explicitly and passed through.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args

from ..common.errors import ConfigError
from ..common.fields import bounded_repr, check_fields
from ..common.precision import DTYPES
from ..retrieval.framing import check_framing
from ..rewriting.tasks import TASKS, Task, Tiers, get_task
from .rewards import UNUSABLE_REWARDS, check_echo_penalty
from .synthesis_config import SYNTHETIC_TASKS, SynthesisConfig

logger = logging.getLogger(__name__)

LossType = Literal["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo"]
VllmMode = Literal["colocate", "server"]
Framework = Literal["llamaindex", "haystack", "bm25s"]
RetrieverKind = Literal["bm25", "storage", "pipeline", "store"]
Framing = Literal["replace", "expand", "fuse", "steer"]
# Spider's hardness levels, easiest first (deepretrieval_trainer.sql.hardness grades a query into one of them)
Hardness = Literal["easy", "medium", "hard", "extra"]

# which retriever kinds each framework can build
FRAMEWORK_KINDS: dict[str, tuple[str, ...]] = {
    "llamaindex": ("bm25", "storage"),
    "haystack": ("bm25", "pipeline", "store"),
    "bm25s": ("bm25",),
}


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={bounded_repr(value)} is not supported: choose one of {list(choices)}")


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={bounded_repr(value)} must be a number {bound}")


@dataclass
class DataConfig:
    """Where the training queries and their judgments come from (a BEIR-layout folder and a qrels split)."""

    path: str = ""
    split: str = "train"
    drop_unknown_docs: bool = False
    # text-to-SQL only: train on the examples whose gold SQL is at most this hard by Spider's rules
    # (Hardness; deepretrieval_trainer.sql.hardness); None: all of the split
    max_hardness: str | None = None
    # text-to-SQL only: leave out the examples a whole-table count answers (deepretrieval_trainer.sql.spider)
    drop_table_counts: bool = False
    # text-to-SQL only: databases of data.split that training leaves out, kept to choose the checkpoint on
    # (deepretrieval_trainer.sql.train.validation_collection; docs/sql.md)
    validation_databases: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_fields(self, prefix="data.", error=ConfigError)
        if self.max_hardness is not None:
            _choice("data.max_hardness", self.max_hardness, get_args(Hardness))
        if self.path and not Path(self.path).expanduser().is_dir():
            raise ConfigError(f"data.path={bounded_repr(self.path)} is not a folder: give a BEIR collection folder "
                              "(corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")


@dataclass
class RetrieverConfig:
    """How the CLI builds the host retriever that the reward searches (:func:`.retrievers.build_search`).

    ``llamaindex``: ``bm25`` over a BEIR corpus (``path``, default ``data.path``) or ``storage`` (a persisted index
    folder in ``path``); ``haystack``: ``bm25`` over a corpus, ``pipeline`` (a pipeline YAML in ``path`` with
    optional ``input_socket``/``output_socket``/``id_meta_key``) or ``store`` (BM25 over an ``InMemoryDocumentStore``
    saved with ``save_to_disk`` in ``path``); ``bm25s``: the core in-process BM25 for quick runs.
    """

    framework: str = "bm25s"
    kind: str = "bm25"
    path: str = ""
    input_socket: str | None = None
    output_socket: str | None = None
    id_meta_key: str | None = None
    id_key: str | None = None

    def __post_init__(self) -> None:
        check_fields(self, prefix="retriever.", error=ConfigError)
        _choice("retriever.framework", self.framework, get_args(Framework))
        kinds = FRAMEWORK_KINDS[self.framework]
        if self.kind not in kinds:
            raise ConfigError(f"retriever.kind={self.kind!r} is not available for {self.framework}: choose one of {list(kinds)}")
        if self.kind in ("storage", "pipeline", "store") and not self.path:
            what = {"storage": "a persisted LlamaIndex storage folder", "pipeline": "a Haystack pipeline YAML file",
                    "store": "a JSON file written by InMemoryDocumentStore.save_to_disk"}[self.kind]
            raise ConfigError(f"retriever.kind={self.kind!r} needs retriever.path: give {what}")
        if self.path and not Path(self.path).expanduser().exists():
            raise ConfigError(f"retriever.path={bounded_repr(self.path)} does not exist: fix the path")


@dataclass
class TrainConfig:
    """Everything a GRPO run needs besides the retriever and the data."""

    # model, task and run directory
    model: str | None = None
    task: str = "retrieval"
    run_dir: str = "runs/deepretrieval"
    resume: bool = False
    seed: int = 0
    # schedule
    max_steps: int = 100
    max_minutes: float | None = None  # stop (and save) after this much training time
    save_steps: int = 25
    save_total_limit: int = 2
    prompts_per_step: int = 2
    gradient_accumulation_steps: int = 1
    max_queries: int | None = None
    # train only on queries whose raw query scores below this under the training reward (the task metric at reward_k,
    # searched through the same retriever before training): where the user's own query already ranks perfectly, every
    # rewrite can only tie or lose, and most such groups score alike and teach nothing. None = every query. Retrieval
    # tasks only.
    max_raw_reward: float | None = None
    # task steer only: train only on queries where choosing among the candidate terms changes the training reward by
    # at least this much (the reward's spread over keeping every candidate, none, and 16 random halves, searched once
    # before training through the same retriever). Where every choice scores alike, every group of samples does too,
    # and teaches nothing. None = every query.
    min_choice_spread: float | None = None
    # GRPO (TRL) - explicit, since TRL 1.16 changed its defaults. The defaults are the measured CPU recipe for the
    # embedded 135M model: the format-valid rate of sampled rewrites went from 0.69 (step 1) to 0.95 on average over
    # steps 6-40 with these values, while lr 1e-4 with 56 tokens averaged 0.39 over the last fifth of 37 steps
    # (docs/experiments/retrieval-recipes.md#does-the-cpu-recipe-more-samples-128-tokens-lr-5e-4-make-grpo-learn-under-expand).
    # For a ~3B model use lr ~1e-5 (the GPU recipe in docs/training.md).
    learning_rate: float = 5e-4
    beta: float = 0.0
    loss_type: str = "dapo"
    num_generations: int = 8
    max_completion_length: int = 128  # the think block + answer need ~50-90 tokens; 56-64 truncated most samples
    temperature: float = 0.8
    top_p: float = 1.0
    scale_rewards: str = "group"
    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    # 0: the policy scored in the loss is the one sampled (the merged twin has no dropout), and the dropout masks were
    # 3 s of a 20 s bf16 step (docs/experiments/cpu-speed.md#the-grpo-step-without-lora-dropout)
    lora_dropout: float = 0.0
    lora_target_modules: Union[str, list[str]] = "all-linear"
    # reward
    reward_k: int | None = None
    reward_tiers: list[list[float]] | None = None
    reward_floor: float | None = None
    reward_scale: float | None = None
    format_valid: float | None = None
    format_invalid: float | None = None
    # task sql only: a query that runs but returns the wrong result earns this share of the step up to a match, times
    # the Jaccard of its tables and columns with the gold SQL's (sql/linking.py; Reasoning-SQL's schema-linking
    # reward); 0 = off. Needs gold SQL (examples with gold rows only get none). Not yet measured.
    sql_partial_credit: float = 0.0
    # how a rewrite is searched (retrieval/framing.py): replace (the rewrite alone), expand (the query, then the
    # rewrite), fuse (the two apart, scores summed), steer (task "steer": RM3 restricted to the candidate terms the
    # answer keeps)
    framing: str = "replace"
    # expand and fuse: how many times the original query is searched beside the rewrite (bm25s-based retrievers weight
    # a repeated token by its count under expand; fuse weights the original's scores, any retriever); steer: the
    # original query's share of the weights is query_weight / (query_weight + 1) (1: RM3's 0.5)
    query_weight: int = 1
    # what the retrieval reward gives a completion with no usable query: "zero" (the format reward penalizes it) or
    # "raw": the raw query's own score, which is what deployment searches when the model's output is unusable (the
    # components fall back to the raw query), so a sample is rewarded only as far as it beats falling back
    unusable_reward: str = "zero"
    # expand and fuse: subtracted from the retrieval reward of a rewrite that adds no word the user's query lacks (an
    # echo or a subset, which ranks about as the raw query does); 0 = off. Without it the embedded model's demo adapter
    # drifted toward echoing (rewrites adding nothing: 23% -> 61% of NFCorpus dev queries), and so toward the raw query
    echo_penalty: float = 0.0
    # feedback-conditioned prompts: show the model the titles (or leading sentences) of the raw query's top
    # feedback_docs first-pass documents from the same retriever (deepretrieval_trainer.rewriting.feedback); 0 = the paper's
    # query-only prompt
    feedback_docs: int = 0
    search_cache_size: int = 200_000
    search_batch_size: int = 64
    search_concurrency: int = 1
    # seconds one reward search batch may take (None: no limit). A retriever that hangs then fails the step with a
    # TrainingError naming it, and --resume continues from the last checkpoint (HTTP engines have their own deadline)
    search_timeout: float | None = None
    # hardware: one dtype for the policy's forward/backward and generation (precision.py). "auto" is bfloat16 where the
    # machine has bf16 units (this CPU's AMX), float32 elsewhere; LoRA weights and optimizer state stay float32.
    dtype: str = "auto"
    # "merged": sample from an adapter-free copy of the policy with the LoRA delta merged in, refreshed each step
    # (generation.py; no per-layer adapter work per token), through transformers' generate(); "lean": the same twin
    # through generation.lean_generate (each group's prompt prefilled once, an in-place KV cache, inverse-CDF sampling
    # instead of torch.multinomial; falls back to generate() for settings it does not implement); "trl": TRL's own
    # sampling through the peft model.
    sampler: str = "lean"
    # score each distinct prompt once per group of samples, not once per sample (prompt_sharing.py): same numbers
    share_prompts: bool = True
    # DAPO's dynamic-sampling filter, without resampling: groups whose samples all scored alike (advantage 0, so no
    # policy gradient) are left out of the loss and the backward pass (trl_trainer.uniform_group_rows); the loss is then
    # normalised over the tokens of the groups that teach something. Needs gradient_accumulation_steps 1.
    drop_uniform_groups: bool = False
    torch_threads: int | None = None  # 1 on a busy shared CPU: oversubscribed threads measured >10x slower
    gradient_checkpointing: bool = False
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_server_base_url: str | None = None
    vllm_gpu_memory_utilization: float = 0.3
    # where the training labels come from: "qrels" (data.path's qrels/<data.split>.tsv), "synthetic" (made from the
    # documents before training, as the synthesis section says, and kept in the run folder) or the folder a
    # `deepretrieval synthesize` wrote
    labels: str = "qrels"
    # CLI only: where the data and the retriever come from
    data: DataConfig = field(default_factory=DataConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = _build(DataConfig, self.data, "data")
        if isinstance(self.retriever, dict):
            self.retriever = _build(RetrieverConfig, self.retriever, "retriever")
        if isinstance(self.synthesis, dict):
            self.synthesis = _build(SynthesisConfig, self.synthesis, "synthesis")
        check_fields(self, error=ConfigError)  # every field against its annotation, fields added later included
        _choice("task", self.task, tuple(TASKS))
        if self.data.max_hardness is not None and self.task != "sql":
            raise ConfigError(f"data.max_hardness={self.data.max_hardness!r} grades gold SQL (Spider's levels): it "
                              f"applies to task 'sql', not {self.task!r}; remove it")
        if self.data.drop_table_counts and self.task != "sql":
            raise ConfigError(f"data.drop_table_counts=true leaves out SQL examples a whole-table count answers: it "
                              f"applies to task 'sql', not {self.task!r}; remove it")
        if self.data.validation_databases and self.task != "sql":
            raise ConfigError(f"data.validation_databases={bounded_repr(self.data.validation_databases)} holds SQL "
                              f"databases out of training: it applies to task 'sql', not {self.task!r}; remove it")
        self._check_labels()
        _positive("sql_partial_credit", self.sql_partial_credit, allow_zero=True)
        if self.sql_partial_credit >= 1:
            raise ConfigError(f"sql_partial_credit={self.sql_partial_credit!r} must be below 1 (0 = off, e.g. 0.5): "
                              "at 1 a wrong result on the gold's tables and columns would score as much as a right one")
        if self.sql_partial_credit and self.task != "sql":
            raise ConfigError(f"sql_partial_credit={self.sql_partial_credit!r} pays partial credit to SQL that runs "
                              f"but differs: it applies to task 'sql', not {self.task!r}; remove it")
        _choice("loss_type", self.loss_type, get_args(LossType))
        _choice("vllm_mode", self.vllm_mode, get_args(VllmMode))
        _choice("framing", self.framing, get_args(Framing))
        _choice("unusable_reward", self.unusable_reward, UNUSABLE_REWARDS)
        try:
            check_framing(self.framing, self.query_weight)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            check_echo_penalty(self.echo_penalty, self.framing)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        terms = TASKS[self.task].feedback is not None and TASKS[self.task].feedback.field == "terms"
        if self.framing == "steer" and not terms:
            raise ConfigError(f"framing 'steer' with task={self.task!r}: it weights the candidate terms that a "
                              "corpus-steered prompt shows, so it needs task 'steer'; set task: steer, or another "
                              "framing")
        _choice("dtype", self.dtype, DTYPES)
        _choice("sampler", self.sampler, ("lean", "merged", "trl"))
        _choice("scale_rewards", self.scale_rewards, ("group", "batch", "none"))
        if self.drop_uniform_groups and self.gradient_accumulation_steps != 1:
            raise ConfigError(f"drop_uniform_groups needs gradient_accumulation_steps=1 (got "
                              f"{self.gradient_accumulation_steps}): it filters the batch of the one update per "
                              "generation; raise prompts_per_step instead")
        for name in ("max_steps", "save_steps", "save_total_limit", "prompts_per_step", "gradient_accumulation_steps",
                     "max_completion_length", "lora_r", "lora_alpha", "search_batch_size", "search_concurrency"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={bounded_repr(value)} must be a positive integer")
        if not isinstance(self.num_generations, int) or self.num_generations < 2:
            raise ConfigError(f"num_generations={bounded_repr(self.num_generations)}: GRPO compares samples of the "
                              "same prompt, so it needs at least 2")
        for name in ("learning_rate", "temperature", "top_p"):
            _positive(name, getattr(self, name))
        _positive("beta", self.beta, allow_zero=True)
        _positive("search_cache_size", self.search_cache_size, allow_zero=True)
        if self.top_p > 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1]")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if not isinstance(self.feedback_docs, int) or isinstance(self.feedback_docs, bool) or self.feedback_docs < 0:
            raise ConfigError(f"feedback_docs={bounded_repr(self.feedback_docs)} must be an integer >= 0 "
                              "(0: query-only prompt)")
        if self.reward_k is not None and (not isinstance(self.reward_k, int) or self.reward_k < 1):
            raise ConfigError(f"reward_k={bounded_repr(self.reward_k)} must be a positive integer "
                              "(or null for the task's train k)")
        if self.max_minutes is not None:
            _positive("max_minutes", self.max_minutes)
        if self.search_timeout is not None:
            _positive("search_timeout", self.search_timeout)
        if self.torch_threads is not None and (not isinstance(self.torch_threads, int) or self.torch_threads < 1):
            raise ConfigError(f"torch_threads={bounded_repr(self.torch_threads)} must be a positive integer "
                              "(or null for torch's default)")
        if self.min_choice_spread is not None:
            _positive("min_choice_spread", self.min_choice_spread, allow_zero=True)
            if self.framing != "steer":
                raise ConfigError(f"min_choice_spread={self.min_choice_spread!r} measures choices among candidate "
                                  f"terms: it applies to framing 'steer', not {self.framing!r}; remove it")
        if self.max_raw_reward is not None and self.task == "sql":
            raise ConfigError(f"max_raw_reward={self.max_raw_reward!r} filters retrieval queries by their raw query's "
                              "reward: it does not apply to task 'sql'; remove it (data.max_hardness picks easy SQL)")
        if self.max_queries is not None and (not isinstance(self.max_queries, int) or self.max_queries < 1):
            raise ConfigError(f"max_queries={bounded_repr(self.max_queries)} must be a positive integer "
                              "(or null for all)")
        if self.use_vllm and self.vllm_mode == "server" and not self.vllm_server_base_url:
            logger.info("use_vllm with vllm_mode='server' and no vllm_server_base_url: TRL connects to 0.0.0.0:8000")
        self.build_task()  # validates tiers and format bonuses

    def _check_labels(self) -> None:
        if self.labels == "qrels":
            return
        if self.task not in SYNTHETIC_TASKS:
            raise ConfigError(f"labels={bounded_repr(self.labels)} gives each query one relevant document: it applies "
                              f"to tasks {list(SYNTHETIC_TASKS)}, not {self.task!r}; set labels: qrels")
        if self.labels != "synthetic" and not (Path(self.labels).expanduser() / "synthesis.json").is_file():
            raise ConfigError(f"labels={bounded_repr(self.labels)}: choose qrels, synthetic, or a folder written by "
                              "`deepretrieval synthesize` (it holds synthesis.json)")
        if self.labels == "synthetic" and not (self.synthesis.documents or self.data.path):
            raise ConfigError("labels=synthetic needs documents: set synthesis.documents (--synthesis-documents "
                              "beir:PATH | llamaindex:PATH | haystack:PATH) or data.path (a BEIR folder)")

    def build_task(self) -> Task:
        """The task with this config's reward overrides applied."""
        task = get_task(self.task)
        changes: dict[str, Any] = {}
        if self.reward_k is not None:
            changes["train_k"] = self.reward_k
        if self.reward_tiers is not None or self.reward_floor is not None:
            changes["tiers"] = self._tiers(task)
        for name in ("reward_scale", "format_valid", "format_invalid"):
            if getattr(self, name) is not None:
                changes[name] = float(getattr(self, name))
        task = dataclasses.replace(task, **changes) if changes else task
        if self.feedback_docs:
            from ..rewriting.tasks import with_feedback

            task = with_feedback(task, self.feedback_docs)
        return task

    def _tiers(self, task: Task) -> Tiers:
        base = task.tiers
        steps = self.reward_tiers if self.reward_tiers is not None else (base.steps if base else None)
        if steps is None:
            raise ConfigError(f"reward_floor is set but task {self.task!r} has no tiers: also give reward_tiers "
                              "as [[threshold, reward], ...]")
        try:
            pairs = tuple((float(t), float(r)) for t, r in steps)
        except (TypeError, ValueError):
            raise ConfigError(f"reward_tiers={bounded_repr(steps)} must be a list of [threshold, reward] "
                              "pairs") from None
        floor = self.reward_floor if self.reward_floor is not None else (base.floor if base else 0.0)
        higher = base.higher_is_better if base else task.metric != "hit_rank"
        try:
            return Tiers(pairs, floor=float(floor), higher_is_better=higher)
        except ValueError as exc:
            raise ConfigError(f"reward_tiers: {exc}") from None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict (e.g. parsed YAML); unknown keys are warned about and ignored."""
        if isinstance(values, dict) and "bf16" in values:  # the field `dtype` replaced (older config files)
            values = dict(values)
            old = values.pop("bf16")
            values.setdefault("dtype", "bfloat16" if old is True else "float32" if old is False else old)
            logger.warning("config key bf16 is replaced by dtype (auto | float32 | bfloat16): read bf16=%r as "
                           "dtype=%r", old, values["dtype"])
        return _build(cls, values, "")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        import yaml

        from ..common.yaml_files import load_yaml

        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{file}: no such config file")
        try:
            values = load_yaml(file.read_text(encoding="utf-8"), source=str(file)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML ({exc})") from None
        except RecursionError:
            raise ConfigError(f"{file}: the YAML nests too deep to read; a config is a mapping of field: value "
                              "with data: and retriever: sections") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of field: value")
        for key, value in overrides.items():
            if isinstance(value, dict):
                values.setdefault(key, {}).update(value)
            else:
                values[key] = value
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"{prefix}." if prefix else ""
        logger.warning("ignoring unknown config keys %s (from a newer version or a typo?); known: %s",
                       [where + k for k in unknown], sorted(known))
    try:
        return cls(**{k: v for k, v in values.items() if k in known})
    except TypeError as exc:
        raise ConfigError(f"{prefix or 'config'}: {exc}") from None
