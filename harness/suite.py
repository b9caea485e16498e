"""Suite files: the schema, loading with errors that name the file and field, and expansion into trials.

A suite is pure data. ``load_suite`` checks everything that can be checked before a trial runs — types and unknown
keys (pydantic, ``extra="forbid"``), then the cross-field rules against the dataset's metadata and the method
registry — and reports *all* problems at once, each as ``FILE: field.path: message``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pydantic
import yaml

from harness.api import Budget
from harness.data import DataSourceError, DatasetConfig, DatasetInfo, dataset_info
from harness.metrics.config import ADDED_FIELDS as EVALUATION_ADDED_FIELDS
from harness.metrics.config import EvaluationConfig
from harness.registry import DATASETS, METHODS, UnknownNameError

if TYPE_CHECKING:
    from collections.abc import Callable

    from harness.data.verify import ImageCheck

_STRICT = pydantic.ConfigDict(extra="forbid", frozen=True)


class SuiteError(ValueError):
    """One or more problems in a suite file; ``problems`` holds ``(field_path, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


class ClassPartition(pydantic.BaseModel):
    """One explicit partition of the classes: which are base, which novel, which base classes validate."""

    model_config = _STRICT

    base: list[int | str] = pydantic.Field(description="classes with all their training images")
    novel: list[int | str] = pydantic.Field(min_length=1, description="classes with `shots` images each")
    validation: list[int | str] = pydantic.Field(default_factory=list, description="base classes that validate")


class RandomPartitions(pydantic.BaseModel):
    """``random`` partitions of the protocol's classes (base ∪ novel) drawn from ``seed``: ``novel_count`` novel
    classes each, the rest base, as many validation classes (from the base) as the protocol has."""

    model_config = _STRICT

    random: pydantic.PositiveInt = pydantic.Field(description="how many partitions beside the protocol's own")
    novel_count: pydantic.PositiveInt
    seed: pydantic.NonNegativeInt = 0


class ProtocolConfig(pydantic.BaseModel):
    """The few-shot protocol: which classes a method learns from in full, which from ``shots`` images each."""

    model_config = _STRICT

    base_classes: list[int | str] = pydantic.Field(description="classes with all their training images")
    novel_classes: list[int | str] = pydantic.Field(min_length=1, description="classes with `shots` images each")
    shots: list[pydantic.PositiveInt] = pydantic.Field(min_length=1, description="images per novel class")
    seeds: list[int] = pydantic.Field(min_length=1, description="one trial per seed; the seed picks the shots")
    eval_images_per_class: pydantic.PositiveInt | None = pydantic.Field(
        None, description="held-out test images per novel class used for evaluation; default all"
    )
    base_images_per_class: pydantic.PositiveInt | None = pydantic.Field(
        None, description="cap on base-class training images per class; default all"
    )
    validation_classes: list[int | str] = pydantic.Field(
        default_factory=list,
        description="base classes that play the novel role while choosing (sweeps, ASHA): reduced to `shots` images, "
        "scored on their own held-out training images, so no choice ever sees a novel class or a test image",
    )
    score_on: Literal["test", "validation"] = pydantic.Field(
        "test", description="test: trials are the protocol's (novel classes, scored on their test images); "
        "validation: every trial is a selection trial (each split's validation classes play the novel role, scored "
        "on their held-out training images), for ablations and choices of defaults that must not see test images",
    )
    class_splits: list[ClassPartition] | RandomPartitions | None = pydantic.Field(
        None, description="partitions of the classes beside the one above (which is split 0): explicit "
        "{base, novel, validation} entries or {random: N, novel_count: M, seed: S}; trials = method × split × shots "
        "× seed, so a method's numbers do not rest on one choice of novel classes",
    )

    @pydantic.field_validator("shots", "seeds")
    @classmethod
    def _unique(cls, values: list[int]) -> list[int]:
        if len(set(values)) != len(values):
            raise ValueError(f"values must be unique, got {values}")
        return values


class BudgetOverride(pydantic.BaseModel):
    model_config = _STRICT

    steps: pydantic.PositiveInt | None = None
    epochs: pydantic.PositiveInt | None = pydantic.Field(
        None, description="passes over the method's training set instead of steps (methods that count epochs)"
    )
    batch_size: pydantic.PositiveInt | None = None
    log_every: pydantic.PositiveInt | None = None
    checkpoint_every: pydantic.NonNegativeInt | None = None


class MethodEntry(pydantic.BaseModel):
    model_config = _STRICT

    name: str = pydantic.Field(description="registered method name (`harness methods` lists them)")
    label: str | None = pydantic.Field(
        None, pattern=r"^[A-Za-z0-9_.+-]+$", description="display name, unique in the suite; default the name"
    )
    params: dict[str, Any] = pydantic.Field(default_factory=dict, description="fields of the method's Config")
    budget: BudgetOverride | None = pydantic.Field(None, description="overrides of the suite budget")
    data: Literal["few", "full"] = pydantic.Field(
        "few", description="few: the protocol's `shots` images of each novel class; full: every training image of "
        "the novel classes (never a test image) -- an oracle reference, reported apart and never ranked with the "
        "few-shot methods",
    )

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def reference(self) -> bool:
        """A ``data: full`` entry: an upper bound to read the few-shot methods against, not a contender."""
        return self.data == "full"


class ResourcesConfig(pydantic.BaseModel):
    model_config = _STRICT

    cpu: float = pydantic.Field(1.0, gt=0, description="CPUs per trial (= torch threads)")
    gpu: float = pydantic.Field(0.0, ge=0, description="GPUs per trial; fractions share a GPU")
    max_failures: int = pydantic.Field(
        1, ge=0, description="Ray executor: restarts of a crashed trial (from its last checkpoint); diverged trials "
        "(NaN loss) are never retried"
    )


class ParamSpace(pydantic.BaseModel):
    """One dimension of a sweep: exactly one of ``int``, ``uniform``, ``loguniform`` (``[low, high]``) or ``choice``."""

    model_config = _STRICT

    int_: tuple[int, int] | None = pydantic.Field(None, alias="int")
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    choice: list[Any] | None = pydantic.Field(None, min_length=1)

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> ParamSpace:
        given = [k for k in ("int_", "uniform", "loguniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of int, uniform, loguniform, choice")
        bounds = self.int_ or self.uniform or self.loguniform
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"low must be below high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        return self


class AshaConfig(pydantic.BaseModel):
    """Early stopping of a sweep's trials by asynchronous successive halving (ASHA; Li et al., "A System for
    Massively Parallel Hyperparameter Tuning", MLSys 2020) through Tune's ``ASHAScheduler``.

    Trials evaluate the sweep metric every ``eval_every`` steps while they train; at the rungs ``grace_period ×
    reduction_factor^k`` steps a trial outside the best ``1 / reduction_factor`` of the trials measured at that rung
    so far is stopped. Stopped trials are kept (status ``stopped``, their intermediate values) and enter the Optuna
    study as pruned; the best configuration is chosen among trials that ran the whole budget.
    """

    model_config = _STRICT

    grace_period: pydantic.PositiveInt = pydantic.Field(description="steps every trial runs before it may be stopped")
    # 4: Tune's default and the ASHA paper's benchmarks (η = 4)
    reduction_factor: float = pydantic.Field(4.0, gt=1, description="keep the best 1/reduction_factor at each rung")
    eval_every: pydantic.PositiveInt | None = pydantic.Field(
        None, description="steps between intermediate evaluations of the sweep metric; default grace_period"
    )

    @property
    def evaluation_interval(self) -> int:
        return self.eval_every or self.grace_period


class SweepConfig(pydantic.BaseModel):
    model_config = _STRICT

    method: str = pydantic.Field(description="label of the suite method whose params are searched")
    metric: str
    mode: Literal["min", "max"]
    num_samples: pydantic.PositiveInt = 16
    max_concurrent: pydantic.PositiveInt | None = None
    space: dict[str, ParamSpace] = pydantic.Field(min_length=1)
    asha: AshaConfig | None = pydantic.Field(None, description="early stopping of unpromising trials; default none")
    select_on: Literal["validation", "test"] = pydantic.Field(
        "validation",
        description="validation: score configurations on protocol.validation_classes (the default, and the only "
        "choice that keeps the final scores unseen); test: on the novel classes' held-out test images, flagged in "
        "every result and the report",
    )


class Suite(pydantic.BaseModel):
    model_config = _STRICT

    name: str = pydantic.Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="also the MLflow experiment name")
    version: pydantic.PositiveInt = 1
    description: str = ""
    dataset: DatasetConfig
    protocol: ProtocolConfig
    methods: list[MethodEntry] = pydantic.Field(min_length=1)
    budget: Budget
    evaluation: EvaluationConfig = pydantic.Field(default_factory=EvaluationConfig)
    resources: ResourcesConfig = pydantic.Field(default_factory=ResourcesConfig)
    sweep: SweepConfig | None = None

    def method_entry(self, label: str) -> MethodEntry:
        return next(m for m in self.methods if m.display == label)


class TrialSpec(pydantic.BaseModel):
    """Everything one trial computes from: (method, params, dataset split, shots, seed) and its budget."""

    model_config = _STRICT

    suite: str
    suite_version: int
    method: str
    label: str
    params: dict[str, Any]
    dataset: DatasetConfig
    base_classes: tuple[int, ...]
    novel_classes: tuple[int, ...]
    shots: int
    seed: int
    eval_images_per_class: int | None
    base_images_per_class: int | None
    budget: Budget
    evaluation: EvaluationConfig
    resources: ResourcesConfig
    selection: Literal["none", "validation", "test"] = pydantic.Field(
        "none", description="none: a trial of the protocol; validation: a selection trial whose novel classes are "
        "validation classes, held out from their training images; test: a selection trial scored on test images")
    split: int = pydantic.Field(0, ge=0, description="which class partition (0: the protocol's own)")
    data: Literal["few", "full"] = pydantic.Field(
        "few", description="few: `shots` training images per novel class; full: all of them, an oracle reference")
    method_defaults: int = pydantic.Field(
        1, ge=1, description="the method's defaults version for these params (GenerativeMethod.defaults_version): "
        "a trial left to a default that has since changed gets a new id")

    @property
    def reference(self) -> bool:
        """A ``data: full`` trial: an oracle reference, never ranked with the few-shot trials."""
        return self.data == "full"

    @property
    def heldout_from(self) -> Literal["test", "train"]:
        """Where the held-out evaluation images come from: a validation trial never touches the test split."""
        return "train" if self.selection == "validation" else "test"

    @property
    def trial_id(self) -> str:
        """Stable id: a hash of the spec's canonical JSON (same spec ⇒ same id, on any machine). Fields added after
        version 1 enter the hash only when they differ from their default, so earlier ids stay valid."""
        return _hash(_without_defaults(self.model_dump(mode="json"), _SPEC_ADDED), self.dataset)

    @property
    def name(self) -> str:
        split = f"-split{self.split}" if self.split else ""
        return f"{self.label}-{self.shots}shot{split}-seed{self.seed}"


# fields added to a dump after version 1, with their defaults: hashed only when set (earlier hashes stay valid)
_EVALUATION_ADDED = {("evaluation", key): default for key, default in EVALUATION_ADDED_FIELDS.items()}
# (a "*" in a nested key stands for every element of a list)
_SPEC_ADDED = {"selection": "none", "split": 0, "data": "few", "method_defaults": 1, ("budget", "epochs"): None,
               **_EVALUATION_ADDED}
_SUITE_ADDED = {("protocol", "validation_classes"): [], ("protocol", "class_splits"): None,
                ("protocol", "score_on"): "test", ("sweep", "select_on"): "validation",
                ("methods", "*", "data"): "few", ("budget", "epochs"): None,
                ("methods", "*", "budget", "epochs"): None, **_EVALUATION_ADDED}


def _without_defaults(dump: dict[str, Any], added: dict[Any, Any]) -> dict[str, Any]:
    dump = copy.deepcopy(dump)
    for key, default in added.items():
        *parents, leaf = key if isinstance(key, tuple) else (key,)
        nodes = [dump]
        for parent in parents:
            if parent == "*":
                nodes = [item for node in nodes if isinstance(node, list) for item in node]
            else:
                nodes = [node.get(parent) for node in nodes if isinstance(node, dict)]
        for node in nodes:
            if isinstance(node, dict) and leaf in node and node[leaf] == default:
                node.pop(leaf)
    return dump


def _hash(dump: dict[str, Any], dataset: DatasetConfig) -> str:
    """12 hex digits of sha256 over ``dump`` as canonical JSON, its dataset in the hashed form that version 1's flat
    dataset config dumped (``hash_record``), so suite hashes and trial ids -- which run directories are resumed by
    and trial directories named by -- did not change when each dataset got its own config."""
    canonical = json.dumps({**dump, "dataset": dataset.hash_record()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_UNION_MODELS = {"ClassPartition", "RandomPartitions"}  # members of protocol.class_splits' union


def _without_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without the names pydantic gives the members of a union (``protocol.class_splits.list[ClassPartition]
    [0].base``, ``protocol.base_classes[0].int``): a user's file has no such field, so a message must name the field
    as written there. A bracketed name is never a field; ``int``/``str`` after a list index are the members of a
    class given ``int | str`` (ParamSpace's ``int`` follows a name, so it stays)."""
    out: list[Any] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in _UNION_MODELS
                                      or (part in ("int", "str") and out and isinstance(out[-1], int))):
            continue
        out.append(part)
    return tuple(out)


def _pydantic_problems(err: pydantic.ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for e in err.errors():
        loc = _without_union_tags(tuple(p for p in e["loc"] if p not in ("int_",)))  # aliased field names
        dataset = None
        if not prefix and len(loc) > 1 and loc[0] == "dataset" and loc[1] in DATASETS:
            dataset, loc = loc[1], loc[:1] + loc[2:]  # the discriminated union puts the dataset's name in the path
        if e["type"] == "unknown_dataset":
            loc += (e["ctx"]["field"],)  # raised before the union, about the `name` field
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and dataset is not None:
            fields = ", ".join(DATASETS.get(dataset).Config.model_fields)
            msg = f"unknown field of dataset {dataset!r} (its fields: {fields})"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        path = _loc(loc)
        where = f"{prefix}.{path}" if prefix and path else prefix or path
        same = next((i for i, (w, _) in enumerate(problems) if w == where), None)
        if same is None:
            problems.append((where, msg))
        elif msg not in problems[same][1]:  # one field, several union members: what each would have needed
            problems[same] = (where, f"{problems[same][1]}, or {msg[0].lower()}{msg[1:]}")
    return problems


def _partition_problems(roles: dict[str, tuple[str, list[int | str]]], p: ProtocolConfig, info: DatasetInfo
                        ) -> list[tuple[str, str]]:
    """One class partition checked like the protocol's own: classes known and listed once, base and novel disjoint,
    enough training images for the shots, test images to hold out; ``roles`` maps base/novel/validation to
    (location for messages, classes)."""
    problems: list[tuple[str, str]] = []
    resolved: dict[str, list[int]] = {}
    for role, (loc, classes) in roles.items():
        ids = []
        for i, c in enumerate(classes):
            try:
                ids.append(info.class_id(c))
            except ValueError as exc:
                problems.append((f"{loc}[{i}]", str(exc)))
        if len(set(ids)) != len(ids):
            problems.append((loc, "a class is listed twice"))
        resolved[role] = ids
    novel_loc = roles["novel"][0]
    overlap = sorted(set(resolved["base"]) & set(resolved["novel"]))
    if overlap:
        names = [info.class_names[c] for c in overlap]
        problems.append((novel_loc, f"classes {names} are also base classes; they must be disjoint"))
    if info.train_per_class:
        for c in resolved["novel"]:
            available = info.train_per_class.get(c, 0)
            for i, k in enumerate(p.shots):
                if k > available:
                    problems.append((
                        f"protocol.shots[{i}]",
                        f"{k} shots exceed the {available} training images of class {info.class_names[c]!r}",
                    ))
    if info.test_per_class:
        for c in resolved["novel"]:
            available = info.test_per_class.get(c, 0)
            if available == 0:
                problems.append((novel_loc, f"class {info.class_names[c]!r} has no held-out test images"))
            elif p.eval_images_per_class and p.eval_images_per_class > available:
                problems.append((
                    "protocol.eval_images_per_class",
                    f"{p.eval_images_per_class} exceeds the {available} test images of class {info.class_names[c]!r}",
                ))
    problems += _validation_class_problems(p, resolved, info, roles["validation"][0])
    return problems



def _cross_checks(suite: Suite, info: DatasetInfo) -> list[tuple[str, str]]:
    p = suite.protocol
    problems = _partition_problems(
        {"base": ("protocol.base_classes", p.base_classes), "novel": ("protocol.novel_classes", p.novel_classes),
         "validation": ("protocol.validation_classes", p.validation_classes)}, p, info)
    extra: list[tuple[str, ClassPartition | Partition]] = []  # (where in the suite, the partition's classes)
    if isinstance(p.class_splits, list):
        extra = [(f"protocol.class_splits[{j}]", split) for j, split in enumerate(p.class_splits)]
    elif isinstance(p.class_splits, RandomPartitions) and not problems:
        universe = len(set(p.base_classes) | set(p.novel_classes))
        if not 0 < p.class_splits.novel_count < universe - len(p.validation_classes):
            problems.append(("protocol.class_splits.novel_count", f"{p.class_splits.novel_count} novel classes of "
                             f"{universe} leave no base class to learn from (validation classes count as base)"))
        elif len(drawn := class_partitions(suite, info)) < 1 + p.class_splits.random:
            problems.append(("protocol.class_splits.random", f"{p.class_splits.random} distinct partitions beside "
                             "the protocol's own cannot be drawn from its classes"))
        else:
            extra = [(f"protocol.class_splits (split {j})", part) for j, part in enumerate(drawn[1:], start=1)]
    for where, part in extra:
        problems += _partition_problems({role: (f"{where}.{role}", getattr(part, role))
                                         for role in ("base", "novel", "validation")}, p, info)
    if p.score_on == "validation":
        scored = [("protocol.validation_classes", p.validation_classes)]
        scored += [(f"{where}.validation", part.validation) for where, part in extra]
        problems += [(where, "protocol.score_on: validation scores every trial on its split's validation classes; "
                      "list some here") for where, classes in scored if not classes]
    if tuple(info.image_shape[1:]) not in {(28, 28), (32, 32), (64, 64)}:
        problems.append(("dataset.image_size", f"the methods' networks support 28, 32 or 64 px, not {info.image_shape[1:]}"))

    labels = [m.display for m in suite.methods]
    for i, entry in enumerate(suite.methods):
        if labels.count(entry.display) > 1:
            problems.append((f"methods[{i}].label", f"{entry.display!r} is used twice; give each entry a unique label"))
        try:
            method_cls = METHODS.get(entry.name)
        except UnknownNameError as exc:
            problems.append((f"methods[{i}].name", str(exc)))
            continue
        try:
            method_cls.Config(**entry.params)
        except pydantic.ValidationError as exc:
            problems += _pydantic_problems(exc, f"methods[{i}].params")
        if entry.reference:
            problems += _full_data_problems(suite, info, f"methods[{i}].data")
        problems += _epoch_problems(suite, i, method_cls)

    from harness.metrics import METRICS  # imported late to keep `validate` light

    for i, name in enumerate(suite.evaluation.metrics):
        if name not in METRICS:
            problems.append((f"evaluation.metrics[{i}]", str(UnknownNameError(
                f"unknown metric {name!r}; registered: {', '.join(METRICS.names()) or 'none'}"))))

    if suite.sweep is not None:
        s = suite.sweep
        if s.method not in labels:
            problems.append(("sweep.method", f"{s.method!r} is not a method label of this suite ({', '.join(labels)})"))
        else:
            entry = suite.method_entry(s.method)
            method_cls = METHODS.get(entry.name) if entry.name in METHODS else None
            fields = method_cls.Config.model_fields if method_cls is not None else {}
            for key in s.space:
                if fields and key not in fields:
                    problems.append((f"sweep.space.{key}", f"not a parameter of {entry.name!r}"))
            if s.asha is not None:
                problems += _asha_problems(s.asha, suite, entry, method_cls)
        if s.metric not in suite.evaluation.metrics:
            problems.append(("sweep.metric", f"{s.metric!r} is not among evaluation.metrics"))
        if s.select_on == "validation" and not p.validation_classes:
            problems.append(("protocol.validation_classes", "the sweep scores configurations on validation classes "
                             "(base classes playing the novel role); list some, or set sweep.select_on: test to score "
                             "on the novel classes' test images (flagged in every result and the report)"))
    return problems


def _full_data_problems(suite: Suite, info: DatasetInfo, loc: str) -> list[tuple[str, str]]:
    """``data: full`` bounds the few-shot methods from above only where it gives a method more than they get: every
    novel class of every class split needs more training images than the largest ``shots`` (otherwise the
    "reference" is the few-shot trial again, and would be reported as what it is not)."""
    if not info.train_per_class:
        return []  # counts unknown before loading (a reader without metadata): nothing to check here
    try:
        partitions = class_partitions(suite, info)
    except ValueError:
        return []  # unknown classes: named by the partition checks
    k = max(suite.protocol.shots)
    short = sorted({c for part in partitions for c in part.novel if info.train_per_class.get(c, 0) <= k})
    if not short:
        return []
    counts = ", ".join(f"{info.class_names[c]!r}: {info.train_per_class.get(c, 0)}" for c in short)
    return [(loc, f"full data is no more than the {k} shots for novel class(es) {counts} (training images), so a "
             "`data: full` reference would repeat the few-shot trial; use `data: few` or more training images")]


def _validation_class_problems(p: ProtocolConfig, resolved: dict[str, list[int]], info: DatasetInfo,
                               loc: str = "protocol.validation_classes") -> list[tuple[str, str]]:
    """Validation classes are base classes, leave at least one base class, and have enough training images for
    the largest shots setting plus held-out images (the training images that are not shots)."""
    problems: list[tuple[str, str]] = []
    validation, base = resolved["validation"], set(resolved["base"])
    for i, c in enumerate(validation):
        if c not in base:
            problems.append((f"{loc}[{i}]", f"class {info.class_names[c]!r} is not a base "
                             "class; validation classes are base classes that play the novel role while choosing"))
    if validation and base and base <= set(validation):
        problems.append((loc, "every base class is a validation class: at least one must "
                         "stay a base class while choosing"))
    if info.train_per_class and validation:
        need = max(p.shots) + (p.eval_images_per_class or 1)
        for c in validation:
            available = info.train_per_class.get(c, 0)
            if available < need:
                problems.append((loc, f"class {info.class_names[c]!r} has {available} "
                                 f"training images; validation needs {max(p.shots)} shots plus held-out images"))
    return problems


def _epochs_field(suite: Suite, index: int) -> str:
    """Where method entry ``index``'s ``epochs`` comes from: its own budget override or the suite's budget."""
    own = suite.methods[index].budget
    return f"methods[{index}].budget.epochs" if own is not None and own.epochs is not None else "budget.epochs"


def _epoch_problems(suite: Suite, index: int, method_cls) -> list[tuple[str, str]]:
    """An epoch budget only for a method that counts epochs, and not beside the entry's own ``steps``."""
    entry = suite.methods[index]
    if entry_budget(suite, entry).epochs is None:
        return []
    if not method_cls.supports_epochs:
        return [(_epochs_field(suite, index), f"{entry.name!r} counts generator steps, not passes over its training "
                 "set; give budget.steps (`harness methods` shows which methods take epochs)")]
    if entry.budget is not None and entry.budget.steps is not None:
        return [(f"methods[{index}].budget.steps", f"{entry.display!r} has an epoch budget, which replaces steps; "
                 "give one of steps and epochs")]
    return []


def _asha_problems(asha: AshaConfig, suite: Suite, entry: MethodEntry, method_cls) -> list[tuple[str, str]]:
    problems = []
    if entry_budget(suite, entry).epochs is not None:
        problems.append((_epochs_field(suite, suite.methods.index(entry)), f"ASHA's rungs count steps, but "
                         f"{entry.display!r} has an epoch budget, whose steps depend on each task's training set; "
                         "give it budget.steps to sweep with ASHA"))
    steps = entry_budget(suite, entry).steps
    if asha.grace_period >= steps:
        problems.append(("sweep.asha.grace_period", f"{asha.grace_period} is not below the {steps} steps of "
                         f"{entry.display!r}: no trial could be stopped"))
    if asha.eval_every is not None and asha.eval_every > asha.grace_period:
        problems.append(("sweep.asha.eval_every", f"{asha.eval_every} exceeds grace_period {asha.grace_period}: the "
                         "first rung would be measured late"))
    if method_cls is not None and not method_cls.conditional:
        problems.append(("sweep.asha", f"{entry.name!r} fits one model per class in turn, so there is no whole "
                         "model to evaluate mid-training; ASHA needs a conditional method"))
    return problems


def environment_problems(suite: Suite) -> list[tuple[str, str]]:
    """What this machine lacks for ``suite`` (weights files of the evaluator or of a method's pretrained network).

    Separate from validation: a suite written for a GPU cluster is valid on a laptop without the weights; ``harness
    run`` refuses to start on these problems, ``harness validate`` reports them as warnings.
    """
    from harness.metrics import check_evaluator

    problems: list[tuple[str, str]] = []
    if suite.evaluation.metrics:
        try:
            check_evaluator(suite.evaluation)
        except (ValueError, OSError) as exc:
            problems.append((getattr(exc, "field", "evaluation.evaluator"), str(exc)))
    for i, entry in enumerate(suite.methods):
        method_cls = METHODS.get(entry.name)
        try:
            method_cls.check_environment(method_cls.Config(**entry.params))
        except (ValueError, OSError) as exc:
            problems.append((f"methods[{i}].params", str(exc)))
    return problems


IMAGE_PROBLEMS_SHOWN = 20  # bad files listed one per line; past this, one line counts the rest


def check_images(suite: Suite, source: str, progress: Callable[[int, int], None] | None = None
                 ) -> ImageCheck | None:
    """Decode every image file of the suite's dataset as its loader will (:mod:`harness.data.verify`, cached per file
    by size and mtime); raise :class:`SuiteError` naming each bad file at ``dataset.root``, the field that says where
    the files are. None for datasets without image files.

    Separate from :func:`load_suite`, which reads metadata only and is called wherever a suite is needed: decoding a
    folder is for ``harness validate`` and for ``harness run`` before it creates a run directory."""
    from harness.data.verify import verify_images

    try:
        check = verify_images(suite.dataset, progress=progress)
    except (DataSourceError, ValueError, OSError) as exc:  # the folder cannot be listed (any more)
        raise SuiteError(source, [("dataset", str(exc))]) from None
    if check is None or check.ok:
        return check
    problems = [("dataset.root", f"{bad.path}: {bad.reason}") for bad in check.bad[:IMAGE_PROBLEMS_SHOWN]]
    if len(check.bad) > IMAGE_PROBLEMS_SHOWN:
        problems.append(("dataset.root", f"... and {len(check.bad) - IMAGE_PROBLEMS_SHOWN} more bad images"))
    problems.append(("dataset.root", f"{len(check.bad)} of the {check.total} images under {check.root} cannot be "
                     "decoded; fix or remove them"))
    raise SuiteError(source, problems)


def parse_suite(data: Any, source: str = "<suite>", base_dir: Path | None = None) -> Suite:
    """Validate a suite given as parsed YAML; raise :class:`SuiteError` listing every problem."""
    if not isinstance(data, dict):
        raise SuiteError(source, [("", f"a suite must be a mapping, got {type(data).__name__}")])
    dataset = data.get("dataset")
    if base_dir is not None and isinstance(dataset, dict) and dataset.get("root"):
        try:
            root = Path(str(dataset["root"])).expanduser()
            if not root.is_absolute():  # relative data roots are relative to the suite file
                data = {**data, "dataset": {**dataset, "root": str((base_dir / root).resolve())}}
        except (ValueError, OSError, RuntimeError) as exc:  # a NUL byte; a symlink loop (RuntimeError before 3.13)
            raise SuiteError(source, [("dataset.root", f"{dataset['root']!r} is not a usable path: {exc}")]) from None
    try:
        suite = Suite.model_validate(data)
    except pydantic.ValidationError as exc:
        raise SuiteError(source, _pydantic_problems(exc)) from None
    try:
        info = dataset_info(suite.dataset)
    except (DataSourceError, ValueError, OSError) as exc:
        raise SuiteError(source, [("dataset", str(exc))]) from None
    problems = _cross_checks(suite, info)
    if problems:
        raise SuiteError(source, problems)
    return suite


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SuiteError(str(path), [("", f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")  # suites are UTF-8 whatever the locale says (read_text() used the locale's)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SuiteError(str(path), [("", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} (offset "
                                          f"{exc.start}); is it a suite file?")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SuiteError(str(path), [("", f"invalid YAML: {where}{getattr(exc, 'problem', exc)}")]) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise SuiteError(str(path), [("", "invalid YAML: collections nested too deeply to be a suite")]) from None
    return parse_suite(data, str(path), base_dir=path.parent)


def suite_hash(suite: Suite) -> str:
    return _hash(_without_defaults(suite.model_dump(mode="json", by_alias=True), _SUITE_ADDED), suite.dataset)


def entry_budget(suite: Suite, entry: MethodEntry) -> Budget:
    """The suite's budget with the method entry's overrides."""
    if entry.budget is None:
        return suite.budget
    return suite.budget.model_copy(update=entry.budget.model_dump(exclude_none=True))


@dataclass(frozen=True)
class Partition:
    """Resolved class ids of one class split."""

    base: tuple[int, ...]
    novel: tuple[int, ...]
    validation: tuple[int, ...]


def class_partitions(suite: Suite, info: DatasetInfo | None = None) -> list[Partition]:
    """Split 0 (the protocol's classes), then ``protocol.class_splits``. Random partitions are drawn from their seed
    over the protocol's classes, each different from those before it (deterministic: the same suite gives the same
    partitions on any machine); their validation classes, as many as the protocol has, come from their base."""
    info = info or dataset_info(suite.dataset)
    p = suite.protocol

    def ids(classes) -> tuple[int, ...]:
        return tuple(info.class_id(c) for c in classes)

    first = Partition(ids(p.base_classes), ids(p.novel_classes), ids(p.validation_classes))
    partitions = [first]
    if isinstance(p.class_splits, list):
        partitions += [Partition(ids(c.base), ids(c.novel), ids(c.validation)) for c in p.class_splits]
    elif isinstance(p.class_splits, RandomPartitions):
        import numpy as np

        draw = p.class_splits
        universe = sorted(set(first.base) | set(first.novel))
        seen = {(tuple(sorted(first.base)), tuple(sorted(first.novel)))}
        for attempt in range(1000):
            if len(partitions) == 1 + draw.random:
                break
            order = [int(c) for c in np.random.default_rng([draw.seed, attempt]).permutation(universe)]
            novel, rest = tuple(sorted(order[:draw.novel_count])), order[draw.novel_count:]
            base = tuple(sorted(rest))
            if (base, novel) in seen:
                continue
            seen.add((base, novel))
            validation = tuple(sorted(rest[len(rest) - len(first.validation):])) if first.validation else ()
            partitions.append(Partition(base, novel, validation))
    return partitions


def trial_spec(suite: Suite, entry: MethodEntry, shots: int, seed: int, params: dict[str, Any] | None = None,
               split: int = 0) -> TrialSpec:
    """The spec of one trial; ``params`` (a sweep's sample) override the entry's params; ``split`` picks the class
    partition (:func:`class_partitions`)."""
    info = dataset_info(suite.dataset)
    partition = class_partitions(suite, info)[split]
    params = {**entry.params, **(params or {})}
    return TrialSpec(
        suite=suite.name,
        suite_version=suite.version,
        method=entry.name,
        label=entry.display,
        params=params,
        method_defaults=METHODS.get(entry.name).defaults_version(params) if entry.name in METHODS else 1,
        dataset=suite.dataset,
        base_classes=partition.base,
        novel_classes=partition.novel,
        split=split,
        data=entry.data,
        shots=shots,
        seed=seed,
        eval_images_per_class=suite.protocol.eval_images_per_class,
        base_images_per_class=suite.protocol.base_images_per_class,
        budget=entry_budget(suite, entry),
        evaluation=suite.evaluation,
        resources=suite.resources,
    )


def selection_spec(suite: Suite, entry: MethodEntry, shots: int, seed: int, split: int = 0,
                   select_on: Literal["validation", "test"] | None = None) -> TrialSpec:
    """The trial a selection (a sweep, an ablation with ``protocol.score_on: validation``) scores. On
    ``validation`` (the default; a sweep's ``sweep.select_on``) split ``split``'s validation classes play the novel
    role — base classes are its others, the novel classes' images are absent altogether, and the held-out images are
    the validation classes' own training images that are not shots; on ``test``, the protocol's trial, flagged."""
    spec = trial_spec(suite, entry, shots, seed, split=split)
    if select_on is None:
        select_on = suite.sweep.select_on if suite.sweep is not None else "validation"
    if select_on == "test":
        return spec.model_copy(update={"selection": "test"})
    validation = class_partitions(suite)[split].validation
    if not validation:
        field = "protocol.validation_classes" if split == 0 else f"protocol.class_splits[{split - 1}].validation"
        raise SuiteError(suite.name, [(field, "selection needs validation classes (or sweep.select_on: test, which "
                                              "scores on test images)")])
    return spec.model_copy(update={
        "base_classes": tuple(c for c in spec.base_classes if c not in validation),
        "novel_classes": tuple(sorted(validation)),
        "selection": "validation",
    })


def expand(suite: Suite, methods: list[str] | None = None) -> list[TrialSpec]:
    """All trials of a suite: method entry × class split × shots × seed (in that order), optionally only some method
    labels."""
    entries = [m for m in suite.methods if methods is None or m.display in methods]
    if methods is not None:
        unknown = sorted(set(methods) - {m.display for m in suite.methods})
        if unknown:
            raise SuiteError(suite.name, [("methods", f"no method labelled {unknown} in this suite")])
    splits = range(len(class_partitions(suite)))
    on_validation = suite.protocol.score_on == "validation"
    return [
        selection_spec(suite, entry, shots, seed, split, select_on="validation") if on_validation
        else trial_spec(suite, entry, shots, seed, split=split)
        for entry in entries
        for split in splits
        for shots in suite.protocol.shots
        for seed in suite.protocol.seeds
    ]

