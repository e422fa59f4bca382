"""Model loading: tiny default, local directories, hub errors offline, quantized LoRA on CPU, adapters."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers import QWEN2_TOKENIZER, make_project, requires_qwen2_tokenizer, stage, write_params
from stages import modeling, prompts

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHAT = [{"role": "user", "content": "What is a bond?"}, {"role": "assistant", "content": "A loan."}]


def test_tiny_tokenizer_follows_qwen2_conventions(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for special in prompts.SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(special) is not None
        assert tok.encode(special, add_special_tokens=False) == [tok.convert_tokens_to_ids(special)]
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nWhat is a bond?<|im_end|>\n<|im_start|>assistant\nA loan.<|im_end|>\n")
    ids = tok("Interest of $1,234.56 at 5%")["input_ids"]
    assert tok.decode(ids) == "Interest of $1,234.56 at 5%"


@requires_qwen2_tokenizer
def test_real_qwen2_vocabulary_from_files():
    tok = modeling.qwen2_tokenizer_from_files(QWEN2_TOKENIZER)
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.apply_chat_template(CHAT, tokenize=False).startswith("<|im_start|>system\n")


def test_missing_vocabulary_files_are_named(tmp_path):
    with pytest.raises(modeling.ModelError, match="lacks vocab.json, merges.txt"):
        modeling.qwen2_tokenizer_from_files(tmp_path)


def test_precision_follows_hardware():
    expected = torch.float32 if not torch.cuda.is_available() else None
    if expected is not None:
        assert modeling.compute_dtype("auto") == torch.float32
    assert modeling.compute_dtype("bf16") == torch.bfloat16
    assert modeling.compute_dtype("fp32") == torch.float32


@pytest.fixture(scope="module")
def tiny_base_64(tmp_path_factory, tiny_tokenizer):
    """4-bit needs layers at least as wide as bitsandbytes' block size (64)."""
    from stages.params import TinyModelParams

    out = tmp_path_factory.mktemp("tiny64")
    cfg = TinyModelParams(hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1)
    modeling.build_tiny_model(cfg, tiny_tokenizer).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_lora_backward_on_quantized_base_on_cpu(tiny_base_64, tiny_tokenizer, quantization):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = modeling.load_model(tiny_base_64, quantization)
    linear = type(model.model.layers[0].self_attn.q_proj).__name__
    assert linear == {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}[quantization]
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    batch = tiny_tokenizer(["A bond is a loan.", "Stocks are shares."], return_tensors="pt", padding=True)
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_grads) == 2 * len(LORA_TARGETS) and all(g is not None for g in lora_grads)
    assert any(g.abs().sum() > 0 for g in lora_grads)


def test_local_directory_base(tmp_path, tiny_base):
    """model.base can name a local model directory: base records it, later stages load from it."""
    project = make_project(tmp_path, git=False)
    write_params(project, {"model": {"base": str(tiny_base)}})
    stage("base", cwd=project)
    source = json.loads((project / "models/base/source.json").read_text())
    assert source.items() >= {"kind": "local", "path": str(tiny_base.resolve())}.items()  # + its sha256
    assert (project / "models/base/tokenizer.json").is_file()
    assert not (project / "models/base/model.safetensors").exists()  # no second copy of the weights
    model = modeling.load_model(project / "models/base", "8bit")
    assert model.config.vocab_size == modeling.load_tokenizer(project / "models/base").__len__()


def test_not_a_model_directory(tmp_path):
    with pytest.raises(modeling.ModelError, match="has no config.json"):
        modeling.resolve_pretrained(str(tmp_path), "main")
    with pytest.raises(modeling.ModelError, match="neither an existing directory nor a hub id"):
        modeling.resolve_pretrained("./no/such/dir", "main")


def test_hub_id_offline_says_how_to_use_a_local_directory(tmp_path):
    project = make_project(tmp_path, git=False)
    write_params(project, {"model": {"base": "Qwen/Qwen2-0.5B-Instruct"}})
    result = stage("base", cwd=project, check=False, extra_env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode != 0
    assert "base: error: model.base: could not download 'Qwen/Qwen2-0.5B-Instruct'" in result.stderr
    assert "set model.base to that directory" in result.stderr
    assert not (project / "models/base").exists()


def test_source_pointing_nowhere_is_explained(tmp_path):
    (tmp_path / "source.json").write_text(json.dumps({"kind": "local", "path": str(tmp_path / "gone")}))
    with pytest.raises(modeling.ModelError, match="rerun `dvc repro -f base`"):
        modeling.weights_dir(tmp_path)


def _adapter(tmp_path, tiny_base, base_name="tiny"):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(modeling.load_model(tiny_base), LoraConfig(r=2, target_modules=["q_proj"]))
    model.peft_config["default"].base_model_name_or_path = base_name
    out = tmp_path / "adapter"
    model.save_pretrained(out, save_embedding_layers=False)
    return out


def test_adapter_checks(tmp_path, tiny_base):
    adapter = _adapter(tmp_path, tiny_base)
    modeling.check_adapter(adapter, "tiny")
    with pytest.raises(modeling.ModelError, match="trained on base 'tiny', but model.base is 'Qwen/Qwen2-0.5B'"):
        modeling.check_adapter(adapter, "Qwen/Qwen2-0.5B")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(modeling.ModelError, match="no adapter_model.safetensors"):
        modeling.check_adapter(adapter, "tiny")
    shutil.rmtree(adapter)
    adapter.mkdir()
    with pytest.raises(modeling.ModelError, match="no adapter_config.json"):
        modeling.check_adapter(adapter, "tiny")


@pytest.mark.slow
def test_merge_refuses_an_adapter_for_another_base(tmp_path, tiny_base):
    project = make_project(tmp_path, git=False)
    shutil.copytree(_adapter(tmp_path, tiny_base, base_name="someone/else"), project / "models/adapter")
    result = stage("merge", cwd=project, check=False)
    assert result.returncode != 0
    assert "merge: error:" in result.stderr and "trained on base 'someone/else', but model.base is 'tiny'" in result.stderr
    assert not (project / "models/merged").exists() and not (project / "metrics/merge.json").exists()


def test_out_of_memory_becomes_advice(tmp_path, monkeypatch):
    from trl import SFTTrainer

    from stages import train

    project = make_project(tmp_path, git=False)
    for name in ("ingest", "base", "prepare"):
        stage(name, cwd=project)
    monkeypatch.chdir(project)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "train", out_of_memory)
    with pytest.raises(modeling.ModelError) as error:
        train.main()
    message = str(error.value)
    assert message.startswith("the GPU ran out of memory during training")
    assert "lower train.batch_size (now 2) and raise train.grad_accum (now 4)" in message
    assert "set train.gradient_checkpointing: true" in message
    assert not (project / "models/adapter").exists() and not (project / "metrics/train.json").exists()


def test_4bit_tiny_model_must_be_wide_enough():
    from stages.params import ParamsError, parse

    with pytest.raises(ParamsError, match="model.quantization 4bit needs model.tiny.hidden_size and "
                                         "intermediate_size >= 64 .the bitsandbytes block size., got 32"):
        parse({"model": {"quantization": "4bit", "tiny": {"hidden_size": 32}}}, ["model"])
    parse({"model": {"quantization": "4bit"}}, ["model"])  # the default tiny model is wide enough
