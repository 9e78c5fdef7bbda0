"""--model with a Hugging Face id that is not in the catalog: its config.json through huggingface_hub.

No network here: the Hub call is a stand-in for ``huggingface_hub.hf_hub_download`` (what ftplan passes
to it, how each of its errors reads), and the real library reads a config already in a local HF cache
in a fresh interpreter (huggingface_hub reads HF_HOME / HF_HUB_OFFLINE once, at import)."""

import json
import os
import re
import subprocess
import sys
import types
import urllib.request

import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors

from ftplan.errors import FtplanError
from ftplan.profiles.hf_config import hub_unreachable as real_probe  # before the fixture stands in for it
from ftplan.profiles.hf_config import spec_from_hub
from ftplan.profiles.models import get_model

CFG = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 1024}


@pytest.fixture(autouse=True)
def _no_network_of_our_own(tmp_path, monkeypatch):
    """ftplan makes no HTTP request of its own, and sees no user cache."""
    def urlopen(*a, **k):
        raise AssertionError("ftplan made its own HTTP request")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    # the stand-in Hub is reachable: the TCP probe that answers at once without a network says so
    monkeypatch.setattr("ftplan.profiles.hf_config.hub_unreachable", lambda timeout=1.5: None)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("FTPLAN_CACHE", str(tmp_path / "ftplan-cache"))


class FakeDownload:
    """``hf_hub_download`` that records its calls: cached → the path; else ``remote`` (a path or an error)."""

    def __init__(self, cached=None, remote=None):
        self.cached, self.remote, self.calls = cached, remote, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        result = self.cached if kwargs.get("local_files_only") else self.remote
        if result is None:
            raise hf_errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache")
        if isinstance(result, BaseException):
            raise result
        return str(result)


def _config(tmp_path, **over):
    p = tmp_path / "snapshot" / "config.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({**CFG, **over}))
    return p


def test_cached_config_is_read_without_a_network_call(tmp_path, monkeypatch):
    fake = FakeDownload(cached=_config(tmp_path))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    m = get_model("acme/tiny")
    assert (m.name, m.hf_id, m.hidden, m.kv_heads) == ("acme/tiny", "acme/tiny", 256, 2)
    assert fake.calls == [(("acme/tiny", "config.json"), {"revision": None, "local_files_only": True})]


def test_hub_call_passes_id_file_and_revision_and_leaves_token_and_endpoint_to_the_library(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example")
    fake = FakeDownload(remote=_config(tmp_path, hidden_size=512, num_attention_heads=8))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    m = spec_from_hub("meta-llama/Some-Gated", revision="v1.0")
    assert m.hidden == 512 and m.hf_id == "meta-llama/Some-Gated"
    # the cache first, then the Hub; never a token, URL, endpoint or headers of ftplan's own
    assert fake.calls == [(("meta-llama/Some-Gated", "config.json"), {"revision": "v1.0", "local_files_only": True}),
                          (("meta-llama/Some-Gated", "config.json"), {"revision": "v1.0"})]
    assert "hf_secret" not in repr(fake.calls) and "mirror.example" not in repr(fake.calls)


def _response(status):
    req = types.SimpleNamespace(url="https://huggingface.co/acme/tiny/resolve/main/config.json", method="HEAD")
    return types.SimpleNamespace(status_code=status, headers={}, request=req, url=req.url, text="", content=b"")


def _http(cls, status):
    return cls(f"{status} Client Error.\n\nsome multi-line detail\nfrom the Hub", response=_response(status))


# the Hub's "no such file" (huggingface_hub >= 1.0; before, EntryNotFoundError itself was the HTTP error)
REMOTE_ENTRY = getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError)
LOGIN = re.escape("log in with `hf auth login` (`huggingface-cli login` on older huggingface_hub) or set HF_TOKEN")

CASES = {
    "gated": (lambda: _http(hf_errors.GatedRepoError, 403), False, rf"'acme/tiny' is gated .*{LOGIN}"),
    "gated-401": (lambda: _http(hf_errors.GatedRepoError, 401), False, rf"'acme/tiny' is gated .*{LOGIN}"),
    "repo-401": (lambda: _http(hf_errors.RepositoryNotFoundError, 401), False,
                 rf"'acme/tiny' was not found on the Hugging Face Hub: check the id .*private or gated, {LOGIN}"),
    "repo-404": (lambda: _http(hf_errors.RepositoryNotFoundError, 404), False,
                 r"'acme/tiny' does not exist on the Hugging Face Hub .*check the id"),
    "no-config": (lambda: _http(REMOTE_ENTRY, 404), False, r"'acme/tiny' has no config.json on the Hugging Face Hub"),
    "revision": (lambda: _http(hf_errors.RevisionNotFoundError, 404), False, r"'acme/tiny' has no revision 'main'"),
    "http-403": (lambda: _http(hf_errors.HfHubHTTPError, 403), False, rf"refused access \(HTTP 403\): {LOGIN}"),
    "http-503": (lambda: _http(hf_errors.HfHubHTTPError, 503), False, r"'acme/tiny': the Hugging Face Hub answered "
                                                                     r"HTTP 503 .*try again later"),
    "offline": (lambda: hf_errors.LocalEntryNotFoundError("outgoing traffic has been disabled"), True,
                r"'acme/tiny' is not in the catalog or the local Hugging Face cache, and Hugging Face offline mode "
                r"is on \(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE\): unset it"),
    "no-network": (lambda: _caused(hf_errors.LocalEntryNotFoundError("An error happened"),
                                   ConnectionError("[Errno -2] Name or service not known")), False,
                   r"'acme/tiny' is not in the catalog or the local Hugging Face cache, and the Hub cannot be reached "
                   r"\(ConnectionError: \[Errno -2\] Name or service not known\): check your connection"),
    "offline-raw": (lambda: hf_errors.OfflineModeIsEnabled("HF_HUB_OFFLINE=1"), True,
                    r"'acme/tiny' is not in the catalog or the local Hugging Face cache, and Hugging Face offline"),
    "timeout-raw": (lambda: TimeoutError("timed out " + "x" * 500), False,
                    r"'acme/tiny' is not in the catalog or the local Hugging Face cache, and the Hub cannot be "
                    r"reached \(TimeoutError: timed out x+\.\.\.\): check your connection"),
    "invalid-id": (lambda: hf_errors.HFValidationError("Repo id must be in the form 'repo_name'\nor 'ns/repo'"), False,
                   r"'acme/tiny' is neither an existing path nor a valid Hugging Face id"),
    "other": (lambda: PermissionError(13, "Permission denied", "/cache/.locks"), False,
              r"'acme/tiny': fetching its config.json from the Hugging Face Hub failed \(PermissionError: .*Permission "
              r"denied"),
}


