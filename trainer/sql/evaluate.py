"""Execution accuracy of SQL sources on held-out databases, per database, with paired exact tests.

A source is ``gold`` (the reference SQL itself: the sanity row, 100% when the comparison is right), ``base``
(the untrained model), ``adapter:PATH`` (a trained SQL adapter) or ``server:URL#MODEL`` (a served one), each
optionally named ``NAME=SPEC``. Every source answers every example once (cached in the output folder, so re-runs
only execute); each answer runs read-only and is compared with the gold result. Pairs of sources are compared
with the exact McNemar test: a two-sided binomial test on the examples where exactly one of the two is right.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .rewards import MATCH, ExecutionScorer
from .schema import describe
from .spider import SQLCollection
from .writer import SQLGeneration, SQLWriter

logger = logging.getLogger(__name__)

GOLD = "gold"


@dataclass
class SQLSource:
    """A named SQL source: a writer, or None for the gold SQL. ``identity`` keys its cached answers."""

    name: str
    writer: SQLWriter | None = None
    identity: str = ""


def parse_sql_source(spec: str, *, model: str | None = None, max_new_tokens: int = 128,
                     batch_size: int = 8) -> SQLSource:
    """``gold``, ``base``, ``adapter:PATH``, ``server:URL#MODEL``, optionally as ``NAME=SPEC``."""
    name, _, body = spec.partition("=") if "=" in spec.split(":", 1)[0] else ("", "", spec)
    if body == GOLD:
        return SQLSource(name or GOLD)
    from ..rewriting.backends import FORMS, build_backend, is_backend

    if not is_backend(body):
        raise ValueError(f"SQL source {spec!r} not understood: use gold or {FORMS}, optionally named as NAME=SPEC "
                         "(raw and hyde rewrite queries for a retriever; they have no meaning for text-to-SQL)")
    backend = build_backend(body, model=model, task="sql", max_new_tokens=max_new_tokens, batch_size=batch_size)
    if backend.rewriter.task.name != "sql":
        raise ValueError(f"{spec}: the adapter was trained for task {backend.rewriter.task.name!r}, not text-to-SQL; "
                         "pass an adapter trained with --task sql")
    return SQLSource(name or backend.label, SQLWriter(backend=backend.rewriter), backend.identity)


@dataclass
class SQLOutcome:
    id: str
    db_id: str
    question: str
    sql: str | None
    correct: bool
    status: str  # match | mismatch | failed (an error, a timeout, too many rows) | no_answer
    reason: str | None
    latency_s: float


@dataclass
class PairedTest:
    first: str
    second: str
    first_only: int  # examples only ``first`` answers correctly
    second_only: int
    p_value: float
    test: str = "exact McNemar (two-sided binomial test on the discordant examples)"


@dataclass
class SQLReport:
    collection: str
    split: str
    databases: list[str]
    sources: dict[str, list[SQLOutcome]]
    tests: list[PairedTest] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def accuracy(self, source: str, db_id: str | None = None) -> float:
        outcomes = [o for o in self.sources[source] if db_id is None or o.db_id == db_id]
        return sum(o.correct for o in outcomes) / len(outcomes) if outcomes else 0.0

    def to_dict(self) -> dict:
        summary = {name: {"accuracy": self.accuracy(name), "examples": len(outcomes),
                          "per_database": {db: self.accuracy(name, db) for db in self.databases},
                          "no_answer_rate": sum(o.status == "no_answer" for o in outcomes) / max(len(outcomes), 1),
                          "failed_rate": sum(o.status == "failed" for o in outcomes) / max(len(outcomes), 1)}
                   for name, outcomes in self.sources.items()}
        return {"collection": self.collection, "split": self.split, "databases": self.databases,
                "settings": self.settings, "summary": summary, "paired_tests": [asdict(t) for t in self.tests],
                "per_example": {name: [asdict(o) for o in outcomes] for name, outcomes in self.sources.items()}}


