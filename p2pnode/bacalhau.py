"""Bacalhau v1 job files, mapped to p2pnode specs.

A document is a Bacalhau job when it is a mapping with a ``Tasks`` key (also
inside ``{"Job": {...}}``, the API's envelope).  What maps:

=====================================  ==========================================
Bacalhau                               p2pnode spec
=====================================  ==========================================
Name                                   name (lower-cased, other characters -> -)
Type batch / ops / daemon / service    type
Count (batch, service)                 count
Constraints Key, Operator = / == / in  constraints.labels (one value each)
  with one value
Tasks[0].Engine Type docker            task.engine docker: Params.Image -> image,
                                       Entrypoint + Parameters -> command,
                                       WorkingDirectory -> workdir
Tasks[0].Engine Type wasm              task.engine wasm: Params.EntryModule (a
                                       local file) -> module, Entrypoint,
                                       Parameters -> args
Env, Params.EnvironmentVariables       task.env
Tasks[0].Resources CPU, Memory         task.resources cpu (500m = 0.5), memory
Tasks[0].Network Type None/Host/Full   task.network none / host / host
Tasks[0].Timeouts ExecutionTimeout     task.timeout (seconds; 0 = the default)
Tasks[0].Timeouts QueueTimeout         queue_timeout (seconds; 0 = none)
Tasks[0].Publisher Type local / noop   (outputs stay on the holder: job get)
Tasks[0].ResultPaths Path /outputs     (p2pnode collects /outputs)
Meta, Tasks[0].Name, Namespace default (ignored: no meaning here)
=====================================  ==========================================

Everything else (InputSources, other publishers, Disk, GPU, HTTP networking,
operators other than equality, ...) is an error at its Bacalhau path, e.g.
``Tasks[0].Network.Type: 'HTTP' not supported``; every error is listed at
once, and errors the p2pnode validator finds in the mapped spec are reported
at the Bacalhau path they came from.

The docker engine sets the container's command: an image's own ENTRYPOINT,
if it has one, still runs first (Bacalhau's Entrypoint would replace it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from protocols.spec import SpecError, SpecValidationError, validate_spec
from protocols.units import UnitError, parse_size

JOB_TYPES = ("batch", "ops", "daemon", "service")
COUNTED_TYPES = ("batch", "service")  # Bacalhau ignores Count for ops and daemon
SERVER_KEYS = ("ID", "State", "Version", "Revision", "CreateTime", "ModifyTime")
JOB_KEYS = (
    "Name",
    "Namespace",
    "Type",
    "Priority",
    "Count",
    "Meta",
    "Labels",
    "Constraints",
    "Tasks",
    *SERVER_KEYS,
)
TASK_KEYS = (
    "Name",
    "Engine",
    "Publisher",
    "Env",
    "Meta",
    "InputSources",
    "ResultPaths",
    "Resources",
    "Network",
    "Timeouts",
)
DOCKER_PARAMS = ("Image", "Entrypoint", "Parameters", "EnvironmentVariables", "WorkingDirectory")
WASM_PARAMS = ("EntryModule", "Entrypoint", "Parameters", "EnvironmentVariables", "ImportModules")
EQUALITY_OPERATORS = ("=", "==", "in")
NETWORKS = {"none": "none", "host": "host", "full": "host"}
PUBLISHERS = ("local", "noop")
LOCAL_SOURCES = ("local", "localdirectory")
OUTPUTS_PATH = "/outputs"  # where the docker and wasm executors collect outputs
DEFAULT_NAME = "bacalhau-job"
# Stands in for an engine that is in error, so the rest is still validated.
PLACEHOLDER_ENGINE = {"type": "process", "command": ["true"]}
_NOT_NAME = re.compile(r"[^a-z0-9._-]+")
_CPU = re.compile(r"(\d+(?:\.\d+)?)(m?)")


def is_bacalhau_job(doc: Any) -> bool:
    """Whether a parsed spec document has a Bacalhau job's shape."""
    if isinstance(doc, dict) and set(doc) == {"Job"}:
        doc = doc["Job"]
    return isinstance(doc, dict) and "Tasks" in doc


