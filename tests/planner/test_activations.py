"""Activation and loss terms on a tiny Llama-shaped model, against values computed by hand.

tiny: h=64, f=128, 2 layers, 4 heads, 2 kv heads, head_dim 16, vocab 100; b=1, s=8 -> E=8 tokens,
X=E*h=512, Q=E*a*d=512, K=E*k*d=256, F=E*f=1024. QLoRA after prepare_model_for_kbit_training:
residual stream fp32 (hb=4), autocast compute bf16 (cb=2), rank 4 on all 7 linears.
"""

from dataclasses import replace

from ftplan.planner.memory.activations import activation_memory, layer_activations, norm_saved, saved_linear_inputs
from ftplan.planner.memory.logits import loss_memory
from ftplan.planner.memory.precision import precision


def test_saved_linear_inputs_rules():
    # fp32 input under bf16 autocast: one bf16 copy per module
    assert saved_linear_inputs(100, 4, 2, n_full=0, n_lora=3, dropout=0.0) == 600
    # bf16 input: shared by all readers, counted once (or not at all if already saved)
    assert saved_linear_inputs(100, 2, 2, 0, 3, 0.0) == 200
    assert saved_linear_inputs(100, 2, 2, 0, 3, 0.0, shared_already=True) == 0
    # dropout: each LoRA module keeps a bool mask and its own dropped copy
    assert saved_linear_inputs(100, 2, 2, 0, 2, 0.1) == 2 * 100 * (1 + 2)
    assert saved_linear_inputs(100, 2, 2, 0, 0, 0.1) == 0


def test_norm_saved():
    assert norm_saved(8, 64, "rmsnorm", False, 4) == 4 * 512 + 4 * 8
    assert norm_saved(8, 64, "layernorm", False, 4) == 4 * 512 + 8 * 8
    assert norm_saved(8, 64, "rmsnorm", True, 2) == 4 * 512 + 4 * 8 + 2 * 512


def test_qlora_layer_by_hand(tiny, qlora_cfg):
    parts = layer_activations(tiny, qlora_cfg, precision(qlora_cfg))
    assert parts["norms"] == 2 * (4 * 512 + 4 * 8)
    assert parts["attn_inputs"] == 3 * 512 * 2  # bf16 copy of the fp32 norm output per q/k/v LoRA
    assert parts["attention"] == 2 * (2 * 512 + 2 * 256) + 4 * 1 * 4 * 8  # q,k,v,out bf16 + fp32 lse
    assert parts["o_inputs"] == 0  # o_proj reads the SDPA output, already saved
    assert parts["mlp_inputs"] == 2 * 512 * 2
    assert parts["mlp"] == 3 * 4 * 1024  # gate out, act out, up: fp32 (bnb casts back to the input dtype)
    assert parts["mlp_out_inputs"] == 1024 * 2
    assert parts["lora_hidden"] == 7 * 8 * 4 * 2
    assert sum(parts.values()) == 27264


def test_bf16_lora_gives_each_adapter_its_own_copy(tiny, qlora_cfg):
    # peft casts a plain Linear's input to the fp32 adapter dtype, autocast casts it back for lora_A:
    # q, k, v each save a bf16 copy of the 8x64 input (measured on CPU runs: accuracy_cpu.py)
    cfg = replace(qlora_cfg, method="lora", quant="bf16")
    parts = layer_activations(tiny, cfg, precision(cfg))
    assert parts["attn_inputs"] == 3 * 512 * 2
    assert parts["mlp"] == 3 * 2 * 1024


def test_full_finetuning_linears_share_their_input(tiny, qlora_cfg):
    cfg = replace(qlora_cfg, method="full", quant="bf16")
    parts = layer_activations(tiny, cfg, precision(cfg))
    assert parts["attn_inputs"] == 512 * 2  # q, k, v save one shared bf16 tensor


def test_dropout_mask_is_bool_on_cuda_and_input_dtype_on_cpu(tiny, qlora_cfg):
    cfg = replace(qlora_cfg, lora_dropout=0.1)
    gpu = layer_activations(tiny, cfg, precision(cfg, "cuda"))["attn_inputs"]
    cpu = layer_activations(tiny, cfg, precision(cfg, "cpu"))["attn_inputs"]
    assert gpu == 3 * 512 * (1 + 2)  # bool mask + bf16 copy per adapter
    assert cpu == 3 * 512 * (4 + 2)  # fp32 noise tensor + bf16 copy per adapter


