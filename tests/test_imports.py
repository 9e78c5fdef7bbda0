"""`import ftplan` and the fit command must not load the heavy stack (checked in a fresh interpreter)."""

import json
import subprocess
import sys

HEAVY = ["torch", "transformers", "optuna", "pandas", "plotly", "peft", "bitsandbytes", "numpy", "mlflow", "wandb",
         "tensorboard"]

SCRIPT = """
import json, sys
{body}
print(json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def _loaded(body: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(body=body, heavy=HEAVY)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_ftplan_is_light():
    assert _loaded("import ftplan; ftplan.estimate('8b', 'rtx4090')") == []


def test_fit_command_is_light():
    body = ("from ftplan.cli import app\n"
            "try:\n    app(['--model', '8b', '--gpu', 'rtx4090', '--json'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code")
    assert _loaded(body) == []


def test_tracking_module_is_light():
    """``ftplan.tracking``'s checks (run before a training starts) import none of the trackers."""
    assert _loaded("import ftplan.tracking as t; t.check('none'); t.flat({'a': 1})") == []
