"""Models by path, GGUF files and known names: each bad input is a clear error naming it."""

import numpy as np
import pytest

from pmdlab.llm import models
from pmdlab.llm.train import TrainConfig, Trainer

from .lm_helpers import save_tiny, small_config


def _write_gguf(path, architecture: str):
    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (the llm extra)")
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"model file {tmp_path}/none.gguf does not exist"):
        TrainConfig(model=str(tmp_path / "none.gguf"))


def test_a_gguf_of_an_unsupported_architecture_is_named(tmp_path):
    path = _write_gguf(tmp_path / "odd.gguf", "no_such_arch")
    assert models.gguf_architecture(path) == "no_such_arch"
    with pytest.raises(
        ValueError, match=r"odd.gguf: GGUF architecture 'no_such_arch' is not supported.*llama"
    ):
        models.convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_gguf_file_is_named(tmp_path):
    pytest.importorskip("gguf", reason="the gguf package is not installed (the llm extra)")
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ValueError, match="broken.gguf is not a readable GGUF file"):
        models.convert_gguf(path, tmp_path / "out")


def test_a_known_name_must_be_fetched_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PMDLAB_CACHE", str(tmp_path))
    with pytest.raises(
        ValueError, match="not fetched yet: python -m pmdlab.llm.models fetch smollm2-135m-instruct"
    ):
        TrainConfig(model="smollm2-135m-instruct")


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        TrainConfig(model=str(tmp_path / "empty"))


def test_a_truncated_weights_file_is_named(tmp_path):
    path = save_tiny(tmp_path / "model")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(ValueError, match=f"cannot load the model in {path}"):
        Trainer(small_config(tmp_path, model=str(path), steps=1, eval_every=0))


def test_chat_template_without_one_in_the_tokenizer_is_named(tmp_path):
    path = save_tiny(tmp_path / "model")  # the tiny character tokenizer has no chat template
    with pytest.raises(ValueError, match="chat_template=true, but the tokenizer in .* has no chat template"):
        Trainer(small_config(tmp_path, model=str(path), chat_template=True))


def test_the_command_line_lists_models_and_names_a_bad_one(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PMDLAB_CACHE", str(tmp_path))
    assert models.main(["list"]) == 0
    assert "smollm2-135m-instruct: SmolLM2-135M-Instruct" in capsys.readouterr().out
    assert models.main(["fetch", "gpt-17"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown model 'gpt-17'; known: smollm2-135m-instruct (python -m pmdlab.llm.models list)"
    )
    assert models.main(["merge", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "holds no LoRA adapters" in capsys.readouterr().err
