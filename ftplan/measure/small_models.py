"""Small architectures made from real families' configs scaled down (random weights; used by the
accuracy benchmarks and the tests). Each keeps its family's structure: GQA, biases, tied
embeddings, fused projections, experts. Widths stay multiples of 64 (4-bit blocks)."""

from __future__ import annotations

import json
from pathlib import Path

SMALL_CONFIGS: dict[str, dict] = {
    # Llama 3: GQA 4:1, SwiGLU, untied head
    "llama": {"model_type": "llama", "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 8192,
              "max_position_embeddings": 4096, "tie_word_embeddings": False, "rms_norm_eps": 1e-5},
    # Mistral 7B: GQA, SwiGLU, no sliding window at these lengths
    "mistral": {"model_type": "mistral", "hidden_size": 256, "intermediate_size": 896, "num_hidden_layers": 3,
                "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 6144, "head_dim": 32,
                "max_position_embeddings": 4096, "tie_word_embeddings": False, "sliding_window": None},
    # Qwen2: biases on q/k/v, tied embeddings in the small models
    "qwen2": {"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 640, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 9216,
              "max_position_embeddings": 4096, "tie_word_embeddings": True, "use_sliding_window": False},
    # Gemma: tied embeddings, MQA, head_dim 64, GeGLU, embeddings scaled by sqrt(hidden)
    "gemma": {"model_type": "gemma", "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64, "vocab_size": 8192,
              "max_position_embeddings": 4096, "hidden_activation": "gelu_pytorch_tanh"},
    # Phi-3: fused qkv and gate_up projections
    "phi3": {"model_type": "phi3", "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 3,
             "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 4096,
             "max_position_embeddings": 4096, "tie_word_embeddings": False, "pad_token_id": 0},
    # Mixtral: 4 experts, top-2
    "mixtral": {"model_type": "mixtral", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4,
                "num_experts_per_tok": 2, "vocab_size": 4096, "max_position_embeddings": 4096,
                "tie_word_embeddings": False},
}


def write_config(name: str, folder: str | Path) -> Path:
    """Write ``SMALL_CONFIGS[name]`` as ``folder/name/config.json``; returns the folder."""
    d = Path(folder) / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(SMALL_CONFIGS[name], indent=1))
    return d