def bacalhau_to_spec(doc: Any) -> dict[str, Any]:
    """The p2pnode spec document of a Bacalhau job, validated.

    Raises SpecValidationError listing every field that cannot map and every
    error of the mapped spec, at their Bacalhau paths.
    """
    prefix = ""
    if isinstance(doc, dict) and set(doc) == {"Job"}:
        doc, prefix = doc["Job"], "Job."
    mapping = _Mapping(prefix)
    spec = mapping.job(doc)
    try:
        validate_spec(spec)
    except SpecValidationError as invalid:
        mapped = [SpecError(mapping.origin_of(e.path), e.message) for e in invalid.errors]
        reported = [e.path for e in mapping.errors]  # a field's problem is said once
        mapping.errors += [e for e in mapped if not any(_covers(e.path, path) for path in reported)]
    if mapping.errors:
        raise SpecValidationError(_unique(mapping.errors))
    return spec


def _covers(path: str, reported: str) -> bool:
    """Whether an error at ``path`` would repeat one at ``reported`` (the same
    field, or one that holds it: a module reported bad is not also missing)."""
    return reported == path or reported.startswith((path + ".", path + "["))


def _unique(errors: list[SpecError]) -> list[SpecError]:
    return list(dict.fromkeys(errors))


class _Mapping:
    """One translation: the errors found so far, and where each p2pnode
    field came from (to report the validator's errors at Bacalhau paths)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.errors: list[SpecError] = []
        self.origins: dict[str, str] = {}

    # --- bookkeeping ------------------------------------------------------------

    def error(self, path: str, message: str) -> None:
        self.errors.append(SpecError(self.prefix + path, message))

    def came_from(self, spec_path: str, path: str) -> None:
        self.origins[spec_path] = self.prefix + path

    def origin_of(self, spec_path: str) -> str:
        """The Bacalhau path of a p2pnode spec path (its longest known prefix)."""
        best = ""
        for known in self.origins:
            if (spec_path == known or spec_path.startswith((known + ".", known + "["))) and len(
                known
            ) > len(best):
                best = known
        if not best:
            return spec_path if spec_path.startswith("<") else self.prefix + spec_path
        return self.origins[best] + spec_path[len(best) :]

    def mapping(self, value: Any, path: str, keys: tuple[str, ...], what: str) -> dict[str, Any]:
        """``value`` as a mapping, its unknown keys reported; {} when absent."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, got {_show(value)}")
            return {}
        for key in value:
            if key not in keys:
                self.error(_join(path, str(key)), f"unknown key of a Bacalhau {what}")
        return value

    def table(self, value: Any, path: str) -> dict[str, Any]:
        """A free-form mapping (environment variables); {} when absent."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping of names to values, got {_show(value)}")
            return {}
        return value

    def strings(self, value: Any, path: str) -> list[str] | None:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
            self.error(path, f"must be a list of strings, got {_show(value)}")
            return None
        return list(value)

    def unsupported(self, value: Any, path: str, why: str) -> None:
        """An error for ``value`` unless it is absent or empty."""
        if value not in (None, "", 0, [], {}):
            self.error(path, f"not supported ({why})")

    # --- the job ----------------------------------------------------------------

    def job(self, doc: Any) -> dict[str, Any]:
        if not isinstance(doc, dict):
            self.error("<document>", f"a Bacalhau job must be a mapping, got {_show(doc)}")
            return {}
        job = self.mapping(doc, "", JOB_KEYS, "job")
        kind = self.job_type(job.get("Type"))
        spec: dict[str, Any] = {"name": self.name(job.get("Name")), "type": kind}
        self.came_from("name", "Name")
        self.came_from("type", "Type")
        if kind in COUNTED_TYPES and job.get("Count") is not None:
            spec["count"] = job["Count"]
            self.came_from("count", "Count")
        namespace = job.get("Namespace")
        if namespace not in (None, "", "default"):
            self.error("Namespace", f"{namespace!r} not supported (p2pnode has no namespaces)")
        self.unsupported(job.get("Priority"), "Priority", "p2pnode has no job priorities")
        self.unsupported(
            job.get("Labels"), "Labels", "p2pnode jobs carry no labels; Constraints select nodes"
        )
        labels = self.constraints(job.get("Constraints"))
        if labels:
            spec["constraints"] = {"labels": labels}
        tasks = job.get("Tasks")
        if not isinstance(tasks, list) or not tasks:
            self.error("Tasks", f"must be a list of one task, got {_show(tasks)}")
            spec["task"] = {"engine": dict(PLACEHOLDER_ENGINE)}  # the rest is still checked
            return spec
        if len(tasks) > 1:
            self.error("Tasks", f"p2pnode runs one task per job, got {len(tasks)}")
        spec["task"] = self.task(tasks[0], "Tasks[0]", spec)
        return spec

    def job_type(self, raw: Any) -> str:
        if raw is None:
            return "batch"
        if isinstance(raw, str) and raw.lower() in JOB_TYPES:
            return raw.lower()
        self.error("Type", f"{_show(raw)} not supported (one of: {', '.join(JOB_TYPES)})")
        return "batch"

    def name(self, raw: Any) -> str:
        if raw is None or raw == "":
            return DEFAULT_NAME
        if not isinstance(raw, str):
            self.error("Name", f"must be a string, got {_show(raw)}")
            return DEFAULT_NAME
        slug = _NOT_NAME.sub("-", raw.lower()).strip("-._")[:63].rstrip("-._")
        if not slug:
            self.error("Name", f"{raw!r} has no letter or digit to make a p2pnode job name")
            return DEFAULT_NAME
        return slug

    def constraints(self, raw: Any) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, list):
            self.error("Constraints", f"must be a list of constraints, got {_show(raw)}")
            return {}
        labels: dict[str, str] = {}
        for i, item in enumerate(raw):
            path = f"Constraints[{i}]"
            fields = self.mapping(item, path, ("Key", "Operator", "Values"), "constraint")
            key, operator, values = fields.get("Key"), fields.get("Operator"), fields.get("Values")
            if not isinstance(key, str) or not key:
                self.error(_join(path, "Key"), f"must be a label name, got {_show(key)}")
                continue
            if not isinstance(operator, str) or operator.lower() not in EQUALITY_OPERATORS:
                self.error(
                    _join(path, "Operator"),
                    f"{_show(operator)} not supported (p2pnode matches node labels by "
                    "equality: = with one value)",
                )
                continue
            if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str):
                self.error(
                    _join(path, "Values"),
                    f"must hold exactly one string (p2pnode matches node labels by equality), "
                    f"got {_show(values)}",
                )
                continue
            if labels.get(key, values[0]) != values[0]:
                self.error(path, f"{key!r} is already constrained to {labels[key]!r}")
                continue
            labels[key] = values[0]
            self.came_from(f"constraints.labels.{key}", path)
        return labels

    # --- the task ---------------------------------------------------------------

    def task(self, raw: Any, path: str, spec: dict[str, Any]) -> dict[str, Any]:
        task = self.mapping(raw, path, TASK_KEYS, "task")
        out: dict[str, Any] = {}
        env: dict[str, Any] = {}
        engine = self.mapping(
            task.get("Engine"), _join(path, "Engine"), ("Type", "Params"), "engine"
        )
        if not engine:
            self.error(_join(path, "Engine"), "required (Type docker or wasm, with Params)")
            out["engine"] = dict(PLACEHOLDER_ENGINE)
        else:
            out["engine"] = self.engine(engine, _join(path, "Engine"), env)
        for key, value in self.table(task.get("Env"), _join(path, "Env")).items():
            env[key] = value
            self.came_from(f"task.env.{key}", _join(path, f"Env.{key}"))
        if env:
            out["env"] = env
        self.publisher(task.get("Publisher"), _join(path, "Publisher"))
        self.unsupported(
            task.get("InputSources"),
            _join(path, "InputSources"),
            "p2pnode tasks get inputs from DAG dependencies, not from sources",
        )
        self.result_paths(task.get("ResultPaths"), _join(path, "ResultPaths"))
        resources = self.resources(task.get("Resources"), _join(path, "Resources"))
        if resources:
            out["resources"] = resources
        network = task.get("Network")
        if network is not None:
            self.network(network, _join(path, "Network"), out)
        self.timeouts(task.get("Timeouts"), _join(path, "Timeouts"), out, spec)
        return out

    def engine(self, engine: dict[str, Any], path: str, env: dict[str, Any]) -> dict[str, Any]:
        kind = engine.get("Type")
        params_path = _join(path, "Params")
        if not isinstance(kind, str) or kind.lower() not in ("docker", "wasm"):
            self.error(_join(path, "Type"), f"{_show(kind)} not supported (docker or wasm)")
            return dict(PLACEHOLDER_ENGINE)
        if kind.lower() == "docker":
            params = self.mapping(engine.get("Params"), params_path, DOCKER_PARAMS, "docker engine")
            return self.docker(params, params_path, env)
        params = self.mapping(engine.get("Params"), params_path, WASM_PARAMS, "wasm engine")
        return self.wasm(params, params_path, env)

    def docker(self, params: dict[str, Any], path: str, env: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "docker", "image": params.get("Image")}
        self.came_from("task.engine.image", _join(path, "Image"))
        if params.get("Image") is None:
            self.error(_join(path, "Image"), "required (the image to run, e.g. ubuntu:24.04)")
        entrypoint = self.strings(params.get("Entrypoint"), _join(path, "Entrypoint"))
        parameters = self.strings(params.get("Parameters"), _join(path, "Parameters"))
        command = (entrypoint or []) + (parameters or [])
        if command:
            out["command"] = command
            self.came_from(
                "task.engine.command",
                _join(path, "Entrypoint" if entrypoint else "Parameters"),
            )
        if params.get("WorkingDirectory") is not None:
            out["workdir"] = params["WorkingDirectory"]
            self.came_from("task.engine.workdir", _join(path, "WorkingDirectory"))
        variables = self.strings(
            params.get("EnvironmentVariables"), _join(path, "EnvironmentVariables")
        )
        for i, item in enumerate(variables or []):
            key, sep, value = item.partition("=")
            where = _join(path, f"EnvironmentVariables[{i}]")
            if not sep or not key:
                self.error(where, f"must look like KEY=value, got {item!r}")
                continue
            env[key] = value
            self.came_from(f"task.env.{key}", where)
        return out

    def wasm(self, params: dict[str, Any], path: str, env: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "wasm",
            "module": self.module(params.get("EntryModule"), _join(path, "EntryModule")),
        }
        self.came_from("task.engine.module", _join(path, "EntryModule"))
        if params.get("Entrypoint") is not None:
            out["entrypoint"] = params["Entrypoint"]
            self.came_from("task.engine.entrypoint", _join(path, "Entrypoint"))
        args = self.strings(params.get("Parameters"), _join(path, "Parameters"))
        if args:
            out["args"] = args
            self.came_from("task.engine.args", _join(path, "Parameters"))
        self.unsupported(
            params.get("ImportModules"),
            _join(path, "ImportModules"),
            "p2pnode's wasm engine links one module",
        )
        variables = self.table(
            params.get("EnvironmentVariables"), _join(path, "EnvironmentVariables")
        )
        for key, value in variables.items():
            env[key] = value
            self.came_from(f"task.env.{key}", _join(path, f"EnvironmentVariables.{key}"))
        return out

    def module(self, raw: Any, path: str) -> Any:
        """A local EntryModule's file path."""
        if raw is None:
            self.error(path, "required (an InputSource naming a local .wasm file)")
            return None
        entry = self.mapping(raw, path, ("Source", "Target", "Alias"), "input source")
        source = self.mapping(
            entry.get("Source"), _join(path, "Source"), ("Type", "Params"), "source"
        )
        kind = source.get("Type")
        if not isinstance(kind, str) or kind.lower() not in LOCAL_SOURCES:
            self.error(
                _join(path, "Source.Type"),
                f"{_show(kind)} not supported (a local file: Type local, Params.SourcePath)",
            )
            return None
        params = source.get("Params")
        params = params if isinstance(params, dict) else {}
        file = params.get("SourcePath", params.get("Path"))
        if not isinstance(file, str) or not file:
            self.error(_join(path, "Source.Params.SourcePath"), "required (the .wasm file)")
            return None
        return file

    def publisher(self, raw: Any, path: str) -> None:
        if raw is None:
            return
        publisher = self.mapping(raw, path, ("Type", "Params"), "publisher")
        kind = publisher.get("Type")
        if kind not in (None, "") and (not isinstance(kind, str) or kind.lower() not in PUBLISHERS):
            self.error(
                _join(path, "Type"),
                f"{_show(kind)} not supported (outputs stay on the node that ran the task: "
                "p2pnode job get)",
            )

    def result_paths(self, raw: Any, path: str) -> None:
        if raw is None:
            return
        if not isinstance(raw, list):
            self.error(path, f"must be a list, got {_show(raw)}")
            return
        for i, item in enumerate(raw):
            where = f"{path}[{i}]"
            entry = self.mapping(item, where, ("Name", "Path"), "result path")
            if entry.get("Path") != OUTPUTS_PATH:
                self.error(
                    _join(where, "Path"),
                    f"{_show(entry.get('Path'))} not supported (p2pnode collects what the task "
                    f"writes to {OUTPUTS_PATH})",
                )

    def resources(self, raw: Any, path: str) -> dict[str, Any]:
        resources = self.mapping(raw, path, ("CPU", "Memory", "Disk", "GPU"), "resources")
        out: dict[str, Any] = {}
        if resources.get("CPU") not in (None, ""):
            self.convert(resources["CPU"], _join(path, "CPU"), _cpu, out, "cpu")
            self.came_from("task.resources.cpu", _join(path, "CPU"))
        if resources.get("Memory") not in (None, ""):
            self.convert(resources["Memory"], _join(path, "Memory"), _memory, out, "memory")
            self.came_from("task.resources.memory", _join(path, "Memory"))
        self.unsupported(resources.get("Disk"), _join(path, "Disk"), "p2pnode has no disk limits")
        if resources.get("GPU") not in (None, "", "0", 0):
            self.error(_join(path, "GPU"), "not supported (p2pnode schedules no GPUs)")
        return out

    def convert(
        self, raw: Any, path: str, parse: Callable[[Any], Any], out: dict[str, Any], key: str
    ) -> None:
        try:
            out[key] = parse(raw)
        except (ValueError, UnitError) as exc:
            self.error(path, str(exc))

    def network(self, raw: Any, path: str, out: dict[str, Any]) -> None:
        network = self.mapping(raw, path, ("Type", "Domains"), "network")
        kind = network.get("Type")
        if kind is not None:
            if isinstance(kind, str) and kind.lower() in NETWORKS:
                out["network"] = NETWORKS[kind.lower()]
                self.came_from("task.network", _join(path, "Type"))
            else:
                self.error(
                    _join(path, "Type"),
                    f"{_show(kind)} not supported (None, Host or Full: p2pnode tasks have no "
                    "network or the host's)",
                )
        self.unsupported(
            network.get("Domains"), _join(path, "Domains"), "p2pnode cannot filter domains"
        )

    def timeouts(self, raw: Any, path: str, task: dict[str, Any], spec: dict[str, Any]) -> None:
        timeouts = self.mapping(
            raw, path, ("ExecutionTimeout", "QueueTimeout", "TotalTimeout"), "timeouts"
        )
        for key, target, spec_path in (
            ("ExecutionTimeout", task, "task.timeout"),
            ("QueueTimeout", spec, "queue_timeout"),
        ):
            value = timeouts.get(key)
            if value is None or value == 0:
                continue  # 0: no timeout of its own (p2pnode's default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                self.error(_join(path, key), f"must be whole seconds, got {_show(value)}")
                continue
            target[spec_path.rpartition(".")[2]] = value  # a bare number: seconds
            self.came_from(spec_path, _join(path, key))
        self.unsupported(
            timeouts.get("TotalTimeout"),
            _join(path, "TotalTimeout"),
            "use ExecutionTimeout and QueueTimeout",
        )


def _cpu(raw: Any) -> float:
    """``500m`` -> 0.5, ``2`` -> 2.0 (Kubernetes-style CPU units)."""
    if isinstance(raw, bool):
        raise ValueError(f"must be a CPU amount like 500m or 2, got {_show(raw)}")
    if isinstance(raw, int | float):
        return float(raw)
    match = _CPU.fullmatch(str(raw).strip())
    if match is None:
        raise ValueError(f"must be a CPU amount like 500m or 2, got {_show(raw)}")
    number, milli = match.groups()
    return float(number) / (1000 if milli else 1)


def _memory(raw: Any) -> int:
    """Bacalhau's sizes (``1gb``, ``512Mi``, case-insensitive) in bytes."""
    if isinstance(raw, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", raw)
        if match is not None:
            number, unit = match.groups()
            unit = unit.lower()
            binary = unit.startswith(("ki", "mi", "gi", "ti"))
            if unit in ("", "b"):
                return parse_size(f"{number}B")
            base = unit[0].upper() + ("i" if binary else "")
            return parse_size(f"{number}{base}B")
    return parse_size(raw)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return repr(value)


__all__ = ["bacalhau_to_spec", "is_bacalhau_job"]
