"""Whole model functions (CLIP, the UNet step, the VAE, a whole image) and the pipeline's
memory, TVM against PyTorch; `WebGPUModelBench` for webgpu-native.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import Sequence

import numpy as np

from wsd import settings
from wsd.bench import profile
from wsd.bench.device import Device, compile_policy, count_flops, strict_fp32, torch_compiled
from wsd.bench.fused import kind_of
from wsd.bench.kernels import Prepared, first_output, rel_l2, to_numpy
from wsd.bench.options import BenchError, MEMORY_GOAL_BYTES, PART_FUNCTIONS
from wsd.checks.browser_run import image_psnr
from wsd.compiler.trace import denoiser
from wsd.targets import WEBGPU_NATIVE


def part_function(model, part: str) -> str:
    """The compiled function that times `part` (clip, unet, vae) of this model: the UNet's
    is the one a step calls at the default guidance (batch 2 with guidance, unless the
    guidance is an embedding)."""
    return denoiser(model) if part == "unet" else PART_FUNCTIONS[part]


def _pipeline_from(model, library, modules):
    """wsd.runtime.pipeline.Pipeline with its weights taken from wrapped modules already loaded
    (wsd.runtime.weights.collect_weights(modules=...)) instead of loading the model again."""
    from wsd.runtime.pipeline import Pipeline, upload_weights

    class PipelineFrom(Pipeline):
        def _upload_weights(self):
            return upload_weights(self.executor, self.model, self.meta, modules)

    return PipelineFrom(model, library)


class ModelBench:
    """One model in one dtype on one device: the compiled library (wsd.runtime.library), its Pipeline,
    and the same PyTorch modules in diffusers' pipeline (wsd.checks.reference)."""

    PROMPT = "a lighthouse on a cliff at dusk, oil painting"
    tvm_note = ""  # what every TVM figure of a part says about itself

    def __init__(self, model, device: Device, dtype: str, height: int | None = None,
                 width: int | None = None, compile_option: str = "auto", steps: int = 20,
                 log=print):
        import torch

        from wsd.checks.reference import Reference
        from wsd.compiler.trace import (EmbeddedGuidanceUNet, GuidedUNet, PlainUNet,
                                        TextEncoder, VaeDecoder, check_dtype, resolve_size)

        check_dtype(dtype)
        strict_fp32()
        self.model, self.device, self.dtype, self.steps, self.log = model, device, dtype, steps, log
        self.height, self.width = resolve_size(model, height, width)
        self.compile_enabled, self.compile_reason = compile_policy(compile_option, device)
        self._compile()
        # diffusers' pipeline first, on the CPU in the dtype; wsd's pipeline takes its weights
        # from the same modules (one model load, not two: SD v1.5's takes ~30 s).
        self.reference = Reference(model, "cpu")
        pipe = self.reference.pipe
        pipe.to(dtype=getattr(torch, dtype))
        plain = EmbeddedGuidanceUNet if model.guidance_embedded else PlainUNet
        wrapped = {"encode_text": TextEncoder(pipe.text_encoder).eval(),
                   "unet": plain(pipe.unet).eval(),
                   "decode": VaeDecoder(pipe.vae).eval()}
        if not model.guidance_embedded:
            wrapped["unet_guided"] = GuidedUNet(pipe.unet).eval()
        self.measured: dict = {}
        self._load(wrapped)
        pipe.to(device.torch)
        self.torch_modules = {k: wrapped[k] for k in ("encode_text", denoiser(model), "decode")}
        self._flops: dict[str, int] = {}

    def _compile(self) -> None:
        from wsd.runtime.library import build

        self.library = build(self.model, self.device.target, self.dtype, self.height,
                             self.width, log=self.log)

    def _load(self, wrapped: dict) -> None:
        """wsd's pipeline, its weights taken from `wrapped` (the PyTorch side's modules, still
        on the CPU); on CUDA, the device memory it takes."""
        import torch

        device = self.device
        if device.is_cuda:  # what the device has free before wsd's pipeline exists
            import gc

            import tvm

            gc.collect()
            tvm.get_global_func("vm.builtin.memory_manager.clear")()  # pooled, unused blocks
            torch.cuda.empty_cache()
            free0 = torch.cuda.mem_get_info()[0]
        self.pipe = _pipeline_from(self.model, self.library, wrapped)
        if device.is_cuda:
            device.sync()
            self.measured["tvm_weight_bytes"] = free0 - torch.cuda.mem_get_info()[0]
            self.pipe.generate(self.PROMPT, steps=2, seed=0)  # every function, once
            device.sync()
            self.measured["tvm_after_image_bytes"] = free0 - torch.cuda.mem_get_info()[0]
            torch.cuda.reset_peak_memory_stats()

    def _tvm_call(self, function: str, inputs: tuple):
        """(a no-argument call of the compiled `function` on `inputs`, uploaded once; and a
        timer for Prepared.tvm_timer, or None: the call is timed by wall clock)."""
        uploaded = [self.pipe.executor.upload(x.numpy()) for x in inputs]
        return (lambda: self.pipe.call(function, *uploaded)), None

    @cached_property
    def tokenizer(self):
        return self.model.tokenizer()

    def inputs(self, function: str) -> tuple:
        from wsd.compiler.trace import example_inputs

        inputs = example_inputs(self.model, self.height, self.width)[function]
        if function == "encode_text":  # a real prompt's ids (bos ... eos pad)
            ids = self.tokenizer(self.PROMPT).reshape(1, -1).astype(np.int32)
            import torch

            inputs = (torch.from_numpy(ids),)
        return inputs

    def flops(self, function: str) -> int:
        if function not in self._flops:
            args = tuple(x.to(self.device.torch) for x in self.inputs(function))
            self._flops[function] = count_flops(self.torch_modules[function], *args)
        return self._flops[function]

    def prepare_part(self, part: str) -> Prepared:
        import torch

        function = part_function(self.model, part)
        inputs = self.inputs(function)
        module = self.torch_modules[function]
        args = tuple(x.to(self.device.torch) for x in inputs)
        run_tvm, timer = self._tvm_call(function, inputs)

        def run_eager():
            with torch.no_grad():
                return module(*args)

        flops = self.flops(function)
        expected = run_eager()
        error = rel_l2(first_output(run_tvm()).numpy(), to_numpy(expected))
        compiled, note = torch_compiled(module, args, self.compile_enabled, self.compile_reason)
        shape = "x".join(map(str, inputs[0].shape))
        return Prepared(f"{part} ({function})", self.dtype, "model", run_tvm, run_eager,
                        compiled, note, flops, None, error, shape=shape, note=self.tvm_note,
                        tvm_timer=timer)

    def profile(self, part: str) -> dict:
        """The part's compiled function, each kernel call timed (wsd.bench.profile)."""
        function = part_function(self.model, part)
        run, _ = self._tvm_call(function, self.inputs(function))
        rows, total = profile.profile_calls(self.pipe.executor.vm, run, self.device.sync)
        return {"title": f"{part} ({function}) {self.dtype}", "total_ms": total,
                "total_is": "instrumented (each call synchronised)",
                "kernels": rows, "kinds": profile.group_by_kind(rows, kind_of)}

    def image_flops(self) -> int:
        from wsd.samplers import make_scheduler

        sampler = make_scheduler("pndm", self.model.configs["scheduler"])
        sampler.set_timesteps(self.steps)
        evaluations = len(sampler.timesteps)
        return (2 * self.flops("encode_text") + evaluations * self.flops(denoiser(self.model))
                + self.flops("decode"))

    def prepare_image(self) -> Prepared:
        """A whole image: prompt -> PNDM, `steps` steps, the default guidance -> uint8 pixels."""
        import torch

        from wsd.checks.reference import Settings

        settings = Settings(self.PROMPT, steps=self.steps)
        pipe = self.reference.pipe
        unets = {"eager": pipe.unet}

        def run_tvm():
            return self.pipe.generate(self.PROMPT, steps=self.steps, seed=settings.seed)

        def run_torch(which: str):
            pipe.unet = unets[which]
            try:
                return self.reference.image(settings, self.height, self.width)
            finally:
                pipe.unet = unets["eager"]

        flops = self.image_flops()
        ours = run_tvm()
        if self.device.is_cuda:
            torch.cuda.reset_peak_memory_stats()
        theirs = run_torch("eager")
        if self.device.is_cuda:  # weights (live) + one image's activations
            self.measured["torch_peak_bytes"] = torch.cuda.max_memory_allocated()
        psnr = image_psnr(ours, theirs)
        note = f"PSNR vs diffusers {psnr:.1f} dB"
        extra = {"psnr": psnr}
        if self.dtype != "float32":
            # Half precision drifts over the steps on both sides: how far each lands from
            # diffusers computing in float32 (on the same, rounded weights) says whether
            # wsd's drift is PyTorch's or its own.
            pipe.to(dtype=torch.float32)
            try:
                exact = run_torch("eager")
            finally:
                pipe.to(dtype=getattr(torch, self.dtype))
            extra["psnr_vs_fp32"] = image_psnr(ours, exact)
            extra["torch_psnr_vs_fp32"] = image_psnr(theirs, exact)
            note += (f"; vs diffusers fp32: wsd {extra['psnr_vs_fp32']:.1f} dB, "
                     f"diffusers {extra['torch_psnr_vs_fp32']:.1f} dB")
        compiled, compile_note = None, self.compile_reason
        if self.compile_enabled:
            unets["compiled"] = torch.compile(unets["eager"])
            start = time.perf_counter()
            try:
                run_torch("compiled")
                compile_note = f"UNet compiled in {time.perf_counter() - start:.0f} s"
                compiled = lambda: run_torch("compiled")  # noqa: E731
            except Exception as err:  # noqa: BLE001
                compile_note = f"torch.compile failed: {type(err).__name__}"
        prep = Prepared(f"image {self.steps} steps", self.dtype, "image", run_tvm,
                        lambda: run_torch("eager"), compiled, compile_note, flops, None, None,
                        shape=f"{self.height}x{self.width}", note=note)
        prep.extra.update(extra)
        return prep

    def memory(self) -> dict:
        """Weights + planned activations (from the build), and what was measured on CUDA."""
        return {"dtype": self.dtype, "model": self.model.name,
                "size": [self.height, self.width],
                "planned": self.library.meta.get("memory"),
                "measured": dict(self.measured),
                "goal_bytes": MEMORY_GOAL_BYTES if self.model.name == "sd15" else None}


