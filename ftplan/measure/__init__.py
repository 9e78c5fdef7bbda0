"""Measuring a configuration for real (torch imported lazily, never by ``import ftplan``): the numbers the
analytical model is checked and calibrated against.

- ``tracker``: the live-storage tracker (tensor-level peak on the CPU and under fake tensors)
- ``step``: one training step measured phase by phase
- ``profile``: ``ftplan profile`` (a short real run, measured)
- ``trace``: ``ftplan trace`` (a full-size step under ``FakeTensorMode``)
- ``compare`` and ``text``: a prediction lined up with a measurement, term by term, and as text
- ``small_models``: real families' configs scaled down, for tests and the CPU accuracy benchmark
"""
