"""The profile's text names the attention kernel that really ran when it is not the one asked for."""

from ftplan.measure.text import profile_text


def _res(ran):
    return {"model": "m", "device": "cpu", "status": "oom", "error": "cap", "attention_ran": ran,
            "config": {"method": "qlora", "quant": "nf4", "attention": "flash_attention_2"}}


def test_profile_text_says_which_kernel_ran():
    assert "the model ran sdpa: flash_attention_2 is not available here" in profile_text(_res("sdpa"))
    assert "the model ran" not in profile_text(_res("flash_attention_2"))
