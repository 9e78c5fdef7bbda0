"""The real thing: torch, transformers, peft and bitsandbytes (imported lazily, never by ``import ftplan``).

- ``tracker``: the live-storage tracker (tensor-level peak on the CPU and under fake tensors)
- ``build``: HF configs, models with real or synthetic weights, quantization, PEFT
- ``step``: one measured training step, phase by phase
- ``profile``: ``ftplan profile`` (a short real run, measured)
- ``trace``: ``ftplan trace`` (a full-size step under ``FakeTensorMode``)
"""


def quiet() -> None:
    """Silence the stack's import-time notices (missing optional kernels, deprecations) so that a
    command's output is its own; errors still surface."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("bitsandbytes", "transformers", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for mod in ("bitsandbytes", "peft", "transformers", "torch", "accelerate"):
        warnings.filterwarnings("ignore", module=mod)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