def exact_mcnemar(first_only: int, second_only: int) -> float:
    """Two-sided exact binomial p-value of ``first_only`` vs ``second_only`` discordant pairs (p = 1/2)."""
    n = first_only + second_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(first_only, second_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_test(report: SQLReport, first: str, second: str) -> PairedTest:
    ours = {o.id: o.correct for o in report.sources[first]}
    theirs = {o.id: o.correct for o in report.sources[second]}
    if ours.keys() != theirs.keys():
        raise ValueError(f"sources {first!r} and {second!r} answered different examples")
    first_only = sum(ours[i] and not theirs[i] for i in ours)
    second_only = sum(theirs[i] and not ours[i] for i in ours)
    return PairedTest(first, second, first_only, second_only, exact_mcnemar(first_only, second_only))


def evaluate_sql(collection: SQLCollection, sources: Sequence[SQLSource], *, out_dir: str | Path | None = None,
                 batch_size: int = 8, sample_values: int = 0, progress: bool = True) -> SQLReport:
    """Answer, execute and score every example of ``collection`` with every source."""
    names = [s.name for s in sources]
    if not sources or len(set(names)) != len(names):
        raise ValueError(f"sources {names}: give at least one, each with a distinct name (NAME=SPEC)")
    schemas = {db_id: describe(db, sample_values=sample_values) for db_id, db in collection.databases.items()}
    scorer = ExecutionScorer(collection.databases)
    cache = Path(out_dir) / "generations" if out_dir is not None else None
    results: dict[str, list[SQLOutcome]] = {}
    for source in sources:
        answers = _answers(source, collection, schemas, cache, batch_size, progress)
        results[source.name] = [_score(scorer, example, answers[example.id]) for example in collection.examples]
    report = SQLReport(str(collection.path), collection.split, sorted(collection.databases), results,
                       settings={"batch_size": batch_size, "sample_values": sample_values,
                                 "fingerprint": collection.fingerprint, "examples": len(collection.examples)})
    report.tests = [paired_test(report, a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    return report


MAX_TEMPLATE_SHARE = 0.5  # a checkpoint that gives one query shape to more than this share has collapsed


@dataclass
class CheckpointChoice:
    """Which training step did best on the validation databases, and the figures behind the choice."""

    step: int  # 0: the base model (no checkpoint beat it)
    checkpoint: Path | None  # None when the base model is chosen
    accuracy: dict[int, float]  # step -> validation execution accuracy (0: the base model)
    report: SQLReport
    template_share: dict[int, float] = field(default_factory=dict)  # step -> share of its commonest query shape
    max_template_share: float = MAX_TEMPLATE_SHARE
    filters: dict = field(default_factory=dict)  # what the validation collection left out (its meta)
    gold_template_share: float = 0.0  # the gold SQL's own commonest shape share on these questions

    @property
    def cutoff(self) -> float:
        """The share above which a checkpoint has collapsed: ``max_template_share``, or the gold SQL's own share
        where that is higher (a set of questions the gold answers with one shape, half the time, is no sign of a
        template)."""
        return max(self.max_template_share, self.gold_template_share)

    @property
    def collapsed(self) -> list[int]:
        """The checkpoints not eligible: their commonest query shape answers more than :attr:`cutoff` of the
        questions. Step 0, the base model, is always eligible."""
        return sorted(step for step, share in self.template_share.items() if step != 0 and share > self.cutoff)

    def to_dict(self) -> dict:
        return {"chosen_step": self.step, "chosen_checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "rule": "highest validation execution accuracy among the base model (step 0) and the checkpoints "
                        f"whose commonest query shape answers at most {self.cutoff:.0%} of the questions; ties go to "
                        "the earliest step", "examples": self.report.settings.get("examples"),
                "databases": self.report.databases, "filters": self.filters,
                "gold_template_share": self.gold_template_share,
                "accuracy": {str(k): v for k, v in self.accuracy.items()},
                "template_share": {str(k): v for k, v in self.template_share.items()},
                "collapsed": self.collapsed,
                "correct": {name: sum(o.correct for o in outcomes) for name, outcomes in self.report.sources.items()}}


def best_step(accuracy: dict[int, float], excluded: Sequence[int] = ()) -> int:
    """The step with the highest accuracy, leaving out ``excluded`` steps; ties go to the earliest (the fewest
    updates away from the base). Step 0 (the base model) can never be excluded."""
    eligible = {step: value for step, value in accuracy.items() if step == 0 or step not in set(excluded)}
    if not eligible:
        raise ValueError("no steps to choose from")
    return min(eligible, key=lambda step: (-eligible[step], step))


def query_shape(sql: str) -> str:
    """``sql`` with every name and literal replaced by ``x``, lower-cased: ``SELECT count(*) FROM singer`` and
    ``select COUNT(*) from stadium`` have one shape, ``select x from x where x = x`` is another (a double-quoted
    value, which SQLite reads as a name when no column has it, has the same shape as a single-quoted one). SQL that
    does not parse is its own text."""
    from sqlglot import exp

    from .guard import UnsafeSQL, _parse

    try:
        trees = _parse(sql, "sqlite")
    except UnsafeSQL:
        return sql.strip().lower()
    if len(trees) != 1:
        return sql.strip().lower()

    def blank(node):
        return exp.to_identifier("x") if isinstance(node, (exp.Literal, exp.Identifier)) else node

    try:
        return trees[0].transform(blank).sql(dialect="sqlite").lower()
    except RecursionError:  # as deep as check_sql allows, from deep in a caller's stack
        return sql.strip().lower()


def template_share(answers: Sequence[str | None]) -> float:
    """The share of ``answers`` (one SQL text per question, or None for no answer: counted, never a shape) written
    in the commonest :func:`query_shape`: near 1 for a policy that collapsed to one template (``SELECT count(*) FROM
    <table>`` for every question), well under 1/2 for one that writes SQL for the question."""
    from collections import Counter

    shapes = Counter(query_shape(sql) for sql in answers if sql)
    return max(shapes.values()) / len(answers) if shapes else 0.0


def choose_checkpoint(collection: SQLCollection, checkpoints: Sequence[str | Path], *, out_dir: str | Path | None,
                      model: str | None = None, max_new_tokens: int = 128, batch_size: int = 8,
                      sample_values: int = 0, progress: bool = False,
                      max_template_share: float = MAX_TEMPLATE_SHARE) -> CheckpointChoice:
    """Score the base model and every ``checkpoint-N`` folder on ``collection`` (databases training never saw, not
    the held-out ones) greedily, and choose the step: :func:`best_step`, leaving out the checkpoints that collapsed
    to a template (the commonest :func:`query_shape` answers more than ``max_template_share`` of the questions, or
    than the gold SQL's own share where that is higher: :attr:`CheckpointChoice.cutoff`). A collapsed policy can
    still score on the validation questions its template happens to answer, and on no others. Answers are cached
    in ``out_dir``."""
    from ..training.run_dir import checkpoint_step

    if not 0 < max_template_share <= 1:
        raise ValueError(f"max_template_share={max_template_share!r}: give a share in (0, 1], e.g. 0.5 (1 = no limit)")
    folders = sorted((Path(c) for c in checkpoints), key=checkpoint_step)
    if not folders:
        raise ValueError("no checkpoints to choose from: keep them with save_steps / save_total_limit "
                         "(e.g. --save-total-limit 20) and point at RUN/checkpoints/checkpoint-N folders")
    specs = ["base"] + [f"step-{checkpoint_step(f)}=adapter:{f}" for f in folders]
    sources = [parse_sql_source(s, model=model, max_new_tokens=max_new_tokens, batch_size=batch_size) for s in specs]
    report = evaluate_sql(collection, sources, out_dir=out_dir, batch_size=batch_size, sample_values=sample_values,
                          progress=progress)
    report.tests = [t for t in report.tests if t.first == "base"]  # each step against the base, not every pair
    names = {0: "base", **{checkpoint_step(f): f"step-{checkpoint_step(f)}" for f in folders}}
    accuracy = {step: report.accuracy(name) for step, name in names.items()}
    shares = {step: template_share([o.sql for o in report.sources[name]]) for step, name in names.items()}
    gold = template_share([e.gold_sql for e in collection.examples])
    choice = CheckpointChoice(0, None, accuracy, report, shares, max_template_share, dict(collection.meta), gold)
    choice.step = best_step(accuracy, excluded=choice.collapsed)
    choice.checkpoint = next((f for f in folders if checkpoint_step(f) == choice.step), None)
    return choice


def _score(scorer: ExecutionScorer, example, answer: SQLGeneration) -> SQLOutcome:
    if not answer.ok:
        return SQLOutcome(example.id, example.db_id, example.question, None, False, "no_answer", answer.reason,
                          answer.latency_s)
    outcome, result = scorer.outcome(example.db_id, answer.sql, example.gold_sql, example.gold_rows, example.ordered)
    status = "match" if outcome == MATCH else "failed" if result is None or not result.ok else "mismatch"
    reason = result.error if result is not None and not result.ok else None
    return SQLOutcome(example.id, example.db_id, example.question, answer.sql, outcome == MATCH, status, reason,
                      answer.latency_s)


def _answers(source: SQLSource, collection: SQLCollection, schemas: dict[str, str], cache: Path | None,
             batch_size: int, progress: bool) -> dict[str, SQLGeneration]:
    if source.writer is None:
        return {e.id: SQLGeneration(e.question, e.gold_sql, e.gold_sql is not None,
                                    None if e.gold_sql else "the example gives rows, not SQL")
                for e in collection.examples}
    file = cache / f"{source.name.replace(':', '_')}.jsonl" if cache is not None else None
    identity = hashlib.sha256(source.identity.encode()).hexdigest()[:16] if source.identity else ""
    answers = _read_cache(file, identity) if file is not None and identity else {}
    todo = [e for e in collection.examples if e.id not in answers]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"writing SQL ({source.name})", unit="q", disable=not progress or not todo,
               leave=False)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        begun = time.perf_counter()
        written = source.writer.write([(e.question, schemas[e.db_id]) for e in batch])
        per_question = (time.perf_counter() - begun) / len(batch)
        for example, answer in zip(batch, written, strict=True):
            answers[example.id] = SQLGeneration(answer.question, answer.sql, answer.ok, answer.reason,
                                                answer.completion, per_question)
        if file is not None and identity:
            _write_cache(file, identity, source, answers)
        bar.update(len(batch))
    bar.close()
    return answers


def _read_cache(file: Path, identity: str) -> dict[str, SQLGeneration]:
    if not file.is_file():
        return {}
    lines = file.read_text(encoding="utf-8").splitlines()
    try:
        header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    except (ValueError, IndexError):
        logger.warning("%s: unreadable answer cache; writing the SQL again", file)
        return {}
    if header.get("identity") != identity:
        return {}
    return {row.pop("id"): SQLGeneration(**row) for row in rows}


def _write_cache(file: Path, identity: str, source: SQLSource, answers: dict[str, SQLGeneration]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"identity": identity, "source": source.name, "described": source.identity})]
    lines += [json.dumps({"id": key, **asdict(answer)}) for key, answer in answers.items()]
    staging = file.with_suffix(".tmp")
    staging.write_text("\n".join(lines) + "\n", encoding="utf-8")
    staging.replace(file)


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def format_sql_table(report: SQLReport, *, markdown: bool = False) -> str:
    """Execution accuracy per source, overall and per database, then the paired tests."""
    header = ["source", "all", *report.databases, "no answer", "failed"]
    summary = report.to_dict()["summary"]
    rows = [[name, f"{s['accuracy']:.1%}", *(f"{s['per_database'][db]:.1%}" for db in report.databases),
             f"{s['no_answer_rate']:.1%}", f"{s['failed_rate']:.1%}"] for name, s in summary.items()]
    tests = [f"{t.first} vs {t.second}: {t.first_only} examples only {t.first} answers, {t.second_only} only "
             f"{t.second}, exact McNemar p = {_p(t.p_value)}" for t in report.tests]
    title = (f"execution accuracy, {report.collection} [{report.split}], {report.settings.get('examples')} examples "
             f"on {len(report.databases)} databases")
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines + [""] + [f"- {t}" for t in tests]) + "\n"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines + tests)


def write_sql_outputs(report: SQLReport, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=1, default=str) + "\n", encoding="utf-8")
    paths["markdown"].write_text(format_sql_table(report, markdown=True), encoding="utf-8")
    return paths


def run_from_args(args) -> int:
    """``deepretrieval eval --task sql``: the eval command's flags (data, split, sources, model, limit, out)."""
    from .spider import load_sql_examples

    model, data = args.model, args.data
    if args.config:
        from ..training.config import TrainConfig

        config = TrainConfig.from_yaml(args.config)
        model, data = model or config.model, data or config.data.path
    if not data:
        raise ValueError("no examples: pass --data FOLDER (Spider layout, e.g. ../shared/data/spider)")
    collection = load_sql_examples(data, args.split, limit=args.limit)
    specs = args.sources or [GOLD, "base"]
    sources = [parse_sql_source(s, model=model, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
               for s in specs]
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{Path(data).name}-sql-{args.split}"
    report = evaluate_sql(collection, sources, out_dir=out, batch_size=args.batch_size, progress=not args.no_progress)
    paths = write_sql_outputs(report, out)
    print(format_sql_table(report))
    print(f"\nresults: {paths['markdown']}  {paths['json']}")
    return 0
