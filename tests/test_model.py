"""Model loading: the tiny model, encode contracts, the text cut, offline errors, device logic."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from clipwidgets.errors import InvalidInputError, ModelLoadError
from clipwidgets.model import (
    PrecisionWarning,
    _reachable,
    load_model,
    resolve_device,
    resolve_precision,
)
from clipwidgets.open_clip_compat import encode_tokens_cut
from clipwidgets.synthetic import make_photo


def test_tiny_model_metadata(tiny_encoder):
    meta = tiny_encoder.meta
    assert meta["name"] == "tiny"
    assert meta["pretrained"] == "random-seed-0"
    assert meta["embed_dim"] == tiny_encoder.dim == 64
    assert meta["preprocess"]["image_size"] == [32, 32]
    assert len(meta["preprocess"]["mean"]) == 3


def test_encode_images_shape_normalised_and_deterministic(tiny_encoder):
    images = [make_photo(i, (120, 90)) for i in range(5)]
    first = tiny_encoder.encode_images(images)
    assert first.shape == (5, 64) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    again = load_model("tiny", device="cpu").encode_images(images)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first[0], first[1])


def test_encode_texts_shape_and_empty(tiny_encoder):
    texts = tiny_encoder.encode_texts(["a dog", "a cat on a mat"])
    assert texts.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert tiny_encoder.encode_texts([]).shape == (0, 64)
    assert tiny_encoder.encode_images([]).shape == (0, 64)
    with pytest.raises(InvalidInputError, match="list of strings"):
        tiny_encoder.encode_texts("a dog")


def test_text_cut_equals_open_clip_encode_text(tiny_encoder):
    texts = ["a dog", "a dog playing in the park with a red ball near the river", "x", ""]
    tokens = tiny_encoder.tokenizer(texts)
    with torch.no_grad():
        reference = tiny_encoder.model.encode_text(tokens, normalize=True).numpy()
        cut = encode_tokens_cut(tiny_encoder.model, tokens)
    assert cut.shape[1] == 64
    np.testing.assert_allclose(tiny_encoder.encode_texts(texts), reference, atol=1e-5)


def test_text_cut_handles_full_length_text(tiny_encoder):
    long_text = " ".join(["word"] * 200)  # truncated by the tokenizer to 77 tokens
    tokens = tiny_encoder.tokenizer([long_text])
    with torch.no_grad():
        reference = tiny_encoder.model.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(tiny_encoder.encode_texts([long_text]), reference, atol=1e-5)


def test_bf16_encoder_agrees_with_fp32(tiny_encoder, cpu_flags):
    cpu_flags({"avx2", "avx512f", "avx512_bf16"})
    bf16 = load_model("tiny", precision="bf16")
    assert bf16.precision == "bf16" and bf16.dtype == torch.bfloat16
    images = [make_photo(i, (64, 64)) for i in range(3)]
    a, b = tiny_encoder.encode_images(images), bf16.encode_images(images)
    assert b.dtype == np.float32
    assert float(np.mean(np.sum(a * b, axis=1))) > 0.95


def test_unknown_model_names_the_fix():
    with pytest.raises(ModelLoadError, match="Unknown model 'no-such-model'.*tiny"):
        load_model("no-such-model")


def test_unknown_pretrained_tag_lists_known_tags():
    with pytest.raises(ModelLoadError, match="no pretrained weights tagged 'nope'.*openai"):
        load_model("ViT-B-32-quickgelu", "nope")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("ViT-B-32-quickgelu", str(tmp_path / "missing.pt"))


def test_checkpoint_for_real_architecture_is_loaded(tmp_path):
    import open_clip

    model = open_clip.create_model("RN50-quickgelu", pretrained=None)
    checkpoint = tmp_path / "rn50.pt"
    torch.save(model.state_dict(), checkpoint)
    encoder = load_model("RN50-quickgelu", str(checkpoint), device="cpu", precision="fp32")
    assert encoder.meta["pretrained"].startswith("checkpoint:rn50.pt:")
    expected = model.state_dict()
    for name, tensor in encoder.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name])


def test_loading_does_not_warn_of_random_weights_it_then_loads(tmp_path, caplog):
    """open_clip warns "No pretrained weights loaded" for every model built without its own loading."""
    import open_clip

    checkpoint = tmp_path / "rn50.pt"
    torch.save(open_clip.create_model("RN50-quickgelu", pretrained=None).state_dict(), checkpoint)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_model("RN50-quickgelu", str(checkpoint), device="cpu")
        load_model("tiny", device="cpu")
    assert not [record for record in caplog.records if "pretrained weights" in record.getMessage()]
    logging.warning("No pretrained weights loaded for model 'x'.")  # outside loading: not hidden
    assert caplog.records[-1].getMessage().startswith("No pretrained weights")


def test_safetensors_checkpoint_is_streamed_in_the_target_precision(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model("RN50-quickgelu", pretrained=None)
    expected = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    checkpoint = tmp_path / "rn50.safetensors"
    save_file(expected, checkpoint)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        encoder = load_model("RN50-quickgelu", str(checkpoint), device="cpu", precision=precision)
        for name, tensor in encoder.model.state_dict().items():
            if tensor.is_floating_point():
                assert tensor.dtype == dtype, name
                torch.testing.assert_close(tensor, expected[name].to(dtype))
            else:
                torch.testing.assert_close(tensor, expected[name])


def test_safetensors_with_other_keys_is_refused(tmp_path):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "other.safetensors"
    save_file({"not.a.clip.weight": torch.zeros(2)}, checkpoint)
    with pytest.raises(ModelLoadError, match="Could not load weights"):
        load_model("RN50-quickgelu", str(checkpoint))


def test_pretrained_tag_preprocessing_is_applied():
    from clipwidgets.model import _tag_preprocess

    options = _tag_preprocess("ViT-B-32-quickgelu", "openai")
    assert options["image_mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert _tag_preprocess("tiny", None) == {}


def test_wrong_checkpoint_for_architecture(tmp_path):
    checkpoint = tmp_path / "garbage.pt"
    torch.save({"not": torch.zeros(1)}, checkpoint)
    with pytest.raises(ModelLoadError, match="Could not load weights"):
        load_model("RN50-quickgelu", str(checkpoint))


def test_offline_error_is_fast_and_actionable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as caught:
        load_model(cache_dir=tmp_path)
    message = str(caught.value)
    assert "not cached" in message and str(tmp_path) in message
    assert "checkpoint" in message and "HF_HUB_OFFLINE" in message


def test_unreachable_hub_error_without_offline_flag(tmp_path):
    """A fresh interpreter with no offline flag and a hub on a closed local port fails quickly."""
    code = (
        "from clipwidgets.model import load_model\n"
        "from clipwidgets.errors import ModelLoadError\n"
        "try:\n"
        f"    load_model(cache_dir={str(tmp_path)!r})\n"
        "except ModelLoadError as error:\n"
        "    print('ERROR:', error)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_ENDPOINT": "http://127.0.0.1:9", "HOME": str(tmp_path)}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120)
    assert "ERROR:" in result.stdout, result.stderr
    assert "cannot be reached" in result.stdout and "127.0.0.1:9" in result.stdout
    # The probe has its own 5 s timeout; record how long the whole failure took for the reader.
    print(f"offline failure after {time.monotonic() - started:.1f} s including interpreter start")


def test_reachable_probe():
    assert _reachable("http://127.0.0.1:9", timeout=1.0) is False


def test_device_and_precision_resolution():
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto") in ("cpu", "mps")
        with pytest.raises(InvalidInputError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(InvalidInputError, match="Unknown device"):
        resolve_device("tpu")
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("bf16", "cuda") == "bf16"
    with pytest.raises(InvalidInputError, match="Unknown precision"):
        resolve_precision("int4", "cpu")


@pytest.mark.parametrize("flags, machine", [({"avx512f", "avx512_bf16"}, "x86_64"),
                                            ({"amx_bf16"}, "x86_64"), ({"asimd", "bf16"}, "aarch64")])
def test_native_bf16_is_used_and_chosen_by_auto(cpu_flags, flags, machine):
    cpu_flags(flags, machine)
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu", name="ViT-B-32-quickgelu") == "bf16"
    assert resolve_precision("auto", "cpu", name="tiny") == "fp32"  # tests agree on every CPU


@pytest.mark.parametrize("flags, machine, missing", [
    ({"avx2", "avx512f", "avx512bw"}, "x86_64", "avx512_bf16 or amx_bf16"),  # AVX512 without bf16
    ({"avx2", "fma"}, "x86_64", "avx512_bf16 or amx_bf16"),
    ({"asimd"}, "aarch64", "bf16")])
def test_bf16_without_native_support_warns_and_uses_fp32(cpu_flags, flags, machine, missing):
    cpu_flags(flags, machine)
    assert resolve_precision("auto", "cpu", name="ViT-B-32-quickgelu") == "fp32"
    with pytest.warns(PrecisionWarning, match=f"lacks {missing}") as caught:
        assert resolve_precision("bf16", "cpu") == "fp32"
    assert "Using fp32" in str(caught[0].message)
    with pytest.warns(PrecisionWarning, match="no native bfloat16"):
        encoder = load_model("tiny", device="cpu", precision="bf16")
    assert encoder.precision == "fp32" and encoder.dtype == torch.float32


def test_cli_bf16_without_native_support_warns_and_indexes_in_fp32(cpu_flags, photo_dir, tmp_path, capsys):
    from clipwidgets.cli import main

    cpu_flags({"avx2"})
    store = tmp_path / "s.h5"
    with pytest.warns(PrecisionWarning, match="avx512_bf16 or amx_bf16"):
        status = main(["index", str(photo_dir), "--store", str(store), "--model", "tiny",
                       "--precision", "bf16", "--workers", "0", "--json"])
    assert status == 0 and store.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc setting")
def test_cpu_encoder_lets_freed_memory_be_reused(tiny_encoder):
    import resource

    def page_faults_of_a_64_mb_block() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.ones(64 << 20, dtype=np.uint8)  # like a batch's activations: allocated, written, freed
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    page_faults_of_a_64_mb_block()
    assert page_faults_of_a_64_mb_block() < 1000  # fresh pages would fault 16,384 times (4 KiB each)


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """The tiny model's weights as a .pt and a .safetensors file, and damaged copies of both."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("checkpoints")
    state = {name: tensor.contiguous() for name, tensor in
             load_model("tiny", device="cpu", precision="fp32").model.state_dict().items()}
    torch.save(state, folder / "tiny.pt")
    save_file(state, folder / "tiny.safetensors")
    pt, safe = (folder / "tiny.pt").read_bytes(), (folder / "tiny.safetensors").read_bytes()
    damaged = {
        "empty.pt": b"", "empty.safetensors": b"",
        "random.pt": np.random.default_rng(0).bytes(4096),
        "random.safetensors": np.random.default_rng(1).bytes(4096),
        "truncated.pt": pt[: len(pt) // 2], "truncated.safetensors": safe[: len(safe) // 2],
        "header-only.safetensors": safe[:40], "short.safetensors": safe[:5],
        "notes.pt": b"these are my notes, not a model\n" * 20,
        "list.safetensors": len(b"[1, 2]").to_bytes(8, "little") + b"[1, 2]",
    }
    for name, data in damaged.items():
        (folder / name).write_bytes(data)
    return folder, state, sorted(damaged)


def test_tiny_model_loads_its_checkpoints(tiny_checkpoints):
    folder, state, _ = tiny_checkpoints
    for name in ("tiny.pt", "tiny.safetensors"):
        encoder = load_model("tiny", str(folder / name), device="cpu", precision="fp32")
        assert encoder.meta["pretrained"].startswith(f"checkpoint:{name}:")
        for key, tensor in encoder.model.state_dict().items():
            torch.testing.assert_close(tensor, state[key])


@pytest.mark.parametrize("index", range(10))
def test_damaged_checkpoint_is_a_model_load_error_naming_the_file(tiny_checkpoints, index):
    folder, _, names = tiny_checkpoints
    path = folder / names[index]
    with pytest.raises(ModelLoadError) as caught:
        load_model("tiny", str(path), device="cpu", precision="fp32")
    assert str(path) in str(caught.value)
    assert "checkpoint" in str(caught.value)


def test_cli_damaged_checkpoint_exits_2_without_traceback(tiny_checkpoints, photo_dir, tmp_path):
    folder, _, _ = tiny_checkpoints
    result = subprocess.run([sys.executable, "-m", "clipwidgets.cli", "index", str(photo_dir),
                             "--store", str(tmp_path / "s.h5"), "--model", "tiny",
                             "--pretrained", str(folder / "truncated.pt")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "truncated.pt" in result.stderr and "error:" in result.stderr