def test_eager_attention_is_quadratic(tiny, qlora_cfg):
    cfg = replace(qlora_cfg, attention="eager")
    parts = layer_activations(tiny, cfg, precision(cfg))
    scores = 1 * 4 * 8 * 8
    assert parts["attention"] == 2 * 3 * 512 + (4 + 2) * scores


def test_checkpointing_keeps_layer_inputs(tiny, qlora_cfg):
    cfg = replace(qlora_cfg, gradient_checkpointing=True)
    act = activation_memory(tiny, cfg, precision(cfg))
    assert act.layer_saved == 2 * 4 * 512  # fp32 hidden state per layer
    # the recomputed layer minus its first norm's fp32 input, which is the checkpoint's own tensor
    assert act.layer_recompute == 27264 - 4 * 512


def test_loss_buffers_by_hand(tiny, qlora_cfg):
    loss = loss_memory(tiny, qlora_cfg, precision(qlora_cfg))
    N = 8 * 100
    assert loss.forward_peak == 2 * N + 4 * N + 4 * N  # bf16 logits, fp32 copy, log-probs
    assert loss.saved == 4 * N
    assert loss.backward_peak == 12 * N


def test_chunked_loss_is_smaller_for_large_vocab(tiny, qlora_cfg):
    big = replace(tiny, vocab=128_256, hidden=4096)
    cfg = replace(qlora_cfg, seq_len=2048)
    std = loss_memory(big, cfg, precision(cfg))
    chunked = loss_memory(big, replace(cfg, loss_impl="chunked"), precision(cfg))
    assert chunked.backward_peak < std.backward_peak / 10


def test_tied_embedding_gradient_accumulation_only_for_full_finetuning(tiny, qlora_cfg):
    from ftplan.planner.memory.phases import tied_embedding_grad_bytes

    tied = replace(tiny, tied_embeddings=True)
    full = replace(qlora_cfg, method="full", quant="bf16")
    assert tied_embedding_grad_bytes(tied, full, precision(full)) == 2 * 100 * 64 * 2  # 2 x V x h x bf16
    assert tied_embedding_grad_bytes(tiny, full, precision(full)) == 0  # untied: the grad is the weight's own
    assert tied_embedding_grad_bytes(tied, qlora_cfg, precision(qlora_cfg)) == 0  # frozen embeddings


def test_dequant_moment_by_hand(tiny, qlora_cfg):
    """The 4-bit weight's dequantized copy meets the output projection's gradients (incoming 4X + input 4F,
    fp32 stream), not the product's 3F + 2X transient: max(4*512 + 4*1024, 3*4*512 - 4*1024) = 6144."""
    from ftplan.planner.memory.activations import backward_transient, dequant_moment_transient

    prec = precision(qlora_cfg)
    assert dequant_moment_transient(tiny, qlora_cfg, prec) == 6144
    assert backward_transient(tiny, qlora_cfg, prec) == 3 * 4 * 1024 + 2 * 4 * 512
    lora = replace(qlora_cfg, method="lora", quant="bf16")
    assert dequant_moment_transient(tiny, lora, precision(lora)) == 0  # no dequantized weight


def test_top_layer_backward_holds_the_larger_moment(tiny, qlora_cfg):
    """QLoRA: the top layer's backward holds the dequantized weight (64*128 bf16 = 16,384 B) beside the
    6,144 B of its moment (22,528 > the product's 16,384), never both transients at once."""
    from ftplan.planner.memory.phases import memory_model

    m = memory_model(tiny, qlora_cfg, None)
    top = m.phases["backward"]
    assert top["dequant_transient"] == 16384 and top["backward_transient"] == 6144
    lora = replace(qlora_cfg, method="lora", quant="bf16")
    top = memory_model(tiny, lora, None).phases["backward"]
    assert "dequant_transient" not in top and top["backward_transient"] == 3 * 2 * 1024 + 2 * 2 * 512
