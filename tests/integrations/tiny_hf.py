"""A tiny Hugging Face model folder (2-layer Llama, random weights, a word-level tokenizer) and small
data, for running the exported trainer configs on the CPU without downloads."""

import json
from pathlib import Path

LINES = [f"the quick brown fox number {i} jumps over the lazy dog and writes line {i * 7}" for i in range(16)]


def write_tiny_hf_model(folder: Path) -> Path:
    """Save the model, its tokenizer and ``train.jsonl`` (``{"text": ...}`` lines) in ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for line in LINES for w in line.split()})
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                     pad_token="<pad>")
    # a chat template, for the trainers that format every sample through one
    hf_tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                            "{% if add_generation_prompt %}assistant: {% endif %}")
    hf_tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in LINES))
    return folder
