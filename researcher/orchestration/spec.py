"""The job spec: a validated description of a federated job, as YAML or as pydantic models.

A spec names its tasks, where each runs, what each depends on and which outputs of earlier
tasks it takes as inputs; the job settings (priority, retries, timeouts, parallelism, nodes,
inheritance); how each node's dataset is found; and the training plans, as source text and
class name::

    spec = JobSpec.load(Path("job.yaml"))
    print(spec.order())          # task names, upstream first
    Path("copy.yaml").write_text(spec.to_yaml())

Loading checks everything that can be checked before a node is asked: unique task names,
known dependencies, no cycle, inputs that name an output the producing task has, plans that
parse and define their class. See docs/jobs.md for the format.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broker_net.topology import check_id
from researcher.orchestration.task_specs import SpecError, TaskSpec, check_name


class PlanSpec(BaseModel):
    """A training plan as it travels: its source text and the name of its class."""

    model_config = ConfigDict(extra="forbid")

    class_name: str
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _defines_class(self) -> Self:
        try:
            tree = ast.parse(self.source)
        except SyntaxError as exc:
            raise ValueError(f"the plan source is not valid Python: {exc}") from exc
        defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        imported = {
            alias.asname or alias.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        if self.class_name not in defined | imported:
            raise ValueError(f"the plan source defines no class {self.class_name!r}")
        return self


class Inheritance(BaseModel):
    """Reuse the outputs of tasks of an earlier job instead of running them again."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    tasks: list[str] = Field(min_length=1)


class DatasetSelector(BaseModel):
    """How each node's dataset is found: by tags (the first dataset carrying every tag) or by
    id on each node."""

    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(default_factory=list)
    ids: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if bool(self.tags) == bool(self.ids):
            raise ValueError("give the datasets either by 'tags' or by 'ids', not both nor none")
        return self


class SimulatedDataset(BaseModel):
    """A file a simulated node registers as its dataset (see
    :func:`simulation.federation.simulate`)."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    target: str | None = None
    name: str = ""
    tags: list[str] = Field(default_factory=list)


class JobConf(BaseModel):
    """Job settings, as FATE Flow's ``dag.conf``."""

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(default=0, description="Higher runs first among waiting jobs.")
    auto_retries: int = Field(default=0, ge=0, description="Retries of a failed or late task.")
    auto_retry_delay: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="Seconds between a task's retries."
    )
    task_timeout: float | None = Field(
        default=None, gt=0, description="Seconds a task may run before it is stopped."
    )
    parallelism: int = Field(default=1, ge=1, description="Tasks run at once.")
    min_nodes: int = Field(default=1, ge=0, description="Online nodes the job needs to start.")
    mandatory_nodes: list[str] = Field(default_factory=list)
    node_wait: float = Field(
        default=60.0, ge=0, description="Seconds to wait for those nodes before failing."
    )
    inheritance: Inheritance | None = None

    @field_validator("mandatory_nodes")
    @classmethod
    def _valid_nodes(cls, value: list[str]) -> list[str]:
        for node in value:
            check_id("node id", node)
        return value


class JobSpec(BaseModel):
    """A whole job: settings, datasets, plans and the task DAG."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    name: str
    conf: JobConf = Field(default_factory=JobConf)
    datasets: DatasetSelector
    plans: dict[str, PlanSpec] = Field(default_factory=dict)
    tasks: list[TaskSpec] = Field(min_length=1)
    simulation: dict[str, SimulatedDataset] = Field(
        default_factory=dict, description="Node id -> dataset file, for simulations only."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name("job name", value)

    @model_validator(mode="after")
    def _valid_dag(self) -> Self:
        names = [task.name for task in self.tasks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"task names used twice: {duplicates}")
        by_name = {task.name: task for task in self.tasks}
        for task in self.tasks:
            if not task.nodes:
                raise ValueError(f"task {task.name!r} is placed on no node (job.to / to_nodes)")
            for upstream in task.upstream:
                if upstream not in by_name:
                    raise ValueError(f"task {task.name!r} depends on unknown task {upstream!r}")
            for target, ref in task.inputs.items():
                producer = by_name[ref.task]
                if ref.key.split(".")[0] not in producer.output_keys:
                    raise ValueError(
                        f"task {task.name!r} input {target!r}: a {producer.kind} task has no "
                        f"output {ref.key!r}"
                    )
            plan = getattr(task, "plan", None)
            if plan is not None and plan not in self.plans:
                raise ValueError(f"task {task.name!r} uses unknown plan {plan!r}")
        self.order()
        if self.conf.inheritance is not None:
            unknown = sorted(set(self.conf.inheritance.tasks) - set(by_name))
            if unknown:
                raise ValueError(f"inheritance names tasks this job does not have: {unknown}")
        return self

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``.

        Raises:
            KeyError: there is none.
        """
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    def order(self) -> list[str]:
        """Task names in an order where every task comes after its upstream tasks.

        Raises:
            ValueError: the dependencies form a cycle.
        """
        upstream = {task.name: set(task.upstream) for task in self.tasks}
        ordered: list[str] = []
        while upstream:
            ready = [name for name, deps in upstream.items() if deps <= set(ordered)]
            if not ready:
                raise ValueError(f"the task dependencies form a cycle among {sorted(upstream)}")
            for name in ready:
                ordered.append(name)
                del upstream[name]
        return ordered

    def named_nodes(self) -> list[str]:
        """Nodes some task is placed on by name, sorted."""
        found: set[str] = set()
        for task in self.tasks:
            if isinstance(task.nodes, list):
                found.update(task.nodes)
        return sorted(found)

    def to_yaml(self) -> str:
        """The spec as YAML: every job setting, each task's non-default fields, plan sources
        as literal blocks."""
        data = self.model_dump(mode="json", exclude_none=True)
        data["tasks"] = [
            {"kind": task.kind, "name": task.name,
             **task.model_dump(mode="json", exclude_defaults=True, exclude={"kind", "name"})}
            for task in self.tasks
        ]  # fmt: skip
        if not self.simulation:
            del data["simulation"]
        return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)

    @classmethod
    def from_yaml(cls, text: str) -> JobSpec:
        """Read and validate a spec.

        Raises:
            SpecError: the text is not YAML, or not a valid spec (the message says where).
        """
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"the job spec is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise SpecError("a job spec is a mapping with 'name', 'datasets' and 'tasks'")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"invalid job spec: {exc}", document=data) from exc

    @classmethod
    def load(cls, path: Path) -> JobSpec:
        """Read and validate the spec in ``path``.

        Raises:
            SpecError: as :meth:`from_yaml`, or the file cannot be read.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read the job spec {path}: {exc}") from exc
        return cls.from_yaml(text)


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (plan sources) as readable literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)
