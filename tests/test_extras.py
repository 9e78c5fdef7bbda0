"""What the extras promise: ``ftplan[postgres]`` makes a plain ``postgresql://`` URL use psycopg 3 (SQLAlchemy
2.1 maps the bare scheme to psycopg; 2.0 mapped it to psycopg2, which the extra does not install), and
the floors in pyproject.toml are the versions constraints.txt pins (the ones CI tests)."""

import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_plain_postgresql_url_uses_psycopg3():
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine("postgresql://user@127.0.0.1:1/db")  # no connection is made
    assert engine.dialect.driver == "psycopg"


def _floors() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"]) + [r for rs in meta["optional-dependencies"].values() for r in rs]
    out = {}
    for r in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?>=([0-9.]+)", r.replace(" ", ""))
        if m and m.group(1).lower() != "ftplan":
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def _pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[name.lower().replace("_", "-")] = version.split("+")[0]
    return out


def _key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def test_every_floor_is_pinned_and_not_above_the_pin():
    pins = _pins()
    for name, floor in _floors().items():
        assert name in pins, f"{name} has a floor in pyproject.toml but no pin in constraints.txt"
        pinned = _key(pins[name])
        assert _key(floor) <= pinned, f"{name}>={floor} is above the tested {pins[name]}"
        # the floor names the tested release series (a prefix of the pin), not an older, untested one
        assert pinned[:len(_key(floor))] == _key(floor), (
            f"{name}>={floor}: CI tests {pins[name]}; raise the floor to it or test the floor")
