"""finetune.modeling: precision by hardware, local directories and their errors, quantized LoRA on CPU, adapters."""

from __future__ import annotations

import json
import shutil

import families
import pytest
import torch

from finetune import chat_format, config, modeling, tiny
from finetune.errors import ModelError, ParamsError

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_precision_follows_hardware():
    expected = torch.float32 if not torch.cuda.is_available() else None
    if expected is not None:
        assert modeling.compute_dtype("auto") == torch.float32
    assert modeling.compute_dtype("bf16") == torch.bfloat16
    assert modeling.compute_dtype("fp32") == torch.float32


@pytest.fixture(scope="module")
def tiny_base_64(tmp_path_factory, tiny_tokenizer):
    """4-bit needs layers at least as wide as bitsandbytes' block size (64)."""
    out = tmp_path_factory.mktemp("tiny64")
    cfg = config.TinyModelParams(hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1)
    tiny.build_model(cfg, tiny_tokenizer).save_pretrained(out)
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


def test_not_a_model_directory(tmp_path, tiny_base):
    with pytest.raises(modeling.ModelError, match="has no config.json"):
        modeling.local_model(tmp_path)
    with pytest.raises(modeling.ModelError, match="is not a directory"):
        modeling.local_model(tmp_path / "missing")
    assert modeling.local_model(tiny_base) == {"kind": "local", "path": str(tiny_base.resolve())}  # control
    with pytest.raises(modeling.ModelError, match="none of 'tiny', 'local' or a hub id"):
        modeling.resolve_pretrained("./no/such/dir", "main")


def test_source_pointing_nowhere_is_explained(tmp_path):
    (tmp_path / "source.json").write_text(json.dumps({"kind": "local", "path": str(tmp_path / "gone")}))
    with pytest.raises(modeling.ModelError, match="rerun `dvc repro -f base`"):
        modeling.weights_dir(tmp_path)


def make_adapter(tmp_path, tiny_base, base_name="tiny"):
    """A small LoRA adapter for tiny_base, recorded as made for `base_name` (as train records model.base)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(modeling.load_model(tiny_base), LoraConfig(r=2, target_modules=["q_proj"]))
    model.peft_config["default"].base_model_name_or_path = base_name
    out = tmp_path / "adapter"
    model.save_pretrained(out, save_embedding_layers=False)
    return out


def test_adapter_checks(tmp_path, tiny_base):
    adapter = make_adapter(tmp_path, tiny_base)
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


# ---------------------------------------------------------------- any family: LoRA targets, chat template


@pytest.mark.parametrize("name", list(families.FAMILIES))
@pytest.mark.parametrize("quantization", ["none", "8bit"])
def test_linear_layer_names_are_each_familys_own(family_dir, name, quantization):
    model = modeling.load_model(family_dir(name), quantization)
    assert modeling.linear_layer_names(model) == list(families.FAMILIES[name].linear_layers)  # not the head
    assert modeling.lora_targets(model, "all-linear") == list(families.FAMILIES[name].linear_layers)


def test_a_listed_module_the_model_lacks_is_a_params_error_listing_its_layers(family_dir):
    phi3 = modeling.load_model(family_dir("phi3"), "none")
    with pytest.raises(ParamsError) as error:
        modeling.lora_targets(phi3, LORA_TARGETS)  # the reference list: Phi-3 fuses q/k/v and gate/up
    message = str(error.value)
    assert (
        "train.lora.target_modules: q_proj, k_proj, v_proj, gate_proj, up_proj are not a linear layer of "
        "Phi3ForCausalLM, whose linear layers are down_proj, gate_up_proj, o_proj, qkv_proj" in message
    )
    # control: the same list fits a Llama; a name it lacks does not
    llama = modeling.load_model(family_dir("llama3"), "none")
    assert modeling.lora_targets(llama, LORA_TARGETS) == LORA_TARGETS
    with pytest.raises(ParamsError, match="qkv_proj is not a linear layer of LlamaForCausalLM"):
        modeling.lora_targets(llama, ["q_proj", "qkv_proj"])


def test_chat_template_choice(family_dir, tmp_path):
    llama = family_dir("llama3")
    own = modeling.load_tokenizer(llama).chat_template
    assert modeling.choose_template(modeling.load_tokenizer(llama), "auto", "x").chat_template == own
    # a model without a template: auto says how
    bare = modeling.load_tokenizer(llama)
    bare.chat_template = None
    with pytest.raises(ParamsError, match="has no chat template .* set model.chat_template to chatml"):
        modeling.choose_template(bare, "auto", "llama")
    # chatml where <|im_start|>/<|im_end|> are no tokens: refused, not trained as text
    with pytest.raises(ParamsError, match=r"chatml needs <\|im_start\|> and <\|im_end\|> as single tokens"):
        modeling.choose_template(modeling.load_tokenizer(llama), "chatml", "llama")
    chatml = modeling.choose_template(modeling.load_tokenizer(family_dir("qwen2")), "chatml", "qwen2")  # control
    assert chatml.chat_template == chat_format.CHATML_TEMPLATE
    # a .jinja file: used as written, if its turns end with a special token
    path = tmp_path / "plain.jinja"
    path.write_text(
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    )
    assert (
        modeling.choose_template(modeling.load_tokenizer(llama), str(path), "llama").chat_template == path.read_text()
    )
    path.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}")
    with pytest.raises(ParamsError, match=r"an assistant turn ends with '\\n\\n', which does not start with a special"):
        modeling.choose_template(modeling.load_tokenizer(llama), str(path), "llama")
    with pytest.raises(ParamsError, match="must be auto, chatml or a .jinja file"):
        modeling.choose_template(modeling.load_tokenizer(llama), str(tmp_path / "missing.jinja"), "llama")


def test_a_tokenizer_without_a_template_is_refused_after_base(family_dir, tmp_path):
    tokenizer = modeling.load_tokenizer(family_dir("llama3"))
    assert tokenizer.pad_token == "<|eot_id|>"  # Llama-3 ships no pad token: eos pads, as in TRL
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="no chat template; rerun `dvc repro base`"):
        modeling.load_tokenizer(tmp_path)