class WebGPUModelBench(ModelBench):
    """ModelBench for target webgpu-native, the parts clip, unet and vae: their functions
    compiled as the browser bundle compiles them (webgpu_native.compile_program: the same
    target, passes and tuned records), run by webgpu_native.WebGPUExecutor on the WebGPU
    adapter, weights uploaded once. TVM's figure is the GPU time of one call's command
    buffer (WebGPUExecutor.timed); the host's time interpreting the call and encoding its
    kernels in Python (the browser's JavaScript does that far faster) is reported beside it."""

    def __init__(self, model, device: Device, dtype: str, height: int | None = None,
                 width: int | None = None, compile_option: str = "auto",
                 parts: Sequence[str] = tuple(PART_FUNCTIONS), log=print):
        self.functions = self.functions_of(model, parts)
        super().__init__(model, device, dtype, height, width, compile_option, log=log)

    @staticmethod
    def functions_of(model, parts: Sequence[str]) -> list[str]:
        """The compiled functions of `parts`; a BenchError for what this target cannot do."""
        bad = [p for p in parts if p not in PART_FUNCTIONS]
        if bad:
            raise BenchError(
                f"target {WEBGPU_NATIVE} times the parts {', '.join(PART_FUNCTIONS)}, not "
                f"{', '.join(bad)}: a whole image runs the samplers, whose symbolic shapes "
                "wsd.runtime.webgpu_native does not run; `wsd build --target webgpu` reports the "
                "browser's memory plan")
        return [part_function(model, p) for p in parts]

    def _compile(self) -> None:
        from wsd.compiler.layout import WeightLayouts
        from wsd.compiler.pipeline import function_meta
        from wsd.compiler.trace import trace_model
        from wsd.runtime import webgpu_native

        start = time.perf_counter()
        self.log(f"tracing {self.model.name} ({self.dtype}, {self.height}x{self.width}) "
                 f"{', '.join(self.functions)} ...")
        traced = trace_model(self.model, self.height, self.width, self.dtype,
                             names=self.functions)
        target = self.device.tvm_target
        sets = "subgroup" if target.attrs["supports_subgroups"] else "portable"
        self.log(f"compiling as the browser bundle (webgpu, {sets} kernel set, wasm32 host) ...")
        weight_layouts = WeightLayouts(traced.num_inputs)  # stored as the browser stores them
        self.program = webgpu_native.compile_program(traced.mod, target,
                                                     weight_layouts=weight_layouts)
        self.meta = {"dtype": self.dtype, "functions": function_meta(traced, weight_layouts)}
        self.log(f"compiled {len(self.program.kernels)} WGSL kernels in "
                 f"{time.perf_counter() - start:.0f} s")

    def _load(self, wrapped: dict) -> None:
        from wsd.runtime import webgpu_native
        from wsd.runtime.pipeline import upload_weights

        self.executor = webgpu_native.WebGPUExecutor(self.program)
        self.weights = upload_weights(self.executor, self.model, self.meta, wrapped)
        self.tvm_note = f"GPU time by {self.executor.timing_method}"
        if not self.device.torch_cuda:
            self.tvm_note += "; PyTorch on cpu (no CUDA)"

    def _device_args(self, function: str, inputs: tuple) -> list:
        """`function`'s arguments on the device: the inputs uploaded, the weights as loaded."""
        return [*(self.executor.upload(x.numpy()) for x in inputs), *self.weights[function]]

    def _tvm_call(self, function: str, inputs: tuple):
        run, args = self.executor, self._device_args(function, inputs)

        def timer():
            _, timing = run.timed(function, *args)
            return timing.gpu_s, timing.encode_s

        return (lambda: run(function, *args)), timer

    def profile(self, part: str, rounds: int = 2) -> dict:
        """The part's function with every kernel timed on the GPU (timestamps around each
        compute pass, WebGPUExecutor.profiled), after one untimed call; the total is one
        call's GPU time, so the rows' shares leave the gaps between passes out."""
        function = part_function(self.model, part)
        executor, args = self.executor, self._device_args(function, self.inputs(function))
        executor(function, *args)
        runs = [executor.profiled(function, *args)[1] for _ in range(rounds)]
        total = sum(executor.timed(function, *args)[1].gpu_s for _ in range(rounds))
        total *= 1e3 / rounds
        rows = profile.tally(runs)
        return {"title": f"{part} ({function}) {self.dtype}, WebGPU", "total_ms": total,
                "total_is": "GPU time of a plain call (kernels timed by timestamps around "
                            "each compute pass)",
                "kernels": rows, "kinds": profile.group_by_kind(rows, kind_of)}
