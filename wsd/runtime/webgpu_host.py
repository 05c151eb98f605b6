"""Reading TVM's host code: the TIR module right after SplitHostDevice, whose host PrimFuncs
are buffer declarations, workspace allocations and kernel launches in the order a runtime
runs them. wsd.runtime.webgpu_native interprets them (as tvmjs would); wsd.tuning reads a
tuned kernel's launches and workspaces from them.
"""

from __future__ import annotations

import tvm
from tvm import tirx


def static_int(value) -> int:
    """A static dimension or extent as an int."""
    if isinstance(value, int):
        return value
    if isinstance(value, tirx.IntImm):
        return int(value.value)
    raise NotImplementedError(f"symbolic dimension {value}: only static shapes are supported")


_BINARY = {
    "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
    "FloorDiv": lambda a, b: a // b, "FloorMod": lambda a, b: a % b,
    "Min": min, "Max": max,
}


BUFFER_DATA = tvm.ir.Op.get("tirx.buffer_data")
CALL_KERNEL = tvm.ir.Op.get("tirx.call_ffi_kernel")


def build_keeping_host(build_fn, ready=lambda: True):
    """Run `build_fn()` (tvm.compile or tvm.tirx.build) in the current pass context's
    settings plus an instrument that keeps the TIR module right after SplitHostDevice (the
    first time once `ready()`): (build_fn's result, that module). Its host functions are
    what host_steps reads."""
    kept = []

    @tvm.ir.instrument.pass_instrument
    class KeepHost:
        def run_after_pass(self, mod, info):
            if info.name == "tirx.SplitHostDevice" and ready():
                if kept:
                    raise RuntimeError("SplitHostDevice ran twice in one build")
                kept.append(mod)

    outer = tvm.transform.PassContext.current()
    with tvm.transform.PassContext(opt_level=outer.opt_level, config=dict(outer.config),
                                   instruments=[*outer.instruments, KeepHost()]):
        result = build_fn()
    if not kept:
        raise RuntimeError("the build ran no SplitHostDevice")
    return result, kept[0]


def host_steps(stmt, where: str = "host"):
    """A host PrimFunc's body after SplitHostDevice, as the steps it takes, in order:
      ("declare", buffer, data)      another (flattened) view of a buffer's data
      ("allocate", buffer)           a workspace between two kernels, in global memory
      ("bind", var, value)           a scalar
      ("launch", kernel, arguments)  call_ffi_kernel: buffers and scalars, then one extent
                                     per launch tag
    Argument checks are passed over; any other statement is an error naming `where`."""
    if isinstance(stmt, tirx.SeqStmt):
        for inner in stmt.seq:
            yield from host_steps(inner, where)
    elif isinstance(stmt, tirx.DeclBuffer):
        yield "declare", stmt.buffer, stmt.data
    elif isinstance(stmt, tirx.AllocBuffer):
        scope = stmt.buffer.scope()
        if scope not in ("global", ""):
            raise NotImplementedError(f"{where}: host allocation in scope {scope}")
        yield "allocate", stmt.buffer
    elif isinstance(stmt, tirx.Bind):
        yield "bind", stmt.var, stmt.value
    elif isinstance(stmt, tirx.AttrStmt):
        yield from host_steps(stmt.body, where)
    elif isinstance(stmt, tirx.AssertStmt):
        pass  # argument checks (shapes, dtypes): the callers check their arguments
    elif isinstance(stmt, tirx.Evaluate) and isinstance(stmt.value, tvm.ir.expr.Call) \
            and stmt.value.op.same_as(CALL_KERNEL):
        yield "launch", stmt.value.args[0].value, list(stmt.value.args[1:])
    else:
        raise NotImplementedError(f"{where}: host statement {type(stmt).__name__}")


def host_expr(expr, env):
    """The value of a host-side argument: a buffer's data (its Storage) or a scalar."""
    if isinstance(expr, (tirx.IntImm, tirx.FloatImm)):
        return expr.value
    if isinstance(expr, tirx.Var):
        if expr not in env:
            raise NotImplementedError(f"host variable {expr.name} has no value")
        return env[expr]
    if isinstance(expr, tvm.ir.expr.Call) and expr.op.same_as(BUFFER_DATA):
        return host_expr(expr.args[0], env)
    if isinstance(expr, tirx.Cast):
        value = host_expr(expr.value, env)
        return float(value) if "float" in expr.dtype else int(value)
    op = _BINARY.get(type(expr).__name__)
    if op is not None:
        return op(host_expr(expr.a, env), host_expr(expr.b, env))
    raise NotImplementedError(f"host expression {type(expr).__name__}: {expr}")