def _caused(err, cause):
    err.__cause__ = cause
    return err


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_hub_error_is_one_line_naming_the_id_and_what_to_do(case, monkeypatch):
    make, offline, expected = CASES[case]
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeDownload(remote=make()))
    with pytest.raises(FtplanError) as info:
        get_model("acme/tiny")
    msg = str(info.value)
    assert "\n" not in msg and "acme/tiny" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback
    assert re.search(expected, msg), msg


def _run(code, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_OFFLINE", "FTPLAN_CACHE"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), FTPLAN_CACHE=str(tmp_path / "ftplan-cache"), **env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def _hf_cache_layout(hub, repo_id, refs):
    """The layout huggingface_hub writes: blobs/<hash>, snapshots/<commit>/config.json -> blob, refs/<name>."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    for i, (ref, cfg) in enumerate(refs.items()):
        commit = f"{i + 1:040x}"
        blob = repo / "blobs" / f"{i + 7:040x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_text(json.dumps(cfg))
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "config.json").symlink_to(os.path.relpath(blob, snap))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


def test_config_in_the_local_hf_cache_is_read_offline(tmp_path):
    _hf_cache_layout(tmp_path / "hf-home" / "hub", "acme/tiny",
                     {"main": CFG, "v2": {**CFG, "hidden_size": 512, "num_attention_heads": 8}})
    code = ("import json, sys\n"
            "from ftplan.profiles.hf_config import spec_from_hub\n"
            "from ftplan.profiles.models import get_model\n"
            "print(json.dumps([get_model('acme/tiny').hidden, spec_from_hub('acme/tiny', revision='v2').hidden,\n"
            "                  'huggingface_hub' in sys.modules]))")
    out = _run(code, {"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [256, 512, True]


@pytest.mark.parametrize("env", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_and_not_cached_is_one_line_on_the_command_line(tmp_path, env):
    code = "import sys\nfrom ftplan.cli import main\nsys.argv = ['ftplan', '--model', 'acme/not-here', '--gpu', 'rtx4090']\nmain()"
    out = _run(code, {env: "1"}, tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.strip().splitlines() == [
        "error: model 'acme/not-here' is not in the catalog or the local Hugging Face cache, and Hugging Face "
        "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE): unset it to fetch its config.json from the "
        "Hub, or pass a path to its config.json"]


NETWORK_MODULES = ["huggingface_hub", "requests", "httpx", "httpx2", "urllib3", "urllib.request", "http.client"]


def test_fit_path_loads_no_hub_or_http_library(tmp_path):
    """Planning a catalog model or a local config.json imports neither huggingface_hub nor an HTTP stack."""
    cfg = _config(tmp_path)
    for model in ("8b", str(cfg)):
        code = ("import json, sys\nfrom ftplan.cli import app\n"
                f"try:\n    app(['--model', {model!r}, '--gpu', 'rtx4090', '--json'])\n"
                "except SystemExit as e:\n    assert e.code == 0, e.code\n"
                f"print(json.dumps([m for m in {NETWORK_MODULES!r} if m in sys.modules]))")
        out = _run(code, {}, tmp_path)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.splitlines()[-1]) == [], model


def test_an_unreachable_hub_answers_at_once(tmp_path, monkeypatch):
    # was: about 25 s of the library's retries before the same answer
    import time

    from ftplan.profiles import hf_config

    monkeypatch.setattr(hf_config, "hub_unreachable", lambda timeout=1.5: "huggingface.co: Name or service not known")
    fake = FakeDownload(cached=None, remote=AssertionError("the Hub was called"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    t0 = time.perf_counter()
    with pytest.raises(FtplanError, match="the Hub cannot be reached .huggingface.co: Name or service not known."):
        spec_from_hub("org/not-cached")
    assert time.perf_counter() - t0 < 1 and len(fake.calls) == 1  # the cache only


def test_the_probe_of_an_endpoint_that_does_not_resolve(monkeypatch):
    hub_unreachable = real_probe
    for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://no-such-host.invalid")
    why = hub_unreachable(timeout=1.0)
    assert why is not None and why.startswith("no-such-host.invalid")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_unreachable(timeout=1.0) is None  # behind a proxy the endpoint is not probed
