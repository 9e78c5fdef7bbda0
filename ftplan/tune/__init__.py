"""``ftplan autotune``: the planner's candidates checked by short profiled runs under Optuna.

- ``space``: the candidates (the planner's enumeration), their predictions, what is skipped and why
- ``worker``: a long-lived process that runs profiled trials (the stack is imported once per worker)
- ``pool``: the parent's side of a worker: timeouts, crashes, replacement
- ``study``: the Optuna loop, resumable, shared through any Optuna RDB storage
- ``export``: ``best.json`` and the Axolotl, LLaMA-Factory and TRL versions of the winner

Only ``study`` and ``pool`` import optuna (lazily); ``import ftplan`` imports none of this.
"""
