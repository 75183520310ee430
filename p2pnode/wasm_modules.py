"""WASM modules travel as content-addressed blobs (the I/O half of the wasm engine).

A spec as written names a module file (``engine: {type: wasm, module:
hello.wat}``), resolved relative to the spec file's directory (stdin: the
current directory).  At ``job run``/``job update`` the CLI stores the file in
the blob store of the node it submits to and replaces the path with the
file's content id ``sha256:<hex>``: the canonical spec carries only that id.
A holder fetches the blob by its id from the job's owner, over the same blob
protocol that moves inputs, verifying every byte against the hash
(``engines.EngineRouter``), so peers need no shared filesystem.

The bytes are the file as it is: WebAssembly binary or WAT text (the executor
compiles either).
"""

from __future__ import annotations

import copy
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from p2pnode.blobs import BlobError, BlobStore
from protocols.spec import SpecError
from protocols.spec.check import index, join
from protocols.spec.task import MODULE_ID

MAX_MODULE_BYTES = 64 * 1024 * 1024  # one module; larger ones are refused at submit

__all__ = [
    "MAX_MODULE_BYTES",
    "check_module_files",
    "module_problems",
    "read_module_file",
    "store_module_files",
    "wasm_engines",
]


def wasm_engines(doc: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``engine`` mapping of type wasm in a spec document (written or
    canonical form), with the spec path of its ``module`` key."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            here = join(path, key)
            if key == "engine" and isinstance(value, dict) and value.get("type") == "wasm":
                yield join(here, "module"), value
            else:
                yield from wasm_engines(value, here)
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from wasm_engines(item, index(path, i))


def module_problems(doc: Any, has: Callable[[str], bool]) -> list[SpecError]:
    """What keeps a submitted spec's modules from travelling: each must be a
    content id (``sha256:<hex>``) of a blob ``has`` finds in the owner's store."""
    problems: list[SpecError] = []
    for where, engine in wasm_engines(doc):
        module = str(engine.get("module"))
        if not MODULE_ID.fullmatch(module):
            problems.append(SpecError(where, f"must be a content id sha256:<hex>, got {module!r} "
                                             "(`p2pnode job run` stores the module file and "
                                             "sends its id)"))
        elif not has(module):
            problems.append(SpecError(where, f"module {module} is not in this node's blob store "
                                             "(`p2pnode job run` stores the module file)"))
    return problems


def _file_modules(doc: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """The wasm engines whose module is a file path (not yet a content id)."""
    for where, engine in wasm_engines(doc):
        module = engine.get("module")
        if isinstance(module, str) and module and not MODULE_ID.fullmatch(module):
            yield where, engine


def read_module_file(path: Path) -> bytes:
    """The bytes of a module file; ``OSError``/``ValueError`` with a reason
    (missing, not a regular file, over ``MAX_MODULE_BYTES``).  Bounded: never
    reads more than the limit, and never blocks on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_MODULE_BYTES + 1)
    if len(data) > MAX_MODULE_BYTES:
        raise ValueError(f"larger than the limit of {MAX_MODULE_BYTES // 1024**2} MiB")
    return data


def _resolve(base: Path, module: str) -> Path:
    return Path(module).expanduser() if Path(module).is_absolute() else base / module


def _problem(err: Exception) -> str:
    return (getattr(err, "strerror", None) or str(err)) if isinstance(err, OSError) else str(err)


def check_module_files(doc: Any, base: Path) -> list[SpecError]:
    """One error per module file that cannot be read (``job validate`` and
    ``job run`` report them with the spec's other errors)."""
    errors: list[SpecError] = []
    for where, engine in _file_modules(doc):
        try:
            read_module_file(_resolve(base, engine["module"]))
        except (OSError, ValueError) as err:
            errors.append(SpecError(where, f"cannot read module {engine['module']!r}: "
                                           f"{_problem(err)}"))
    return errors


def store_module_files(doc: Any, base: Path, data_dir: Path) -> Any:
    """A copy of ``doc`` whose module paths are replaced by content ids, each
    file stored in the blob store under ``data_dir`` (the submitting node's).
    Raises ``BlobError`` naming the module that cannot be read or stored."""
    found = list(_file_modules(doc))
    if not found:
        return doc
    doc = copy.deepcopy(doc)
    # The node owns this store; a second BlobStore must not sweep its temp files.
    blobs = BlobStore(data_dir, sweep_temp=False)
    for _where, engine in _file_modules(doc):
        module = engine["module"]
        try:
            data = read_module_file(_resolve(base, module))
        except (OSError, ValueError) as err:
            raise BlobError(f"cannot read module {module!r}: {_problem(err)}") from None
        engine["module"] = blobs.put_bytes(data)
    return doc
