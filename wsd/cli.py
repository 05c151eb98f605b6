"""The `wsd` command: generate, build, serve, verify."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

from wsd import settings, targets
from wsd.models import ModelError

def _model_options(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--model", default="tiny",
                        help="a built-in architecture with random weights ('tiny', the "
                             "default; 'sd15', 'sd21', 'sd-turbo', 'lcm'; small variants "
                             "'tiny-sd2', 'tiny-turbo', 'tiny-lcm') or the path of a "
                             "diffusers-format model folder")
    # build's --dtype has no parser default, so that --weights-only can tell it was given
    parser.add_argument("--dtype", choices=settings.DTYPES,
                        default=None if command == "build" else settings.DEFAULT_DTYPE,
                        help=f"default {settings.DEFAULT_DTYPE}")
    parser.add_argument("--target", default="llvm", help=targets.describe(command))
    parser.add_argument("--width", type=int, help="image width, a multiple of 8 "
                        "(default: the model's native size)")
    parser.add_argument("--height", type=int, help="image height, a multiple of 8")
    if command in ("generate", "build"):
        parser.add_argument("--vae", metavar="PATH|PRESET",
                            help="decode with this VAE instead of the model's own, as "
                                 "diffusers' vae= does: a diffusers folder of an AutoencoderKL "
                                 "or AutoencoderTiny (TAESD, e.g. madebyollin/taesd), or "
                                 "'taesd' / 'tiny-taesd' (random weights)")


def _lora_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                        help="a LoRA .safetensors file (diffusers/PEFT or kohya names) fused into "
                             "the UNet and text encoder weights, times SCALE (default 1.0); "
                             "repeatable, applied in order. The compiled code does not change")


def _with_loras(model, args):
    """--lora: every file read and checked against the model before anything is built."""
    return model.with_loras(getattr(args, "lora", None) or [])


def _load(args):
    """--model with --vae, --preview-vae and --lora, each checked before anything is built."""
    from wsd.models import load_model

    model = load_model(args.model).with_vae(getattr(args, "vae", None))
    model = model.with_preview_vae(getattr(args, "preview_vae", None))
    return _with_loras(model, args)


def _build_library(args, log, model=None):
    from wsd.runtime.library import build

    if args.target == targets.WEBGPU:
        raise targets.TargetError(
            f"target 'webgpu' is only for `wsd build --target webgpu --out DIR` (a browser "
            f"bundle); `wsd {args.command}` runs natively: use --target llvm or cuda. "
            f"Generating in the browser is the web app's job")

    model = model or _load(args)
    library = build(model, args.target, args.dtype, args.height, args.width, log=log,
                    force=getattr(args, "force", False))
    return model, library


def cmd_generate(args) -> int:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    from tqdm import tqdm

    from wsd.runtime.pipeline import Pipeline

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    model = _load(args)
    given = (args.scheduler, args.steps, args.guidance_scale)
    args.scheduler, args.steps, args.guidance_scale = model.settings(*given)
    if None in given:  # say what the family chose, and how to override it
        log(f"{model.family.description}: sampler {args.scheduler}, {args.steps} steps, "
            f"guidance {args.guidance_scale:g} (--scheduler, --steps, --guidance-scale "
            f"override)")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    settings.check(args.steps, args.guidance_scale, seed)
    if args.scheduler not in model.family.samplers:
        raise ValueError(f"sampler {args.scheduler!r} does not apply to {model.name} "
                         f"({model.family.description}); choose one of: "
                         f"{', '.join(model.family.samplers)}")
    image = _image_input(args, model)  # its errors come before any build
    model, library = _build_library(args, log, model)
    pipe = Pipeline(model, library)
    start = time.time()
    with tqdm(desc="denoising", unit="step", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total  # PNDM's warm-up evaluates one timestep twice: steps + 1
            bar.update(done - bar.n)

        out_image = pipe.generate(args.prompt, args.negative_prompt, args.scheduler,
                                  args.steps, args.guidance_scale, seed, progress=progress,
                                  image=image, strength=args.strength)
    parameters = {"prompt": args.prompt, "negative_prompt": args.negative_prompt,
                  "model": args.model, "scheduler": args.scheduler, "steps": args.steps,
                  "guidance_scale": args.guidance_scale, "seed": seed, "dtype": args.dtype,
                  "target": args.target}
    if image is not None:
        from wsd.runtime.image import file_record

        parameters["image"] = file_record(args.image)
        parameters["strength"] = args.strength
    image = out_image
    if model.loras:
        from wsd.models.lora import records

        parameters["loras"] = records(model.loras)
    if model.vae_source is not None:
        parameters["vae"] = model.vae_source.record(model.configs["vae"])
    info = PngInfo()
    info.add_text("parameters", json.dumps(parameters))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out, pnginfo=info)
    log(f"wrote {out} ({image.shape[1]}x{image.shape[0]}, seed {seed}) "
        f"in {time.time() - start:.1f} s")
    return 0


def _image_input(args, model):
    """--image/--strength, checked: the picture (PIL, RGB) or None. The image's size, rounded
    down to multiples of 8 as diffusers does, must be the size the library is built for."""
    if args.image is None:
        if args.strength is not None:
            raise ValueError("--strength is for image-to-image: give --image too")
        return None
    from wsd.compiler.trace import resolve_size
    from wsd.runtime.image import prepare_image, read_image

    args.strength = settings.STRENGTH if args.strength is None else args.strength
    settings.check_strength(args.strength)
    height, width = resolve_size(model, args.height, args.width)
    image = read_image(args.image)
    prepare_image(image, height, width, model.vae_scale_factor)  # the size check
    return image


def cmd_build(args) -> int:
    if args.weights_only and args.verify:
        raise ValueError("--verify checks what a build compiles; --weights-only compiles nothing")
    if not args.weights_only:
        args.dtype = args.dtype or settings.DEFAULT_DTYPE
    if args.preview_vae and args.target != targets.WEBGPU:
        raise ValueError("--preview-vae is for --target webgpu (the web app's previews)")
    if args.verify:
        _verify_build(args)
    if args.target == targets.WEBGPU:
        return _build_bundle(args)
    if args.out is not None:
        raise ValueError("--out is only for --target webgpu (native libraries go to the cache)")
    _, library = _build_library(args, print)
    print(library.path)
    return 0


def _verify_build(args) -> None:
    """--verify: every block checked on the build's target before anything is written."""
    from wsd.checks.verify import format_report, verify_build

    rows = verify_build(_load(args), args.target, args.dtype,
                        args.height, args.width, log=print)
    print(format_report(rows))


