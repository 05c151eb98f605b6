"""Tuned-schedule records: a JSON database per target in wsd/kernels/gemm/tuned/, applied at build.

A record says: for the kernel whose workload key is K (a structural hash of the unscheduled
PrimFunc, as wsd.compiler.optimize leaves it), use schedule rule R with parameters P. Records are
written only by `python -m wsd.tuning.tune admit`, which admits one only if the kernel so scheduled
matched the reference numerically and ran faster than dlight's default schedule on the same
device in the same run; the measurement is kept in the record. `pytest tests/perf` re-checks
every record.

    {"format": "wsd-tuned", "version": 1, "target": "webgpu",
     "records": {KEY: {"name", "rule", "params", "workload": {...}, "measured": {...}}}}

`ApplyRecords(target)` is the schedule-stage pass: it runs before dlight's rules, schedules
every kernel that has a record and marks it scheduled, so dlight leaves it alone. A record
whose schedule the target's GPU cannot run (a tensor-core record on a CUDA architecture
before sm_80, or with more shared memory than it offers) is passed over: dlight's default
schedules that kernel.
"""

from __future__ import annotations

import json
from pathlib import Path

import tvm
import tvm_ffi
from tvm import tirx

from wsd.kernels.gemm import tensor_core_matmul, tiled_matmul

FORMAT = "wsd-tuned"
VERSION = 1
ROOT = Path(__file__).resolve().parent / "tuned"

RULES = {tiled_matmul.NAME: (tiled_matmul.Config, tiled_matmul.apply),
         tensor_core_matmul.NAME: (tensor_core_matmul.Config, tensor_core_matmul.apply)}


def workload_key(func: tirx.PrimFunc) -> str:
    """Structural hash of the kernel without its attributes (names and attributes differ
    between contexts; the computation, shapes and dtypes do not)."""
    bare = tirx.PrimFunc(func.params, func.body, func.ret_type)
    return f"{tvm_ffi.structural_hash(bare) & (2**64 - 1):016x}"


def db_name(target: tvm.target.Target | str) -> str:
    kind = target if isinstance(target, str) else target.kind.name
    return kind


def db_path(target, root: Path | None = None) -> Path:
    return (root or ROOT) / f"{db_name(target)}.json"


def load(target, root: Path | None = None) -> dict:
    """The database for the target (an empty one where there is no file)."""
    path = db_path(target, root)
    if not path.is_file():
        return {"format": FORMAT, "version": VERSION, "target": db_name(target), "records": {}}
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} database")
    return data


def save(db: dict, target, root: Path | None = None) -> Path:
    """Write the database, each record's parameters in full (a parameter a rule gained
    later is written with its default), sorted by key."""
    path = db_path(target, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {key: dict(r, params=config_of(r).to_json()) for key, r in db["records"].items()}
    db = dict(db, records=dict(sorted(full.items())))
    path.write_text(json.dumps(db, indent=1) + "\n")
    return path


def config_of(record: dict):
    config_cls, _ = RULES[record["rule"]]
    return config_cls.from_json(record["params"])


def record_func(record: dict) -> tirx.PrimFunc:
    """The unscheduled kernel a record was measured on (stored as TVMScript)."""
    import tvm.script

    return tvm.script.from_source(record["tir"])


def runs_on(record: dict, target: tvm.target.Target) -> bool:
    """Whether the record's schedule can run on the target (see the module docstring)."""
    if record["rule"] == tensor_core_matmul.NAME:
        return tensor_core_matmul.supported(target, config_of(record))
    return True


def schedule_record(func: tirx.PrimFunc, record: dict):
    """Schedule `func` as the record says; returns the s_tir.Schedule (or None)."""
    _, apply = RULES[record["rule"]]
    return apply(func, config_of(record))


def ApplyRecords(target: tvm.target.Target, root: Path | None = None,  # noqa: N802
                 db: dict | None = None, log=None) -> tvm.transform.Pass:
    """Schedule every kernel that has a record in the target's database."""
    records = {key: record for key, record in (db or load(target, root))["records"].items()
               if runs_on(record, target)}

    @tvm.transform.module_pass(opt_level=0, name="wsd.ApplyTunedRecords")
    def run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if not records:
            return mod
        updates = {}
        for gvar, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs is not None \
                    and func.attrs.get("tirx.is_scheduled", False):
                continue
            record = records.get(workload_key(func))
            if record is None:
                continue
            sch = schedule_record(func, record)
            if sch is None:
                raise RuntimeError(f"record {record['name']} no longer applies to {gvar}")
            scheduled = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            if func.attrs is not None:
                for key, value in func.attrs.items():
                    if key not in scheduled.attrs:
                        scheduled = scheduled.with_attr(key, value)
            updates[gvar] = scheduled
            if log:
                log(f"tuned record {record['rule']} for {gvar.name_hint}")
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return run
