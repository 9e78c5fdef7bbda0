"""The one parser of counts, sizes and durations (ftplan.units), hand-checked values and rejections."""

import math

import pytest

from ftplan.errors import FtplanError
from ftplan.units import parse_bytes, parse_count, parse_duration


@pytest.mark.parametrize("text,value", [("50M", 5e7), ("1.5B", 1.5e9), ("20000", 2e4), (" 2k ", 2e3), ("1e6", 1e6),
                                        (3, 3.0), (2.5, 2.5)])
def test_counts(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text,value", [("12GiB", 12 * 2**30), ("500MB", 500_000_000), ("2e9", 2_000_000_000),
                                        ("64mib", 64 * 2**20), ("1.5g", 1_500_000_000), ("100", 100)])
def test_sizes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text,value", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("600", 600), ("2 min", 120),
                                        ("2d", 172800), ("0.5 day", 43200)])
def test_durations(text, value):
    assert parse_duration(text) == value


@pytest.mark.parametrize("parse", [parse_count, parse_bytes, parse_duration])
@pytest.mark.parametrize("bad", ["0", "-5", "abc", "5 parsecs", "", "nan", "inf", math.nan, math.inf, -1.0, 0, True])
def test_rejections_name_the_value(parse, bad):
    with pytest.raises(FtplanError) as e:
        parse(bad)
    assert repr(bad) in str(e.value) and "e.g." in str(e.value)


def test_none_passes_through_for_optional_options():
    assert parse_bytes(None) is None and parse_duration(None) is None
