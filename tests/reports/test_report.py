"""``ftplan report``: the figures against ``ftplan.plan``, bad input, and the page in a real headless
Chromium (no console errors, every chart drawn, a screenshot)."""

import html
import json
import re
import shutil
import subprocess
import sys

import pytest

import ftplan
from ftplan import reports
from ftplan.errors import FtplanError

pytest.importorskip("plotly")
pytest.importorskip("pandas")

GPUS = "rtx4090,l40s,a100-80gb,h100"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    prices = d / "prices.csv"
    prices.write_text("gpu,price_per_hour,spot_price_per_hour,purchase_price,source,date\n"
                      "rtx4090,0.70,,2000,test quote,2026-11-01\nh100,3.00,1.20,30000,test quote,2026-11-01\n")
    r = reports.build("8b", GPUS + ",gtx1650", "50M", epochs=3, prices=str(prices), spot_discount=0.5,
                      hours_per_week=40, command="ftplan report (test)")
    path = reports.write_html(r, d / "report.html")
    return r, path, prices


def _data(path):
    text = path.read_text()
    m = re.search(r'<script type="application/json" id="ftplan-data">(.*?)</script>', text, re.S)
    return json.loads(html.unescape(m.group(1))), text


def test_figures_match_plan(page):
    r, path, _ = page
    data, text = _data(path)
    prices = {"rtx4090": 0.70, "h100-sxm": 3.00}
    by_gpu = {o["gpu"]: o for o in data["options"]}
    for key in ("rtx4090", "l40s", "a100-80gb", "h100-sxm"):
        price = prices.get(key)
        best = ftplan.plan("8b", key, tokens=50e6, epochs=3, price=price, top=1)[0]
        o = by_gpu[key]
        assert o["fits"] and o["device_bytes"] == best.estimate.device_bytes
        assert o["hours"] == pytest.approx(best.estimate.cost.hours)
        assert o["cost"] == pytest.approx(best.estimate.cost.dollars)
        assert o["per_million"] == pytest.approx(best.estimate.cost.dollars / 150.0)
        assert f"${best.estimate.cost.dollars:,.2f}" in text  # the visible table says the same
        lo, hi = best.estimate.device_bytes_range  # the memory's published range, in the data and the table
        assert o["device_bytes_range"] == [lo, hi]
        assert f"likely {lo / 2**30:.1f} GiB to {hi / 2**30:.1f} GiB" in text
    assert by_gpu["h100-sxm"]["spot_cost"] == pytest.approx(by_gpu["h100-sxm"]["hours"] * 1.20)  # file's spot price
    assert by_gpu["l40s"]["spot_cost"] == pytest.approx(by_gpu["l40s"]["cost"] * 0.5)  # discount
    assert not by_gpu["gtx1650"]["fits"]
    priced = [o for o in data["options"] if o["cost"] is not None]
    assert r.cheapest.gpu == min(priced, key=lambda o: o["cost"])["gpu"]
    assert r.fastest.gpu == min(priced, key=lambda o: o["hours"])["gpu"]
    h100 = next(o for o in r.options if o.gpu == "h100-sxm")
    assert h100.breakeven_weeks == pytest.approx(30000 / ((3.00 - 0.7 * 0.15) * 40))  # 700 W at $0.15/kWh
    assert "test quote" in text and "2026-11-01" in text and ftplan.__version__ in text
    assert "<script src=" not in text and "<link" not in text  # self-contained: plotly.js is inlined
    assert len(text) > 3_000_000  # the plotly.js bundle is in the page


def test_tables_export(page, tmp_path):
    import pandas as pd

    r, _, _ = page
    out = reports.write_tables(r, tmp_path / "t.csv", tmp_path / "t.json")
    df = pd.read_csv(out[0])
    assert list(df["gpu"][:4]) == ["rtx4090", "l40s", "a100-80gb", "h100-sxm"]
    first = json.loads(out[1].read_text())[0]
    assert first["gpu"] == "rtx4090" and first["memory_low_gib"] <= first["memory_gib"] <= first["memory_high_gib"]
    assert "published/predicted peak memory" in first["memory_basis"]