def _build_bundle(args) -> int:
    from wsd.web.bundle import build_bundle, write_weights

    if not args.out:
        raise ValueError("--target webgpu needs --out DIR (the bundle directory to write)")
    model = _load(args)  # VAE and LoRA errors before anything is written
    if args.weights_only:
        if not args.source:
            raise ValueError("--weights-only needs --from DIR: the bundle whose compiled "
                             "model.wasm the weights are for")
        fixed = [f"--{name}" for name in ("dtype", "height", "width")
                 if getattr(args, name) is not None]
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: a --weights-only bundle keeps the dtype and "
                             "size its model.wasm was compiled for")
        write_weights(model, args.source, args.out, log=print)
        return 0
    if args.source:
        raise ValueError("--from is only for --weights-only")
    build_bundle(model, args.out, args.dtype, args.height, args.width, log=print)
    return 0


def cmd_serve(args) -> int:
    from wsd.web.serve import make_server

    server = make_server(args.dir, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving {Path(args.dir).resolve()} at http://{host}:{port}/ (Ctrl-C stops)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("note: browsers offer WebGPU only to secure contexts; from other machines, "
              "http:// to this address is not one (use https or an SSH tunnel)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_verify(args) -> int:
    from wsd.checks.verify import format_report, verify_layers
    from wsd.models import load_model

    model = load_model(args.model)
    rows = verify_layers(model, target=args.target, dtype=args.dtype,
                         height=args.height, width=args.width, log=print)
    print(format_report(rows))
    return 0 if all(row.passed for row in rows) else 1


def cmd_bench(args) -> int:
    from wsd import bench

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    options = ["model", "target", "dtype", "parts", "height", "width", "repeat", "warmup",
               "steps", "torch_compile", "profile"]
    command = "wsd bench " + " ".join(f"--{o.replace('_', '-')} {getattr(args, o)}"
                                      for o in options if getattr(args, o) is not None)
    report = bench.run(
        args.model, args.target, bench.parse_list(args.dtype, bench.DTYPES, "--dtype"),
        bench.parse_list(args.parts, bench.PARTS, "--parts"), args.height, args.width,
        args.repeat, args.warmup, args.steps, args.torch_compile, log=log, command=command,
        profile_top=args.profile)
    print(report.text())
    bench.write_outputs(report, args.json, args.markdown)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsd", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="make an image from a prompt")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default=settings.NEGATIVE_PROMPT)
    gen.add_argument("--scheduler", choices=settings.SCHEDULERS,
                     help="default: the model folder's own scheduler (else its family's)")
    gen.add_argument("--steps", type=int,
                     help=f"default: the model family's ({settings.STEPS}; SD-Turbo 1, LCM 4)")
    gen.add_argument("--guidance-scale", type=float,
                     help=f"default: the model family's ({settings.GUIDANCE_SCALE:g}; SD-Turbo "
                          f"0, LCM 8.5)")
    gen.add_argument("--seed", type=int, help="default: a random seed, printed")
    gen.add_argument("--out", default="wsd.png")
    gen.add_argument("--image", metavar="PATH",
                     help="image-to-image: start from this picture (PNG, JPEG, ...). Its size, "
                          "rounded down to multiples of 8, must be the image size (--width, "
                          "--height; default the model's), which the output keeps")
    gen.add_argument("--strength", type=float,
                     help=f"with --image: how much to change it, in (0, 1] (default "
                          f"{settings.STRENGTH:g}, as diffusers): the last int(steps * strength) "
                          "steps run")
    _model_options(gen, "generate")
    _lora_option(gen)
    gen.set_defaults(func=cmd_generate)

    bld = sub.add_parser("build", help="compile the model library (cached)")
    _model_options(bld, "build")
    _lora_option(bld)
    bld.add_argument("--preview-vae", metavar="PATH|PRESET",
                     help="with --target webgpu: also compile this VAE (e.g. TAESD: "
                          "'tiny-taesd', 'taesd' or a madebyollin/taesd folder) as "
                          "decode_preview, which the web app's previews use")
    bld.add_argument("--force", action="store_true", help="rebuild even if cached")
    bld.add_argument("--verify", action="store_true",
                     help="first compare every block with PyTorch on the build's target "
                          "(webgpu: on webgpu-native) and refuse to build if any fails")
    bld.add_argument("--out", help="with --target webgpu: the bundle directory to write")
    bld.add_argument("--weights-only", action="store_true",
                     help="with --target webgpu: write --model's weights for the compiled "
                          "bundle --from DIR (same architecture), without compiling")
    bld.add_argument("--from", dest="source", metavar="DIR",
                     help="with --weights-only: the bundle whose model.wasm to reuse")
    bld.set_defaults(func=cmd_build)

    srv = sub.add_parser("serve", help="serve a web bundle locally (http://127.0.0.1:8888)")
    srv.add_argument("dir", help="the bundle directory (wsd build --target webgpu --out DIR)")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1: WebGPU needs a secure context)")
    srv.add_argument("--port", type=int, default=8888)
    srv.set_defaults(func=cmd_serve)

    ver = sub.add_parser("verify", help="compare every block with PyTorch, print PSNR table")
    _model_options(ver, "verify")
    ver.set_defaults(func=cmd_verify)

    bch = sub.add_parser("bench", help="time the compiled model functions and a whole image "
                                       "against PyTorch on the same device (docs/PERF.md)")
    bch.add_argument("--model", default="tiny", help="tiny (default), sd15 or a model folder")
    bch.add_argument("--target", default="llvm", choices=targets.names("bench"),
                     help=targets.describe("bench") + " (webgpu-native: the GPU time of each "
                          "call, PyTorch on CUDA if there is one, else on the CPU; parts clip, "
                          "unet, vae)")
    bch.add_argument("--dtype", default="float32,float16",
                     help="float32, float16 or both, comma-separated (default both)")
    bch.add_argument("--parts", default="clip,unet,vae,image,memory",
                     help="comma-separated from clip, unet, vae, image, memory (default all)")
    bch.add_argument("--height", type=int, help="image height (default: the model's)")
    bch.add_argument("--width", type=int, help="image width (default: the model's)")
    bch.add_argument("--repeat", type=int, default=5, help="timed calls per figure (median)")
    bch.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    bch.add_argument("--steps", type=int, default=20, help="denoising steps of the image")
    bch.add_argument("--torch-compile", default="auto", choices=("auto", "on", "off"),
                     help="PyTorch's compiled baseline (auto: on for cuda, off on CPUs)")
    bch.add_argument("--profile", type=int, default=0, metavar="N",
                     help="also time each kernel of every timed part, list the top N")
    bch.add_argument("--json", help="also write the results as JSON here")
    bch.add_argument("--markdown", help="also write the results as markdown here")
    bch.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from wsd.web.app import WebAppError
    from wsd.web.bundle import BundleError
    from wsd.web.serve import ServeError

    try:
        return args.func(args)
    except (ModelError, targets.TargetError, BundleError, ServeError, WebAppError, ValueError,
            FileNotFoundError) as err:  # wsd.checks.verify.VerifyError is a ValueError
        print(f"wsd: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
