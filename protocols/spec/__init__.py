"""Job specs: validation, typed views, canonical form and digest.

A spec is a YAML (or JSON) document, validated by :func:`validate_spec` into a
:class:`JobSpec`; every error is reported at once as a :class:`SpecError`
(``path: message``) inside one :class:`SpecValidationError`.

Canonical form (``JobSpec.canonical()``)
----------------------------------------
A plain dict that identifies a spec version; :func:`spec_digest` hashes it.
Two specs that mean the same thing have the same canonical form, whatever the
key order, duration/size spelling, or which defaults were written out.

* Keys are the spec's own key names (``timeout``, ``memory``, ``as``), and
  mappings are sorted by key at every level.
* Every default is filled in.  A key that applies to the job's ``type`` is
  always present; keys of other kinds are absent (a batch job has no
  ``schedule``).  Optional values that are unset are ``None``: top-level
  ``queue_timeout``; docker ``command``/``workdir``; one of schedule
  ``cron``/``every``; DAG ``map``; stream ``source`` and (in consume mode)
  ``batch``.
* Durations are integer milliseconds (``30s`` -> 30000), sizes integer bytes
  (``256MiB`` -> 268435456).  ``cpu`` and ``fail_rate`` are always floats
  (``1`` -> 1.0).  Cron expressions have single spaces between fields.
* A DAG task is one flat mapping (task keys plus ``depends_on``, ``map``,
  ``when``); ``depends_on`` is sorted, since its order means nothing.  List
  order is kept everywhere else (commands, stages, partition names).
* Only str, int, float, bool, None, list and dict appear, so the form packs
  with msgpack; :func:`canonical_bytes` is that packing, and
  ``sha256:<hex>`` of it is :func:`spec_digest`.

:func:`validate_spec` with ``canonical=True`` (and :func:`validate_task` for
one task, as a peer sends it) validate the canonical form back into the same
view.  (They live in ``validate.py``, not as methods of the views in
``model.py``: the validator builds the views, so the views cannot call it
without an import circle.)
"""

from protocols.spec.errors import DOCUMENT, SpecError, SpecValidationError
from protocols.spec.model import (
    JOB_TYPES,
    Constraints,
    DagTask,
    DockerEngine,
    Engine,
    History,
    JobSpec,
    MapSpec,
    ProcessEngine,
    Resources,
    Retry,
    Schedule,
    SimEngine,
    Stage,
    StreamBatch,
    StreamSettings,
    StreamSource,
    TaskSpec,
    WasmEngine,
    canonical_bytes,
    spec_digest,
)
from protocols.spec.validate import (
    MAX_SPEC_BYTES,
    load_spec_text,
    parse_spec,
    parse_spec_bytes,
    validate_spec,
    validate_task,
)

__all__ = [
    "DOCUMENT",
    "JOB_TYPES",
    "MAX_SPEC_BYTES",
    "Constraints",
    "DagTask",
    "DockerEngine",
    "Engine",
    "History",
    "JobSpec",
    "MapSpec",
    "ProcessEngine",
    "Resources",
    "Retry",
    "Schedule",
    "SimEngine",
    "SpecError",
    "SpecValidationError",
    "Stage",
    "StreamBatch",
    "StreamSettings",
    "StreamSource",
    "TaskSpec",
    "WasmEngine",
    "canonical_bytes",
    "load_spec_text",
    "parse_spec",
    "parse_spec_bytes",
    "spec_digest",
    "validate_spec",
    "validate_task",
]
