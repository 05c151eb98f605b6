"""`wsd` command-line errors: bad input gets a clear, specific message and exit code 2."""

import json
import shutil

import pytest
import tvm

from wsd.cli import main
from wsd.models import ModelError, load_model


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The tiny model written as a diffusers-format folder, as users have checkpoints."""
    from wsd.checks.reference import Reference

    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    Reference(load_model("tiny")).save(folder)
    return folder


def broken_copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_unknown_model(capsys):
    code, err = run(capsys, "generate", "--prompt", "x", "--model", "/no/such/model")
    assert code == 2 and "neither a built-in model" in err and "/no/such/model" in err


def test_model_is_a_file(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not a folder")
    code, err = run(capsys, "build", "--model", str(path))
    assert code == 2 and "is not a folder" in err


def test_folder_loads(tiny_folder):
    model = load_model(tiny_folder)
    assert model.path == tiny_folder.resolve()
    assert model.default_size == load_model("tiny").default_size
    assert model.configs["scheduler"]["_class_name"] == "PNDMScheduler"
    assert model.tokenizer()("a cat")[0] == 49406


@pytest.mark.parametrize("remove, message", [
    ("model_index.json", "model_index.json"),
    ("unet/config.json", "unet/config.json"),
    ("unet/diffusion_pytorch_model.safetensors", "no weights in"),
    ("text_encoder/model.safetensors", "no weights in"),
    ("scheduler/scheduler_config.json", "scheduler_config.json"),
    ("tokenizer/tokenizer.json", "missing tokenizer files"),
])
def test_folder_missing_file(tiny_folder, tmp_path, remove, message):
    folder = broken_copy(tiny_folder, tmp_path)
    (folder / remove).unlink()
    with pytest.raises(ModelError, match=message.replace(".", r"\.")):
        load_model(folder)


def test_folder_malformed_config(tiny_folder, tmp_path, capsys):
    folder = broken_copy(tiny_folder, tmp_path)
    (folder / "vae" / "config.json").write_text("{ not json")
    code, err = run(capsys, "build", "--model", str(folder))
    assert code == 2 and "malformed JSON" in err and "vae/config.json" in err


def test_folder_config_not_an_object(tiny_folder, tmp_path):
    folder = broken_copy(tiny_folder, tmp_path)
    (folder / "unet" / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ModelError, match="expected a JSON object"):
        load_model(folder)


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "steps must be"),
    (["--steps", "-3"], "steps must be"),
    (["--steps", "100000"], "steps must be"),
    (["--guidance-scale", "nan"], "guidance scale"),
    (["--guidance-scale", "-1"], "guidance scale"),
    (["--seed", "-5"], "seed must be"),
    (["--width", "100"], "multiple of 8"),
    (["--height", "0"], "multiple of 8"),
    (["--target", "vulkan"], "unknown target 'vulkan'"),
])
def test_bad_settings(capsys, args, message):
    code, err = run(capsys, "generate", "--prompt", "x", *args)
    assert code == 2 and message in err


def test_unknown_scheduler(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", "x", "--scheduler", "lms"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'lms'" in capsys.readouterr().err


def test_unknown_dtype(capsys):
    with pytest.raises(SystemExit):
        main(["build", "--dtype", "bfloat16"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.skipif(tvm.cuda(0).exist, reason="this machine has a GPU")
def test_cuda_without_gpu(capsys):
    code, err = run(capsys, "generate", "--prompt", "x", "--target", "cuda")
    assert code == 2 and "needs an NVIDIA GPU" in err


def test_prompt_required(capsys):
    with pytest.raises(SystemExit):
        main(["generate"])
    assert "--prompt" in capsys.readouterr().err


def test_folder_with_fp16_variant_weights_only(tiny_folder, tmp_path):
    """Many downloads carry only `*.fp16.safetensors`: they load, as the same weights."""
    import torch

    folder = broken_copy(tiny_folder, tmp_path)
    for sub, stem in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (folder / sub / f"{stem}.safetensors").rename(folder / sub / f"{stem}.fp16.safetensors")
    model = load_model(folder)
    reference = load_model(tiny_folder)
    for part in ("unet", "text_encoder"):
        ours, theirs = getattr(model, part)().state_dict(), getattr(reference, part)().state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
