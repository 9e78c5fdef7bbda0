"""``ftplan train``: the full run with a configuration (``best.json`` from ``ftplan autotune``).

- ``data``: JSONL formats, validation with line numbers, tokenization with completion-only labels, packing
- ``tokenizer``: the model's tokenizer, or a byte-level one for synthetic-weight smoke runs
- ``loop``: the training loop (autocast, accumulation, checkpointing every N steps, resume)
- ``checkpoint``: atomic checkpoints and the adapter / merged-weights export
- ``launch``: the ``accelerate launch`` command and config for several GPUs

Nothing here is imported by ``import ftplan``.
"""
