"""WebGPU-native: the browser build's WGSL kernels, run on a native WebGPU implementation.

TVM's Python wheel has no WebGPU runtime (the browser uses tvmjs), so this module is a small
one of our own, used by `wsd verify --target webgpu-native` to check, block by block, that the
exact WGSL the browser bundle ships computes what PyTorch computes, and by `wsd bench --target
webgpu-native` to time it on a GPU.

    compile_program(mod)   the same compile as the browser build (`wsd.targets.webgpu_target()`,
                           wasm32 host; `wsd.compiler.pipeline.compile_module`), keeping two
                           intermediate modules (wsd.runtime.webgpu_host reads the second):
                             - the Relax functions after memory planning (the VM code:
                               storage/tensor allocations, reshapes, kernel calls, tuples);
                             - the TIR module right after SplitHostDevice: each host PrimFunc
                               is a few buffer declarations, workspace allocations and
                               `call_ffi_kernel(name, buffers..., scalars..., grid/thread
                               extents)` launches, in the order the browser runs them;
                           and the WGSL and function table (`inspect_source("func_info")`:
                           argument types, launch tags, write access) of the compiled webgpu
                           module, i.e. what the bundle's model.wasm carries.
    WebGPUExecutor         interprets those Relax functions and host PrimFuncs in Python and
                           dispatches every kernel through wgpu-py the way tvmjs does
                           (tvm/web/src/webgpu.ts in the wheel): one binding per buffer
                           argument in order (read-only or read-write as the table says),
                           then a uniform holding the scalar arguments as 32-bit words plus
                           the packed x grid size; blockIdx.x above 65535 is spread over z.
                           `timed(name, ...)` also times a call: the GPU time of its command
                           buffer (timestamp queries where the adapter has them), apart from
                           the host's time interpreting and encoding it (`wsd bench --target
                           webgpu-native`); `profiled(name, ...)` times each kernel
                           (timestamps around every compute pass, `--profile`).

wgpu-py on Mesa's lavapipe (a CPU Vulkan) is enough: it has shader-f16, so float16 builds run
too. A machine with a GPU gets its GPU adapter instead.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.tirx.buffer import BufferType

from wsd.compiler import pipeline as build
from wsd.runtime.webgpu_host import build_keeping_host, host_expr, host_steps, static_int
from wsd.runtime.wgsl import for_naga, probe_subgroup_sizes, split_sources
from wsd.targets import (SUBGROUP_SIZE, WEBGPU_NATIVE, WEBGPU_NATIVE_SUBGROUPS, TargetError,
                         webgpu_target)
# Limits the kernels may need beyond WebGPU's defaults; requested at the adapter's maximum
# (tvmjs asks for these too).
_LIMITS = ("max-storage-buffer-binding-size", "max-buffer-size",
           "max-storage-buffers-per-shader-stage", "max-compute-workgroup-storage-size",
           "max-compute-invocations-per-workgroup", "max-compute-workgroup-size-x",
           "max-compute-workgroup-size-y", "max-compute-workgroup-size-z")
_GRID_LIMIT = 1 << 16  # tvmjs spreads blockIdx.x over z from here on
_MAX_QUERIES = 4096  # WebGPU's most queries in one query set


# ---- the device ----------------------------------------------------------------------------

@dataclass
class Gpu:
    device: object  # wgpu.GPUDevice
    adapter: str  # what it runs on, in words
    shader_f16: bool
    limits: dict
    timestamps: bool = False  # the device has timestamp queries (WebGPU "timestamp-query")
    subgroups: bool = False  # the device has the WebGPU "subgroup" feature

    @cached_property
    def subgroup_sizes(self) -> frozenset:
        """The subgroup sizes kernels get (empty without the feature); probed on first use,
        by the subgroup target only."""
        return frozenset(probe_subgroup_sizes(self.device) if self.subgroups else ())


_GPU: Gpu | None = None


def gpu() -> Gpu:
    """The process's WebGPU device (created once), with shader-f16 when the adapter has it.
    Raises TargetError when wgpu-py or a WebGPU adapter is missing."""
    global _GPU
    if _GPU is not None:
        return _GPU
    try:
        import wgpu
    except ImportError as err:
        raise TargetError(f"target '{WEBGPU_NATIVE}' needs wgpu-py (pip install wgpu; "
                          f"scripts/setup.sh installs it): {err}") from None
    try:
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as err:  # noqa: BLE001 - wgpu raises several kinds
        adapter, reason = None, f"{type(err).__name__}: {err}"
    else:
        reason = "no adapter"
    if adapter is None:
        raise TargetError(f"target '{WEBGPU_NATIVE}' found no WebGPU adapter ({reason}); on a "
                          "machine without a GPU install Mesa's lavapipe (apt "
                          "mesa-vulkan-drivers; scripts/setup.sh does)")
    features = [f for f in ("shader-f16", "timestamp-query", "subgroup")
                if f in adapter.features]
    limits = {k: adapter.limits[k] for k in _LIMITS if k in adapter.limits}
    device = adapter.request_device_sync(required_features=features, required_limits=limits)
    info = adapter.info
    details = ", ".join(str(info[k]) for k in ("backend_type", "description") if info.get(k))
    name = f"{info.get('device') or '?'} ({details})" if details else info.get("device") or "?"
    _GPU = Gpu(device, name, "shader-f16" in features, dict(device.limits),
               "timestamp-query" in features, "subgroup" in features)
    return _GPU


def available() -> str | None:
    """None when WebGPU-native can run here, else why not."""
    try:
        gpu()
    except TargetError as err:
        return str(err)
    return None


def check_adapter(name: str) -> None:
    """Raises TargetError unless this machine's WebGPU adapter runs target `name` (one of
    wsd.targets.WEBGPU_NATIVES): a device must be there, and for the subgroup kernel set its
    subgroups must be the size the kernels are written for."""
    dev = gpu()
    if name == WEBGPU_NATIVE_SUBGROUPS and dev.subgroup_sizes != {SUBGROUP_SIZE}:
        have = (f"subgroups of {sorted(dev.subgroup_sizes)} invocations" if dev.subgroup_sizes
                else "no subgroup feature")
        raise TargetError(f"target '{name}' needs subgroups of exactly {SUBGROUP_SIZE} "
                          f"invocations; this adapter ({dev.adapter}) has {have}. Use "
                          f"'{WEBGPU_NATIVE}'")


# ---- compiling: the browser build, with its intermediate modules kept ----------------------

@dataclass
class Kernel:
    """One WGSL kernel as TVM generated it, and how tvmjs launches it."""

    name: str  # its entry point
    wgsl: str
    arg_types: list[str]  # "handle" for a buffer, else the scalar's dtype
    launch_tags: list[str]  # blockIdx.* / threadIdx.* per trailing launch argument
    write_access: list[bool]  # per buffer argument

    @classmethod
    def from_info(cls, info: dict, wgsl: str) -> "Kernel":
        tags, access = [], None
        for tag in info["launch_param_tags"]:
            if tag.startswith("paramWriteAccess:"):
                access = [bool(v) for v in json.loads(tag[len("paramWriteAccess:"):])]
            else:
                tags.append(tag)
        buffers = sum(t == "handle" for t in info["arg_types"])
        if access is None or len(access) != buffers:
            raise ValueError(f"kernel {info['name']}: write access of its {buffers} buffers "
                             f"missing from {info['launch_param_tags']}")
        return cls(info["name"], wgsl, list(info["arg_types"]), tags, access)


@dataclass
class Program:
    """What the executor runs: lowered Relax functions, host PrimFuncs, WGSL kernels."""

    relax_mod: tvm.IRModule  # after wsd.compiler.pipeline.pipeline (VM-level Relax + scheduled TIR)
    host: dict  # PrimFunc name -> host PrimFunc after SplitHostDevice
    kernels: dict  # kernel name -> Kernel
    target: tvm.target.Target

    def functions(self) -> list[str]:
        return [gv.name_hint for gv, f in self.relax_mod.functions.items()
                if isinstance(f, relax.Function)]


def _modules(module):
    yield module
    for sub in module.imports:
        yield from _modules(sub)


def compile_program(mod: tvm.IRModule, target: tvm.target.Target | None = None,
                    weight_layouts=None) -> Program:
    """Compile a Relax module as the browser build does and keep what running it needs.
    `weight_layouts`: see wsd.compiler.pipeline.pipeline."""
    if target is None:
        target = webgpu_target()
    planned = []  # set once the Relax pipeline is through
    # FoldConstant builds TIR too (for the CPU): only the build after the Relax pipeline is
    # the webgpu one.
    compiled, lowered = build_keeping_host(
        lambda: build.compile_module(mod, target, weight_layouts,
                                     hook=lambda phase, _: planned.append(phase == build.PHASES[-1])),
        ready=lambda: any(planned))
    executable = compiled.executable
    webgpu = [m for m in _modules(executable.mod) if m.kind == "webgpu"]
    if len(webgpu) != 1:
        raise RuntimeError(f"expected one webgpu module in the build, found {len(webgpu)}")
    infos = json.loads(webgpu[0].inspect_source("func_info"))
    sources = split_sources(webgpu[0].inspect_source())
    if set(infos) != set(sources):
        raise RuntimeError("webgpu function table and sources disagree: "
                           f"{sorted(set(infos) ^ set(sources))}")
    kernels = {name: Kernel.from_info(info, sources[name]) for name, info in infos.items()}
    host = {gv.name_hint: f for gv, f in lowered.functions.items()
            if isinstance(f, tirx.PrimFunc) and int(f.attrs.get("calling_conv", 0)) != 2}
    return Program(compiled.lowered, host, kernels, target)


# ---- device tensors ------------------------------------------------------------------------

def _nbytes(shape, dtype: str) -> int:
    t = tvm.runtime.DataType(dtype)
    return int(np.prod(shape, dtype=np.int64)) * ((t.bits * t.lanes + 7) // 8)


def _buffer(device, nbytes: int):
    import wgpu

    usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
    return device.create_buffer(size=max(4, -(-nbytes // 4) * 4), usage=usage)


@dataclass
class Storage:
    buffer: object  # wgpu.GPUBuffer
    nbytes: int


@dataclass
class Tensor:
    """A tensor in a WebGPU buffer (a view of its storage from byte 0)."""

    storage: Storage
    shape: tuple
    dtype: str
    executor: "WebGPUExecutor" = field(repr=False)

    @property
    def nbytes(self) -> int:
        return _nbytes(self.shape, self.dtype)

    def numpy(self) -> np.ndarray:
        return self.executor.download(self)


# ---- the executor --------------------------------------------------------------------------

@dataclass
class CallTiming:
    """One call of `WebGPUExecutor.timed`, in seconds."""

    gpu_s: float  # the call's command buffer on the GPU, measured as `method` says
    method: str  # "timestamp-query": from the beginning of its first compute pass to the end
    #              of its last; "submit-to-done": wall clock from submit until the GPU is done
    encode_s: float  # the host before submit: interpreting the Relax code, encoding kernels
    wall_s: float  # wall clock from submit until the host saw the GPU done
    dispatches: int


class WebGPUExecutor:
    """`executor(name, *args)` runs the Relax function `name` of a Program on the WebGPU
    device: numpy arguments are uploaded first, Tensors are passed as they are; returns a
    Tensor or a tuple. All kernels of one call go into one command buffer, submitted at the
    end of the call (as tvmjs batches until it syncs)."""

    def __init__(self, program: Program, device: Gpu | None = None):
        self.program = program
        self.gpu = device or gpu()
        self.device = self.gpu.device
        self._pipelines: dict[str, tuple] = {}
        self._constants: dict = {}
        # Kernels launched and not yet submitted: (pipeline, bind group, workgroups, host
        # call), encoded at flush, when the first and last compute pass (for timestamps)
        # are known.
        self._pending: list[tuple] = []
        self._host_call = ("", 0)  # (host PrimFunc, serial) launching kernels now (profiles)
        self._keep: list = []  # buffers the pending commands use
        self._clock = None  # timed(): (query set or None, buffer read back to wait for the GPU)
        self.dispatches = 0
        self.after_dispatch = None  # test hook: f(kernel name, args) after each dispatch

    # -- memory
    def alloc(self, nbytes: int) -> Storage:
        limit = self.gpu.limits.get("max-storage-buffer-binding-size")
        if limit is not None and nbytes > limit:
            raise RuntimeError(f"a {nbytes}-byte buffer is above this device's storage binding "
                               f"limit ({limit} bytes)")
        return Storage(_buffer(self.device, nbytes), nbytes)

    def upload(self, array: np.ndarray) -> Tensor:
        array = np.ascontiguousarray(array)
        dtype = str(array.dtype)
        if dtype not in ("float32", "float16", "int32", "uint32"):
            raise TypeError(f"WebGPU has no {dtype} tensors (int64 must be int32 at the model "
                            "boundary)")
        storage = self.alloc(array.nbytes)
        data = array.tobytes()
        if len(data) % 4:
            data += bytes(4 - len(data) % 4)
        if data:
            self.device.queue.write_buffer(storage.buffer, 0, data)
        return Tensor(storage, tuple(array.shape), dtype, self)

    def download(self, tensor: Tensor) -> np.ndarray:
        self.flush()
        nbytes = tensor.nbytes
        if nbytes == 0:
            return np.zeros(tensor.shape, tensor.dtype)
        data = self.device.queue.read_buffer(tensor.storage.buffer, 0, -(-nbytes // 4) * 4)
        return np.frombuffer(bytes(data)[:nbytes], dtype=tensor.dtype).reshape(tensor.shape).copy()

    def flush(self) -> None:
        """Submit the pending kernels (reading a buffer back waits for them)."""
        commands = self._encode()
        if commands is not None:
            self.device.queue.submit([commands])
        self._keep = []

    def _encode(self, query_set=None, resolve=None):
        """The pending kernels as one command buffer, a compute pass each (as tvmjs); with a
        query set, timestamps 0 and 1 at the beginning of the first pass and the end of the
        last, resolved into the buffer `resolve`. None when nothing is pending."""
        if query_set is None:
            return self._encode_passes({})
        last = len(self._pending) - 1
        stamps = {0: {"beginning_of_pass_write_index": 0}}
        stamps.setdefault(last, {})["end_of_pass_write_index"] = 1
        stamps = {i: {"query_set": query_set, **s} for i, s in stamps.items()}
        return self._encode_passes(stamps, [(query_set, 2, resolve, 0)])

    def _encode_passes(self, stamps: dict, resolves=()):
        """The pending kernels as one command buffer, a compute pass each; pass i writes the
        timestamps stamps[i] (a GPUComputePassTimestampWrites), then each (query set, count,
        buffer, offset) of `resolves` is resolved. None when nothing is pending."""
        if not self._pending:
            return None
        encoder = self.device.create_command_encoder()
        for i, (pipeline, group, work, _) in enumerate(self._pending):
            compute = encoder.begin_compute_pass(timestamp_writes=stamps.get(i))
            compute.set_pipeline(pipeline)
            compute.set_bind_group(0, group)
            compute.dispatch_workgroups(*work)
            compute.end()
        for query_set, count, buffer, offset in resolves:
            encoder.resolve_query_set(query_set, 0, count, buffer, offset)
        self._pending = []
        return encoder.finish()

    # -- Relax
    def has(self, name: str) -> bool:
        return name in self.program.functions()

    def __call__(self, name: str, *args):
        try:
            return self._interpret(name, args)
        finally:
            self.flush()

    @property
    def timing_method(self) -> str:
        """How `timed` measures the GPU (CallTiming.method): timestamp queries where the
        device has them, else wall clock from submit to completion."""
        return "timestamp-query" if self.gpu.timestamps else "submit-to-done"

    def timed(self, name: str, *args) -> tuple[object, CallTiming]:
        """Run `name` as a call does, wait for the GPU, and time it: (result, CallTiming).

        The whole call is encoded before it is submitted, so the GPU figure leaves out the
        host's work (in Python, far slower than the browser's JavaScript), reported apart."""
        import wgpu

        self.flush()  # earlier work is not this call's
        if self._clock is None:
            if self.timing_method == "timestamp-query":
                self._clock = (self.device.create_query_set(type="timestamp", count=2),
                               self.device.create_buffer(
                                   size=16, usage=wgpu.BufferUsage.QUERY_RESOLVE
                                   | wgpu.BufferUsage.COPY_SRC))
            else:
                self._clock = (None, _buffer(self.device, 4))
        query_set, readback = self._clock
        start, dispatches = time.perf_counter(), self.dispatches
        result = self._pending_call(name, args)
        commands = self._encode(query_set, readback)
        if commands is None:
            raise RuntimeError(f"{name} launches no kernel: there is no GPU work to time")
        submitted = time.perf_counter()
        self.device.queue.submit([commands])
        self._keep = []
        data = self.device.queue.read_buffer(readback)  # waits for the GPU
        done = time.perf_counter()
        if query_set is None:
            gpu_s = done - submitted
        else:
            begin, end = np.frombuffer(data, np.uint64).tolist()  # WebGPU's are nanoseconds
            gpu_s = (end - begin) * 1e-9
            if gpu_s <= 0:
                raise RuntimeError(f"timestamps of {name} do not increase: {begin}, {end}")
        return result, CallTiming(gpu_s, self.timing_method, submitted - start,
                                  done - submitted, self.dispatches - dispatches)

    def profiled(self, name: str, *args) -> tuple[object, list[tuple[str, float]]]:
        """Run `name` as a call does with timestamps around every kernel's compute pass:
        (result, [(host function, GPU seconds)], one entry per call of a host function (the
        sum of its kernels: split-K launches two), in launch order). Needs the adapter's
        timestamp-query."""
        import wgpu

        if not self.gpu.timestamps:
            raise TargetError(f"the WebGPU adapter ({self.gpu.adapter}) has no "
                              "timestamp-query: kernels cannot be timed one by one")
        result = self._pending_call(name, args)
        launched = [entry[3] for entry in self._pending]
        if not launched:
            raise RuntimeError(f"{name} launches no kernel: there is no GPU work to time")
        per_set = _MAX_QUERIES // 2  # passes per query set
        firsts = range(0, len(launched), per_set)
        segment = -(-8 * _MAX_QUERIES // 256) * 256  # resolve offsets are 256-byte aligned
        readback = self.device.create_buffer(
            size=segment * len(firsts), usage=wgpu.BufferUsage.QUERY_RESOLVE
            | wgpu.BufferUsage.COPY_SRC)
        stamps, resolves = {}, []
        for n, first in enumerate(firsts):
            count = 2 * min(per_set, len(launched) - first)
            query_set = self.device.create_query_set(type="timestamp", count=count)
            resolves.append((query_set, count, readback, n * segment))
            for i in range(first, first + count // 2):
                stamps[i] = {"query_set": query_set,
                             "beginning_of_pass_write_index": 2 * (i - first),
                             "end_of_pass_write_index": 2 * (i - first) + 1}
        self.device.queue.submit([self._encode_passes(stamps, resolves)])
        self._keep = []
        data = np.frombuffer(self.device.queue.read_buffer(readback), np.uint64)
        times = np.concatenate([data[n * segment // 8:][:count]
                                for n, (_, count, _, _) in enumerate(resolves)])
        seconds = (times[1::2].astype(np.float64) - times[0::2]) * 1e-9  # nanoseconds
        calls: dict[tuple, float] = {}
        for call, s in zip(launched, seconds.tolist()):
            calls[call] = calls.get(call, 0.0) + s
        return result, [(function, s) for (function, _), s in calls.items()]

    def _pending_call(self, name: str, args):
        """Run `name` with nothing else pending, its kernels left pending for the caller to
        encode (submitted if the call fails, so nothing half-done stays behind)."""
        self.flush()
        try:
            return self._interpret(name, args)
        except BaseException:
            self.flush()
            raise

    def _interpret(self, name: str, args):
        """Run the Relax function `name`; its kernels are left pending."""
        func = self.program.relax_mod[name]
        if not isinstance(func, relax.Function):
            raise TypeError(f"{name} is not a Relax function")
        args = [self.upload(a) if isinstance(a, np.ndarray) else a for a in args]
        return self._run_relax(func, args)

    def _run_relax(self, func: relax.Function, args):
        if len(args) != len(func.params):
            raise TypeError(f"{len(args)} arguments for {len(func.params)} parameters")
        env = dict(zip(func.params, args))
        body = func.body
        for block in body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    raise NotImplementedError(f"Relax binding {type(binding).__name__}")
                env[binding.var] = self._eval(binding.value, env)
        return self._eval(body.body, env)

    def _eval(self, expr, env):
        if isinstance(expr, relax.Var):
            return env[expr]
        if isinstance(expr, relax.Call):
            return self._call(expr, env)
        if isinstance(expr, relax.Tuple):
            return tuple(self._eval(f, env) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return self._eval(expr.tuple_value, env)[expr.index]
        if isinstance(expr, relax.ShapeExpr):
            return tuple(static_int(v) for v in expr.values)
        if isinstance(expr, tvm.ir.GenericConst):
            value = expr.value
            if isinstance(value, tvm.runtime.Tensor):  # a constant tensor: upload once
                key = expr
                if key not in self._constants:
                    self._constants[key] = self.upload(value.numpy())
                return self._constants[key]
            return value
        if isinstance(expr, (tirx.IntImm, tirx.FloatImm, tvm.ir.StringImm)):
            return expr.value
        raise NotImplementedError(f"Relax expression {type(expr).__name__}: {expr}")

    def _call(self, call: relax.Call, env):
        op = call.op
        if isinstance(op, tvm.ir.GlobalVar):
            func = self.program.relax_mod[op]
            args = [self._eval(a, env) for a in call.args]
            if isinstance(func, relax.Function):
                return self._run_relax(func, args)
            return self._run_host(op.name_hint, args)
        if isinstance(op, relax.ExternFunc):
            return self._builtin(op.global_symbol, [self._eval(a, env) for a in call.args])
        name = op.name
        if name == "relax.vm.alloc_storage":
            shape, _device, dtype = (self._eval(a, env) for a in call.args[:3])
            return self.alloc(_nbytes(shape, str(dtype)))
        if name == "relax.vm.alloc_tensor":
            storage, offset, shape, dtype = (self._eval(a, env) for a in call.args[:4])
            if offset != 0:
                raise NotImplementedError("tensors at a storage offset other than 0")
            if _nbytes(shape, str(dtype)) > storage.nbytes:
                raise RuntimeError(f"tensor {shape} {dtype} does not fit its storage")
            return Tensor(storage, tuple(shape), str(dtype), self)
        if name == "relax.vm.kill_object":
            env.pop(call.args[0], None)  # the pending commands keep the buffer alive
            return None
        if name == "relax.null_value":
            return None
        raise NotImplementedError(f"Relax operator {name}")

    def _builtin(self, name: str, args):
        if name == "vm.builtin.reshape":
            tensor, shape = args
            if _nbytes(shape, tensor.dtype) != tensor.nbytes:
                raise ValueError(f"reshape {tensor.shape} -> {shape}")
            return Tensor(tensor.storage, tuple(shape), tensor.dtype, self)
        if name == "vm.builtin.check_tensor_info":
            tensor, ndim, dtype = args[:3]
            if len(tensor.shape) != ndim or (dtype is not None and tensor.dtype != str(dtype)):
                raise ValueError(f"{args[-1]}: got {tensor.shape} {tensor.dtype}")
            return None
        if name == "vm.builtin.match_shape":
            tensor, _heap, ndim = args[:3]
            checks = args[3:3 + 2 * ndim]
            for axis in range(ndim):
                mode, value = checks[2 * axis], checks[2 * axis + 1]
                if mode == 0:  # assert equal to an immediate
                    if tensor.shape[axis] != value:
                        raise ValueError(f"{args[-1]}: got shape {tensor.shape}")
                elif mode != 2:  # 2: no check; others read or write the shape heap
                    raise NotImplementedError("symbolic shapes (match_shape mode "
                                              f"{mode}) are not supported")
            return None
        raise NotImplementedError(f"VM builtin {name}")

    # -- host PrimFuncs: buffer declarations, workspaces and kernel launches
    def _run_host(self, name: str, args):
        func = self.program.host.get(name)
        if func is None:
            raise KeyError(f"no host function {name}")
        env = {}
        if len(args) != len(func.params):
            raise TypeError(f"{name}: {len(args)} arguments for {len(func.params)} parameters")
        for param, arg in zip(func.params, args):
            if not isinstance(param.ty, BufferType):  # a scalar
                env[param] = arg
                continue
            shape = tuple(static_int(d) for d in param.shape)
            if not isinstance(arg, Tensor) or arg.shape != shape or arg.dtype != param.dtype:
                got = (arg.shape, arg.dtype) if isinstance(arg, Tensor) else type(arg).__name__
                raise TypeError(f"{name}: {param.name} is {shape} {param.dtype}, got {got}")
            env[param] = arg.storage  # a buffer variable stands for its storage
        self._host_call = (name, self._host_call[1] + 1)
        for step in host_steps(func.body, name):
            kind = step[0]
            if kind == "declare":
                env[step[1]] = host_expr(step[2], env)  # a buffer stands for its storage
            elif kind == "allocate":
                buffer = step[1]
                shape = [static_int(host_expr(d, env)) for d in buffer.shape]
                env[buffer] = self.alloc(_nbytes(shape, buffer.dtype))
            elif kind == "bind":
                env[step[1]] = host_expr(step[2], env)
            else:
                self.launch(step[1], [host_expr(a, env) for a in step[2]])
        return None

    # -- kernels
    def _pipeline(self, kernel: Kernel):
        cached = self._pipelines.get(kernel.name)
        if cached is not None:
            return cached
        import wgpu

        if "enable f16;" in kernel.wgsl and not self.gpu.shader_f16:
            raise TargetError(f"kernel {kernel.name} computes in float16, and this WebGPU "
                              f"adapter ({self.gpu.adapter}) has no shader-f16")
        if "enable subgroups;" in kernel.wgsl and not self.gpu.subgroups:
            raise TargetError(f"kernel {kernel.name} uses subgroups, and this WebGPU adapter "
                              f"({self.gpu.adapter}) has none")
        entries = [{"binding": i, "visibility": wgpu.ShaderStage.COMPUTE,
                    "buffer": {"type": wgpu.BufferBindingType.storage if write
                               else wgpu.BufferBindingType.read_only_storage}}
                   for i, write in enumerate(kernel.write_access)]
        entries.append({"binding": len(entries), "visibility": wgpu.ShaderStage.COMPUTE,
                        "buffer": {"type": wgpu.BufferBindingType.uniform}})
        layout = self.device.create_bind_group_layout(entries=entries)
        module = self.device.create_shader_module(code=for_naga(kernel.wgsl),
                                                  label=kernel.name)
        pipeline = self.device.create_compute_pipeline(
            layout=self.device.create_pipeline_layout(bind_group_layouts=[layout]),
            compute={"module": module, "entry_point": kernel.name})
        self._pipelines[kernel.name] = (layout, pipeline)
        return layout, pipeline

    def launch(self, name: str, args) -> None:
        """Dispatch a kernel as tvmjs does (encoded and submitted at flush): args are its
        buffers (Storage) and scalars in parameter order, then one extent per launch tag."""
        import wgpu

        kernel = self.program.kernels[name]
        n = len(kernel.arg_types)
        if len(args) != n + len(kernel.launch_tags):
            raise TypeError(f"kernel {name}: {len(args)} arguments, expected {n} + "
                            f"{len(kernel.launch_tags)} launch extents")
        work = [1] * 6  # blockIdx x, y, z, threadIdx x, y, z
        for tag, extent in zip(kernel.launch_tags, args[n:]):
            axis = "xyz".index(tag[-1])
            if tag.startswith("blockIdx."):
                work[axis] = int(extent)
            elif tag.startswith("threadIdx."):
                work[3 + axis] = int(extent)
            else:
                raise NotImplementedError(f"kernel {name}: launch tag {tag}")
        if work[2] != 1:
            raise RuntimeError(f"kernel {name}: blockIdx.z is reserved for the x-grid spread")
        pack_x = work[0]
        while work[0] >= _GRID_LIMIT:  # spread a large x grid over z, as tvmjs does
            work[0] = (work[0] + 1) // 2
            work[2] *= 2
        buffers, words = [], []
        for dtype, value in zip(kernel.arg_types, args[:n]):
            if dtype == "handle":
                buffers.append(value)
            elif dtype.startswith("int"):
                words.append(struct.pack("<i", int(value)))
            elif dtype.startswith("uint"):
                words.append(struct.pack("<I", int(value)))
            elif dtype.startswith("float"):
                words.append(struct.pack("<f", float(value)))
            else:
                raise NotImplementedError(f"kernel {name}: scalar argument of type {dtype}")
        words.append(struct.pack("<I", pack_x))
        layout, pipeline = self._pipeline(kernel)
        uniform = self.device.create_buffer_with_data(
            data=b"".join(words), usage=wgpu.BufferUsage.UNIFORM)
        entries = [{"binding": i, "resource": {"buffer": s.buffer, "offset": 0,
                                               "size": s.buffer.size}}
                   for i, s in enumerate(buffers)]
        entries.append({"binding": len(buffers),
                        "resource": {"buffer": uniform, "offset": 0, "size": uniform.size}})
        group = self.device.create_bind_group(layout=layout, entries=entries)
        self._pending.append((pipeline, group, tuple(work[:3]), self._host_call))
        self._keep.extend([uniform, group, *buffers])
        self.dispatches += 1
        if self.after_dispatch is not None:
            self.after_dispatch(name, args)


def load(mod: tvm.IRModule, target: tvm.target.Target | None = None) -> WebGPUExecutor:
    """Compile a Relax module as the browser build does; an executor for its functions."""
    return WebGPUExecutor(compile_program(mod, target))