@pytest.mark.parametrize("args,needle", [
    (["--gpus", "rtx4090,nosuchgpu"], "nosuchgpu"),
    (["--tokens", "0"], "--tokens='0' must be greater than 0"),
    (["--prices", "{missing}"], "price_per_hour is missing"),
    (["--prices", "{negative}"], "must not be negative"),
    (["--spot-discount", "1.5"], "--spot-discount"),
])
def test_bad_input_exit_2_and_no_file(tmp_path, args, needle):
    (tmp_path / "missing.csv").write_text("gpu,price_per_hour\nrtx4090,\n")
    (tmp_path / "negative.csv").write_text("gpu,price_per_hour\nrtx4090,-1\n")
    base = {"--gpus": GPUS, "--tokens": "50M"}
    it = iter(args)
    for k in it:
        base[k] = next(it).format(missing=tmp_path / "missing.csv", negative=tmp_path / "negative.csv")
    cmd = [sys.executable, "-m", "ftplan", "report", "--model", "8b", "-o", str(tmp_path / "r.html"),
           *[x for kv in base.items() for x in kv]]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "r.html").exists() and not list(tmp_path.glob("*.tmp"))


def test_study_trials_beside_predictions(tmp_path):
    optuna = pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    st = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for pred, meas in [(10, 11), (20, 19)]:
        t = st.ask()
        t.set_user_attr("ran", True)
        t.set_user_attr("predicted", {"device_bytes": pred * 2**30, "tokens_per_s": 1000.0})
        t.set_user_attr("measured", {"device_bytes": meas * 2**30, "tokens_per_s": 900.0})
        st.tell(t, 900.0)
    r = reports.build("8b", "h100", "10M", study="s", storage=url)
    from ftplan.reports.html import page

    text = page(r)
    assert "trial 0" in text and "-9.1%" in text and "+5.3%" in text  # (10-11)/11, (20-19)/19
    with pytest.raises(FtplanError, match="not in"):
        reports.build("8b", "h100", "10M", study="nope", storage=url)


def test_study_without_optuna_is_a_one_line_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ftplan.cli import app

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` fails as if it were not installed
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", "--model", "8b", "--gpus", "h100", "--tokens", "10M", "--study", "s",
                                   "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    (line,) = res.output.strip().splitlines()
    assert line == "error: --study needs optuna, which is not installed: pip install 'ftplan[tune]'"
    assert not out.exists()


def _browser():
    return reports.find_browser(), shutil.which("chromedriver")


@pytest.mark.skipif(None in _browser(), reason="needs Chromium and chromedriver (.ci/run installs them)")
def test_page_renders_in_headless_chromium(page, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _, path, _ = page
    browser, driver_path = _browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.get(path.resolve().as_uri())
        # plotly draws after the load event: wait for every chart (a loaded machine can take seconds)
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(drv, 60).until(lambda d: d.execute_script(
            "const c = document.querySelectorAll('div[id^=chart-]');"
            "return c.length >= 3 && Array.from(c).every(x => x.querySelector('svg.main-svg .trace'));"))
        charts = drv.execute_script("return Array.from(document.querySelectorAll('div[id^=chart-]')).map(d => d.id)")
        assert set(charts) >= {"chart-memory", "chart-cost", "chart-breakeven"}
        for cid in charts:
            n = drv.execute_script(f"return document.querySelectorAll('#{cid} svg.main-svg').length")
            assert n >= 1, f"{cid} not drawn"
            bars = drv.execute_script(f"return document.querySelectorAll('#{cid} .trace').length")
            assert bars >= 1, f"{cid} has no traces"
        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        shot = tmp_path / "report.png"
        drv.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        drv.quit()


def test_pdf_or_a_clear_error(page, tmp_path, monkeypatch):
    _, path, _ = page
    if reports.find_browser() is not None:
        pdf = reports.write_pdf(path, tmp_path / "r.pdf")
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 20_000
    monkeypatch.setenv("PATH", str(tmp_path))  # no browser anywhere
    monkeypatch.setenv("FTPLAN_BROWSER", str(tmp_path / "nothing-here"))
    with pytest.raises(FtplanError, match="needs Chromium"):
        reports.write_pdf(path, tmp_path / "x.pdf")
    assert not (tmp_path / "x.pdf").exists()
