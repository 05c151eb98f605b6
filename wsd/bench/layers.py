"""Single layers at SD v1.5's real shapes, compiled by the project's whole pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


from wsd.bench.device import Device, count_flops, torch_compiled
from wsd.bench.kernels import Prepared, first_output, rel_l2, tensor_bytes, to_numpy


@dataclass(frozen=True)
class LayerCase:
    """One layer at an SD v1.5 shape: a PyTorch module and its example inputs."""

    name: str
    group: str  # conv | linear | attention | group_norm
    make: Callable[[], tuple]  # () -> (module, inputs), float32, on the CPU
    default: bool = False  # in the default subset (cheap enough for a CPU run)


def _randn(*shape):
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _conv(c_in, c_out, k, size, batch):
    def make():
        import torch

        torch.manual_seed(0)
        return torch.nn.Conv2d(c_in, c_out, k, padding=k // 2), (_randn(batch, c_in, size, size),)
    return make


def _linear(batch, tokens, d_in, d_out):
    def make():
        import torch

        torch.manual_seed(0)
        return torch.nn.Linear(d_in, d_out), (_randn(batch, tokens, d_in),)
    return make


class Attention:
    """diffusers' attention core (AttnProcessor2_0): heads split, SDPA, heads merged."""

    @staticmethod
    def module(heads: int):
        import torch

        class Core(torch.nn.Module):
            def forward(self, q, k, v):
                b, sq, inner = q.shape
                d = inner // heads
                split = [t.reshape(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v)]
                out = torch.nn.functional.scaled_dot_product_attention(*split)
                return out.transpose(1, 2).reshape(b, sq, inner)

        return Core()


def _attention(batch, heads, q_len, kv_len, head_dim):
    def make():
        inner = heads * head_dim
        return Attention.module(heads), (_randn(batch, q_len, inner), _randn(batch, kv_len, inner),
                                         _randn(batch, kv_len, inner))
    return make


def _group_norm(batch, channels, size, groups=32, eps=1e-5):
    def make():
        import torch

        torch.manual_seed(0)
        norm = torch.nn.GroupNorm(groups, channels, eps=eps)
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
        return norm, (_randn(batch, channels, size, size),)
    return make


def layer_cases() -> list[LayerCase]:
    """SD v1.5 at 512x512: UNet at batch 2 (guidance) on 64x64 latents, VAE decoder at
    batch 1 from 64x64 to 512x512. `default` marks the subset a CPU run takes."""
    cases = []
    for c, s, default in ((320, 64, False), (640, 32, False), (1280, 16, False), (1280, 8, True)):
        cases.append(LayerCase(f"unet conv3x3 {c}->{c} {s}x{s} b2", "conv",
                               _conv(c, c, 3, s, 2), default))
    for c_in, c_out, s in ((640, 320, 64), (2560, 1280, 16)):  # up-block concat inputs
        cases.append(LayerCase(f"unet conv3x3 {c_in}->{c_out} {s}x{s} b2", "conv",
                               _conv(c_in, c_out, 3, s, 2)))
    cases.append(LayerCase("unet conv1x1 320->320 64x64 b2", "conv", _conv(320, 320, 1, 64, 2)))
    for c, s in ((512, 64), (512, 128), (512, 256), (256, 256), (256, 512), (128, 512)):
        cases.append(LayerCase(f"vae conv3x3 {c}->{c} {s}x{s}", "conv", _conv(c, c, 3, s, 1)))
    for b, t, i, o, default, label in (
            (2, 4096, 320, 320, True, "attn q/k/v/out"),
            (2, 4096, 320, 2560, False, "GEGLU proj"),
            (2, 4096, 1280, 320, False, "ff out"),
            (2, 1024, 640, 640, False, "attn q/k/v/out"),
            (2, 256, 1280, 1280, False, "attn q/k/v/out"),
            (2, 256, 1280, 10240, False, "GEGLU proj"),
            (2, 77, 768, 320, True, "cross-attn k/v"),
            (2, 77, 768, 1280, False, "cross-attn k/v")):
        cases.append(LayerCase(f"linear {label} {b}x{t}x{i}->{o}", "linear",
                               _linear(b, t, i, o), default))
    for b, h, q, kv, d, default, label in (
            (2, 8, 4096, 4096, 40, False, "unet self"),
            (2, 8, 1024, 1024, 80, False, "unet self"),
            (2, 8, 256, 256, 160, True, "unet self"),
            (2, 8, 64, 64, 160, False, "unet self"),
            (2, 8, 4096, 77, 40, True, "unet cross"),
            (2, 8, 1024, 77, 80, False, "unet cross"),
            (2, 8, 256, 77, 160, False, "unet cross"),
            (1, 1, 4096, 4096, 512, False, "vae mid")):
        cases.append(LayerCase(f"attention {label} b{b} h{h} {q}x{kv} d{d}", "attention",
                               _attention(b, h, q, kv, d), default))
    for b, c, s, eps, default, label in (
            (2, 320, 64, 1e-5, True, "unet"), (2, 640, 32, 1e-5, False, "unet"),
            (2, 1280, 16, 1e-5, False, "unet"), (2, 1280, 8, 1e-5, True, "unet"),
            (1, 512, 64, 1e-6, False, "vae"), (1, 512, 256, 1e-6, False, "vae"),
            (1, 256, 512, 1e-6, False, "vae"), (1, 128, 512, 1e-6, False, "vae")):
        cases.append(LayerCase(f"group_norm {label} {b}x{c}x{s}x{s} g32", "group_norm",
                               _group_norm(b, c, s, 32, eps), default))
    return cases


def prepare_layer(case: LayerCase, dtype: str, device: Device, compile_enabled: bool,
                  compile_reason: str = "") -> Prepared:
    """Compile the layer with the project's pipeline, make the PyTorch baselines, check that
    TVM's output matches eager PyTorch's."""
    import torch

    from wsd.compiler.pipeline import compile_module
    from wsd.compiler.trace import to_relax
    from wsd.runtime.executor import Executor

    import tvm

    module, cpu_inputs = case.make()
    tdtype = getattr(torch, dtype)
    module = module.to(tdtype).eval()
    cpu_inputs = tuple(x.to(tdtype) for x in cpu_inputs)
    func, names = to_relax(module, cpu_inputs)
    module = module.to(device.torch)
    inputs = tuple(x.to(device.torch) for x in cpu_inputs)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    executor = Executor(compile_module(mod, device.tvm_target).executable, device.tvm)
    state = module.state_dict()
    weights = [executor.upload(state[n].detach().cpu().numpy()) for n in names]
    args = [executor.upload(x.numpy()) for x in cpu_inputs]

    def run_tvm():
        return executor("main", *args, *weights)

    def run_eager():
        with torch.no_grad():
            return module(*inputs)

    flops = count_flops(module, *inputs)
    with torch.no_grad():
        expected = module(*inputs)
    error = rel_l2(first_output(run_tvm()).numpy(), to_numpy(expected))
    compiled, note = torch_compiled(module, inputs, compile_enabled, compile_reason)
    traffic = tensor_bytes(list(inputs) + [expected] + list(module.parameters()))
    return Prepared(case.name, dtype, "layer", run_tvm, run_eager, compiled, note,
                    flops or None, traffic, error)
