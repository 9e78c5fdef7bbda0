"""The real thing: torch, transformers, peft and bitsandbytes (imported lazily, never by ``import ftplan``).

- ``tracker``: the live-storage tracker (tensor-level peak on the CPU and under fake tensors)
- ``build``: HF configs, models with real or synthetic weights, quantization, PEFT
- ``step``: one measured training step, phase by phase
- ``profile``: ``ftplan profile`` (a short real run, measured)
- ``trace``: ``ftplan trace`` (a full-size step under ``FakeTensorMode``)
"""
