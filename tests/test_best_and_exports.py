"""best.json (ftplan.best) and the trainers' files made from it (ftplan.integrations.exports): written
atomically, read back with a YAML parser, every knob carried over. No torch needed."""

import json

import pytest
import yaml

import ftplan
from ftplan.best import FORMAT, best_config, best_knobs, document, read_best, write_best
from ftplan.errors import FtplanError
from ftplan.integrations.exports import axolotl, llamafactory, to_yaml, trl, write_all


def _doc(**knobs):
    cfg = ftplan.estimate("8b", **knobs).config
    return document(model="8b", model_name="llama3.1-8b", hf_id="meta-llama/Llama-3.1-8B", knobs=cfg.knobs(),
                    study="s1", trial=3, gpu="rtx4090")


def test_document_round_trips_through_best_json(tmp_path):
    doc = _doc(method="qlora", lora_rank=32, micro_batch=2, grad_accum=8)
    path = write_best(tmp_path / "best.json", doc)
    back = read_best(path)
    assert back == json.loads(json.dumps(doc)) and back["format"] == FORMAT
    assert back["effective_batch"] == 16
    spec, cfg = best_config(back)
    assert (cfg.method, cfg.lora_rank, cfg.micro_batch, cfg.grad_accum) == ("qlora", 32, 2, 8)
    assert best_knobs(back, lora_rank=8)["lora_rank"] == 8


@pytest.mark.parametrize("text,needle", [(None, "does not exist"), ("{not json", "not JSON"),
                                         ('{"model": "8b"}', "has no 'model' and 'knobs'")])
def test_bad_best_json_is_a_clear_error(tmp_path, text, needle):
    path = tmp_path / "best.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(FtplanError, match=needle):
        read_best(path)


@pytest.mark.parametrize("knobs", [
    dict(method="qlora", quant="nf4", double_quant=False, lora_targets="q_proj,v_proj", attention="eager"),
    dict(method="lora", quant="int8", gradient_checkpointing=False, optimizer="adamw_8bit"),
    dict(method="full", quant="bf16", optimizer="adafactor", attention="flash_attention_2"),
])
def test_exports_parse_as_yaml_and_carry_every_knob(tmp_path, knobs):
    doc = _doc(**knobs)
    files = write_all(tmp_path, doc, data_path="data: with #special chars.jsonl")
    k = doc["knobs"]
    ax = yaml.safe_load(open(files["axolotl"]))
    assert ax["base_model"] == "meta-llama/Llama-3.1-8B"
    assert ax["datasets"] == [{"path": "data: with #special chars.jsonl", "type": "completion"}]
    assert (ax["sequence_len"], ax["micro_batch_size"], ax["gradient_accumulation_steps"]) == (
        k["seq_len"], k["micro_batch"], k["grad_accum"])
    assert ax["gradient_checkpointing"] is k["gradient_checkpointing"]
    lf = yaml.safe_load(open(files["llamafactory"]))
    assert lf["finetuning_type"] == ("full" if k["method"] == "full" else "lora")
    assert lf["per_device_train_batch_size"] == k["micro_batch"]
    if k["quant"] in ("nf4", "fp4"):
        assert (lf["quantization_bit"], lf["double_quantization"]) == (4, k["double_quant"])
    if k["method"] != "full":
        assert (ax["lora_r"], lf["lora_rank"]) == (k["lora_rank"], k["lora_rank"])
    compile(open(files["trl"]).read(), "trl_sft.py", "exec")  # valid Python
    assert read_best(files["best"])["knobs"] == k


def test_hand_written_document_with_some_knobs():
    doc = {"model": "8b", "knobs": {"method": "qlora", "lora_rank": 8}}
    ax = yaml.safe_load(axolotl(doc))
    assert ax["lora_r"] == 8 and ax["adapter"] == "qlora" and ax["base_model"] == "8b"
    assert yaml.safe_load(llamafactory(doc))["lora_rank"] == 8
    assert "r=8" in trl(doc)


def test_to_yaml_quotes_what_needs_quoting():
    d = {"a": "yes", "b": "1.0", "c": "x: y", "d": None, "e": [1, "two"], "f": {"g": True}}
    assert yaml.safe_load(to_yaml(d)) == d


def test_a_zero_plan_carries_its_deepspeed_config_into_every_export(tmp_path):
    import ftplan
    from ftplan.errors import FtplanError
    from ftplan.integrations import exports

    plan = ftplan.plan("8b", "h100", top=1, num_gpus=4, sharding="zero3", offload="params", method="lora",
                       quant="bf16", handoff="axolotl", calibrate=False)[0]
    doc = {"model": "8b", "knobs": plan.config.knobs()}
    out = exports.write_all(tmp_path, doc)
    ds = json.loads((tmp_path / "deepspeed.json").read_text())
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu" and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["reduce_bucket_size"] == "auto" and zero["stage3_prefetch_bucket_size"] == "auto"  # HF's hidden^2 sizes
    assert ds["bf16"]["enabled"] == "auto" and "optimizer" not in ds  # the plan's optimizer, built by HF Trainer
    for name in ("axolotl", "llamafactory"):
        text = (tmp_path / f"{name}.yaml").read_text()
        assert "deepspeed: deepspeed.json" in text and "bf16: true" in text, name
    assert "deepspeed={" in (tmp_path / "trl_sft.py").read_text()
    assert out["deepspeed"].endswith("deepspeed.json")
    with pytest.raises(FtplanError, match="ftplan train runs DDP and FSDP, not DeepSpeed"):
        ftplan.plan("8b", "h100", num_gpus=4, sharding="zero2", method="lora", quant="bf16", handoff="ftplan")
