"""``ftplan train`` on a real model folder (weights and a tokenizer with a chat template saved by
transformers, as a downloaded model would be), with chat data: the HF tokenizer path, not the byte one."""

import json
import subprocess
import sys

from tests.stack_fixtures import best_doc


def _folder(root):
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [f"user asks {i} and the assistant answers {i * 3}" for i in range(200)]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel()
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                               pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    tok.save_pretrained(root)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    transformers.LlamaForCausalLM(cfg).save_pretrained(root)
    return str(root)


def test_train_real_folder_with_chat_data(tmp_path):
    from ftplan.train.data import IGNORE, read_jsonl, tokenize
    from ftplan.train.tokenizer import HFTokenizer, load_tokenizer

    model = _folder(tmp_path / "model")
    data = tmp_path / "chat.jsonl"
    with open(data, "w") as f:
        for i in range(24):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"user asks {i}"},
                                             {"role": "assistant", "content": f"the assistant answers {i * 3}"}]}) + "\n")
    tok = load_tokenizer(model, 400, synthetic=False)
    assert isinstance(tok, HFTokenizer)
    ids, labels = tokenize(read_jsonl(data)[0], tok, 128)
    trained = tok.tok.decode([t for t in labels if t != IGNORE])
    assert "assistant answers 0" in trained and "user asks" not in trained  # loss on the assistant turn only
    assert ids.count(tok.eos_id) == 2  # one per turn from the template; none added after it
    doc = best_doc(model, method="lora", quant="bf16", double_quant=False, micro_batch=2, grad_accum=1, seq_len=64)
    doc["synthetic_weights"] = False
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps(doc))
    p = subprocess.run([sys.executable, "-m", "ftplan", "train", "--config", str(cfg), "--data", str(data),
                        "--max-steps", "6", "--lr", "3e-3", "-o", str(tmp_path / "out"), "-q"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out" / "adapter" / "tokenizer_config.json").exists()  # the tokenizer travels with it
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
