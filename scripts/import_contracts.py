"""A contract type import-linter lacks: no import cycle among modules.

import-linter's ``acyclic_siblings`` finds cycles between the sibling modules
and subpackages of a package (at every depth), but not between a package and
one of its own modules (``pkg/__init__.py`` imports ``pkg.a``, which imports
``pkg`` back).  ``acyclic_modules`` treats every module, ``__init__`` files
included, as a node and reports each strongly connected component of the
direct-import graph (with one cycle in it, as an example).  Registered in pyproject.toml
(``contract_types``); ``lint-imports`` puts the working directory on the path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import grimp
from importlinter.application import contract_utils, output
from importlinter.application.contract_utils import AlertLevel
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck

__all__ = ["AcyclicModulesContract"]


class AcyclicModulesContract(Contract):
    """No module of ``packages`` reaches itself through direct imports.

    Options: ``packages`` (the packages whose modules must form no cycle;
    imports leaving them are not followed) and ``ignore_imports``, as in the
    built-in contracts.
    """

    type_name = "acyclic_modules"

    packages = fields.ListField(subfield=fields.StringField())
    ignore_imports = fields.SetField(subfield=fields.ImportExpressionField(), required=False)
    unmatched_ignore_imports_alerting = fields.EnumField(AlertLevel, default=AlertLevel.ERROR)

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        removal = contract_utils.remove_ignored_imports_and_report(
            graph=graph,
            ignore_imports=self.ignore_imports,  # type: ignore[arg-type]
            unmatched_alerting=self.unmatched_ignore_imports_alerting,  # type: ignore[arg-type]
        )
        cycles: list[tuple[list[str], list[str]]] = []  # (the modules, one cycle among them)
        for package in self.packages:  # type: ignore[attr-defined]
            modules = {package} | graph.find_descendants(package)
            edges = {m: sorted(graph.find_modules_directly_imported_by(m) & modules)
                     for m in sorted(modules)}
            cycles.extend((component, _one_cycle(edges, component))
                          for component in _components(edges))
        return ContractCheck(kept=not cycles, warnings=list(removal.warnings),
                             ignored_import_count=removal.ignored_import_count,
                             metadata={"cycles": sorted(cycles)})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for modules, cycle in check.metadata["cycles"]:
            output.print_error(f"Import cycle among {', '.join(modules)}:")
            output.print_error(f"- {' -> '.join([*cycle, cycle[0]])}")
            output.new_line()


def _components(edges: dict[str, list[str]]) -> Iterator[list[str]]:
    """The strongly connected components of more than one module (Tarjan,
    iterative: a deep import chain must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    yield sorted(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])


def _one_cycle(edges: dict[str, list[str]], component: Sequence[str]) -> list[str]:
    """A shortest cycle through the component's first module (for the message)."""
    start = component[0]
    inside = set(component)
    came_from: dict[str, str] = {}
    queue: deque[str] = deque([start])
    while queue:
        node = queue.popleft()
        for target in edges[node]:
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return path[::-1]
            if target in inside and target not in came_from:
                came_from[target] = node
                queue.append(target)
    raise AssertionError(f"{start} is in a component but on no cycle")

