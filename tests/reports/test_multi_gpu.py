"""``ftplan report``'s multi-GPU options: a count row only when no single catalog GPU fits (one node at
most), and an option on cards without NVLink is never called fastest without saying its speed assumes
data-parallel scaling over PCIe."""

import pytest

import ftplan
from ftplan import reports


def test_no_count_row_while_a_single_gpu_fits():
    # was: a "16 x GeForce RTX 4090 (FSDP)" row for 70B, which fits one H100
    r = reports.build("70b", "rtx4090", "50M")
    assert [(o.gpu, o.count) for o in r.options] == [("rtx4090", 1)]
    assert not r.options[0].fits


def test_a_count_row_when_no_single_gpu_fits_is_one_node_and_fits():
    r = reports.build("405b", "h100,rtx4090", "50M")
    rows = [(o.gpu, o.count) for o in r.options]
    extra = [o for o in r.options if o.count > 1]
    assert len(extra) == 1 and extra[0].gpu == "h100-sxm" and 1 < extra[0].count <= 8, rows
    assert extra[0].fits and "no single GPU" in extra[0].note
    c = extra[0].plan.config
    assert ftplan.plan("405b", "h100", num_gpus=extra[0].count, sharding=c.sharding, offload=c.offload, top=1)
    assert ("rtx4090", 1) in rows and not any(o.gpu == "rtx4090" and o.count > 1 for o in r.options)


def test_consumer_cards_without_nvlink_are_flagged():
    r = reports.build("1b", "gtx1650,2xrtx4090,2xh100", "50M")
    by = {(o.gpu, o.count): o for o in r.options}
    pcie, nvl = by[("rtx4090", 2)], by[("h100-sxm", 2)]
    assert pcie.pcie_only and not pcie.nvlink and "PCIe" in pcie.interconnect and "NVLink" in pcie.interconnect
    assert not nvl.pcie_only and nvl.nvlink
    assert by[("gtx1650", 1)].interconnect == ""


def test_the_page_says_the_fastest_pcie_option_assumes_data_parallel_scaling(tmp_path):
    pytest.importorskip("plotly")
    pytest.importorskip("pandas")
    r = reports.build("1b", "gtx1650,2xrtx4090", "50M")
    assert r.fastest is not None and (r.fastest.gpu, r.fastest.count) == ("rtx4090", 2)
    text = reports.write_html(r, tmp_path / "r.html").read_text()
    callout = text[text.index("callout>Fastest"):]
    callout = callout[:callout.index("</div>")]
    assert "data-parallel scaling" in callout and "PCIe" in callout
    at = text.index("data-count='2'")
    row = text[text.rindex("<tr", 0, at):text.index("</tr>", at)]
    assert "data-nvlink='no'" in row and "no NVLink" in row
    df = reports.frames(r)["options"]
    assert list(df["nvlink"]) == [False, False] and "PCIe" in df["interconnect"][1]
