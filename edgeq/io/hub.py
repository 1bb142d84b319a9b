"""Models named by their Hugging Face Hub id (`owner/name`, `owner/name@revision`), fetched into the Hub's own
cache with huggingface_hub, as transformers does: HF_HOME, HF_HUB_OFFLINE and HF_TOKEN mean what they mean
there, and a model fetched once is found again offline.

Only what edgeq reads is fetched: the config, tokenizer and generation files and the safetensors weights
(with their index). Pickled weights (`pytorch_model.bin`, `*.pt`) are never fetched and never opened: a
repository that has only those is refused before anything is downloaded.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeqError

# the files a model folder needs, as huggingface_hub's fnmatch patterns: no pickles, no remote code
FETCHED = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
           "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
           "chat_template.jinja", "chat_template.json", "preprocessor_config.json"]
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB_ID = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^\s@]+))?$")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # weights edgeq never opens: a pickle is code


@dataclass(frozen=True)
class HubId:
    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo if self.revision is None else f"{self.repo}@{self.revision}"


def parse_hub_id(text: str, revision: str | None = None) -> HubId | None:
    """`owner/name` or `owner/name@revision` (a separate `revision` must not contradict the one in the id);
    None when `text` does not read as a Hub id."""
    match = _HUB_ID.match(text)
    if match is None or text.endswith((".gguf", ".json", ".safetensors")) or ".." in text:
        return None
    inline = match.group("revision")
    if inline and revision and inline != revision:
        raise EdgeqError(f"{text} names revision {inline} and --revision says {revision}; give one")
    return HubId(match.group("repo"), inline or revision)


def with_revision(model: str | None, revision: str | None) -> str | None:
    """The MODEL argument with `--revision` folded in (`owner/name@revision`), refused for anything but a
    Hub id: the one form every command and the Python API take."""
    if revision is None:
        return model
    hub_id = parse_hub_id(model, revision) if model is not None and not Path(model).exists() else None
    if hub_id is None:
        raise EdgeqError(f"--revision applies to a Hub id (owner/name); {model or 'the bundled model'} is not one")
    return str(hub_id)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def fetch(hub_id: HubId) -> Path:
    """The local snapshot folder of `hub_id`, downloaded (only FETCHED files) unless already cached. Every
    failure is one EdgeqError naming the id and what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    try:
        if not offline():
            _refuse_pickle_only(hub_id)
        folder = Path(snapshot_download(hub_id.repo, revision=hub_id.revision, allow_patterns=FETCHED))
    except GatedRepoError:
        raise EdgeqError(f"{hub_id.repo} is gated: accept its terms on https://huggingface.co/{hub_id.repo} "
                         "and set HF_TOKEN (or run `hf auth login`)") from None
    except RepositoryNotFoundError:
        raise EdgeqError(f"no Hub repository {hub_id.repo} (check the id; a private one needs HF_TOKEN), "
                         "and no local path of that name") from None
    except RevisionNotFoundError:
        raise EdgeqError(f"{hub_id.repo} has no revision {hub_id.revision!r}") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hub cannot be reached"
        raise EdgeqError(f"{hub_id} is not in the Hugging Face cache ({cache_dir()}) and {why}: fetch it once "
                         "online, or give a local folder") from None
    except (HfHubHTTPError, OSError) as err:
        raise EdgeqError(f"could not fetch {hub_id} from the Hub: {str(err).splitlines()[0]}") from None
    _check_snapshot(folder, hub_id)
    return folder


def cache_dir() -> str:
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def _refuse_pickle_only(hub_id: HubId) -> None:
    """One listing before any download: a repository whose weights are all pickles is refused here."""
    from huggingface_hub import HfApi
    files = HfApi().list_repo_files(hub_id.repo, revision=hub_id.revision)
    _check_weights(files, hub_id)


def _check_snapshot(folder: Path, hub_id: HubId) -> None:
    if not (folder / "config.json").is_file():
        raise EdgeqError(f"{hub_id} has no config.json: not a Hugging Face model repository")
    _check_weights([p.name for p in folder.iterdir()], hub_id)


def _check_weights(files, hub_id: HubId) -> None:
    if any(name.endswith(".safetensors") for name in files):
        return
    if any(name.endswith(PICKLE_SUFFIXES) for name in files):
        raise EdgeqError(f"{hub_id} has only pickled weights (pytorch_model.bin); edgeq never loads pickles: "
                         "use a revision or a copy of the model with safetensors weights")
    raise EdgeqError(f"{hub_id} has no safetensors weights (a GGUF repository: download its .gguf file and "
                     "give its path)")
