"""Hub ids without a network: a Hugging Face cache laid out as huggingface_hub lays it out (blobs, snapshot
links, refs/main) holds a tiny model; with HF_HUB_OFFLINE=1 the commands find it by its id, and every bad id
is one line, exit 2, nothing written."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from edgeq.errors import EdgeqError
from edgeq.io.hub import HubId, parse_hub_id, with_revision
from tests.conftest import held_out_text

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_hub_cache(hub_cache, repo: str, folder, commit: str = COMMIT, keep=lambda name: True):
    """models--owner--name/{blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/main}."""
    root = hub_cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "snapshots" / commit).mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for f in sorted(folder.iterdir()):
        if not keep(f.name):
            continue
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, root / "snapshots" / commit), root / "snapshots" / commit / f.name)
    return root / "snapshots" / commit


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("hf_home")
    lay_out_hub_cache(home / "hub", "edgeq-test/tiny-llama", tiny_model_dir)
    pickled = lay_out_hub_cache(home / "hub", "edgeq-test/pickled", tiny_model_dir,
                                keep=lambda name: name != "model.safetensors")
    (pickled / "pytorch_model.bin").write_bytes(b"not read: edgeq never opens a pickle")
    return home


def run_offline(hf_home, *args, cwd):
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "edgeq.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_a_cached_hub_id_is_quantized_evaluated_and_exported_offline(hf_home, tmp_path):
    done = run_offline(hf_home, "quantize", "edgeq-test/tiny-llama", "--method", "rtn", "--group-size", "32",
                       "--out", "q", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["base_model"] == "edgeq-test/tiny-llama"
    pinned = run_offline(hf_home, "eval", "edgeq-test/tiny-llama", "--revision", COMMIT, "--text",
                         held_out_text(), "--max-windows", "1", "--seq-len", "64", "--quiet", cwd=tmp_path)
    assert pinned.returncode == 0, pinned.stderr
    assert f"edgeq-test/tiny-llama@{COMMIT}" in pinned.stdout
    exported = run_offline(hf_home, "export", "edgeq-test/tiny-llama@main", "--fp32", "--out", "fp32",
                           cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "fp32" / "model.onnx").is_file()


@pytest.mark.parametrize("args, message", [
    (["quantize", "edgeq-test/not-cached", "--out", "q"],
     "edgeq-test/not-cached is not in the Hugging Face cache (" ),
    (["quantize", "edgeq-test/pickled", "--out", "q"], "has only pickled weights"),
    (["quantize", "edgeq-test/tiny-llama@v9", "--out", "q"], "edgeq-test/tiny-llama@v9 is not in the Hugging Face cache"),
    (["eval", "edgeq-test/tiny-llama@main", "--revision", "v2"], "names revision main and --revision says v2"),
    (["export", "--fp32", "--revision", "main", "--out", "q"], "--revision applies to a Hub id"),
])
def test_bad_hub_ids_are_one_line_and_write_nothing(hf_home, tmp_path, args, message):
    done = run_offline(hf_home, *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr
    assert list(tmp_path.iterdir()) == []


def test_what_reads_as_a_hub_id(tmp_path, monkeypatch):
    assert parse_hub_id("Qwen/Qwen2.5-0.5B-Instruct") == HubId("Qwen/Qwen2.5-0.5B-Instruct")
    assert parse_hub_id("HuggingFaceTB/SmolLM3-3B@v1.0") == HubId("HuggingFaceTB/SmolLM3-3B", "v1.0")
    for not_an_id in ("/abs/path", "./x/y", "a/b/c", "model.gguf", "x/model.gguf", "../x", "one-name", "a/.."):
        assert parse_hub_id(not_an_id) is None, not_an_id
    local = tmp_path / "owner" / "name"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EdgeqError, match="is not one"):  # an existing folder is never taken for a Hub id
        with_revision("owner/name", "main")


def test_hub_errors_become_one_line(monkeypatch):
    """What the Hub answers online (no such repo, gated, no revision), mapped without a network."""
    import huggingface_hub
    try:  # the HTTP client huggingface_hub's errors carry: httpx2 from huggingface_hub 2, httpx before
        import httpx2 as httpx
    except ImportError:
        import httpx
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from edgeq.io import hub
    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/x/y"))
    monkeypatch.setattr(hub, "offline", lambda: False)
    for error, message in ((RepositoryNotFoundError("404", response=response), "no Hub repository x/y"),
                           (GatedRepoError("403", response=response), "x/y is gated: accept its terms"),
                           (RevisionNotFoundError("404", response=response), "x/y has no revision 'v3'")):
        def raising(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", raising)
        with pytest.raises(EdgeqError, match=message):
            hub.fetch(HubId("x/y", "v3"))
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda *a, **k: ["config.json", "pytorch_model.bin"])
    with pytest.raises(EdgeqError, match="only pickled weights"):
        hub.fetch(HubId("x/y"))
