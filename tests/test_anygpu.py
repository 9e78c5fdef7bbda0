"""Which GPU to rent (``--gpu any``, ``ftplan.plan(model, gpu="any")``): every catalog GPU and count ranked,
the budget and the deadline honoured, and bad constraints refused with exit 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import ftplan
from ftplan.anygpu import deadline_hours, rank_gpus
from ftplan.cli import app


def test_constraints_and_ranking():
    res = rank_gpus("8b", tokens=5e7, budget=5.0, deadline="2h", objective="cost")
    meet = [o for o in res.options if o.meets]
    assert meet and res.considered >= 60
    for o in meet:
        assert o.dollars <= 5.0 and o.hours <= 2.0
        assert o.hours_range[0] <= o.hours <= o.hours_range[1]
        assert o.dollars_range[0] <= o.dollars <= o.dollars_range[1]
    assert [o.dollars for o in meet] == sorted(o.dollars for o in meet)  # cost: cheapest first
    first_miss = next(i for i, o in enumerate(res.options) if not o.meets)
    assert all(not o.meets for o in res.options[first_miss:])  # those meeting the constraints come first
    assert any(o.count > 1 for o in res.options) and any(o.count == 1 for o in res.options)
    fast = rank_gpus("8b", tokens=5e7, objective="throughput")
    assert [o.hours for o in fast.options] == sorted(o.hours for o in fast.options)


def test_plan_any_returns_the_plans_that_meet_the_constraints():
    plans = ftplan.plan("8b", "any", tokens=5e7, budget=5.0, deadline=2)
    assert plans and all(p.estimate.cost.dollars <= 5.0 and p.estimate.cost.hours <= 2 for p in plans)
    assert {p.estimate.gpu for p in plans} > {plans[0].estimate.gpu}  # several GPUs, not one
    assert ftplan.plan("70b", "any", tokens=1e9, budget=1.0) == []  # nothing is that cheap


def test_deadline_text():
    assert deadline_hours("12h") == 12 and deadline_hours("90m") == 1.5 and deadline_hours("2d") == 48
    assert deadline_hours(3) == 3 and deadline_hours(None) is None
    for bad in ("soon", "-1h", float("nan")):
        with pytest.raises(ftplan.FtplanError):
            deadline_hours(bad)


def test_cli():
    r = CliRunner().invoke(app, ["--model", "8b", "--gpu", "any", "--budget", "50", "--deadline", "12h",
                                 "--tokens", "50M"])
    assert r.exit_code == 0, r.output
    assert "which GPU to rent (at most $50.00, within 12.0 h)" in r.output and "meet the constraints" in r.output
    r = CliRunner().invoke(app, ["--model", "70b", "--gpu", "any", "--budget", "1", "--tokens", "1B", "--json"])
    doc = json.loads(r.output)
    assert r.exit_code == 1 and doc["options"] and not any(o["meets_budget"] for o in doc["options"])
    r = CliRunner().invoke(app, ["--model", "8b", "--gpu", "rtx4090", "--budget", "50"])
    assert r.exit_code == 2 and "--gpu any" in r.output
    r = CliRunner().invoke(app, ["--model", "8b", "--gpu", "any", "--deadline", "tomorrow"])
    assert r.exit_code == 2 and "--deadline" in r.output


def test_report_takes_any():
    from ftplan.reports.data import any_gpus

    opts = any_gpus("8b", 5e7, 1.0, {})
    assert 2 <= len(opts) <= 12 and len(set(opts)) == len(opts)
