"""A dataset of the Hugging Face Hub by name (org/name), loaded with `datasets.load_dataset`; every failure one line that
says what to do.

Offline (HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1), `datasets` 5 neither looks up the Hub nor reads the files that
`huggingface-cli download` puts in the Hub cache (HF_HUB_CACHE, by default HF_HOME/hub); it only finds data sets it
prepared itself on an earlier online run. So offline the Hub cache's snapshot of the repository is looked for first
(the `refs/main` commit's folder under `datasets--org--name/snapshots/`) and loaded as the local folder it is; then
datasets' own cache."""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator, Optional

from ..errors import DataError

HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def offline() -> bool:
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


@contextmanager
def quiet() -> Iterator[None]:
    """No progress bars or 'using the latest cached version' lines from `datasets` while tuneforge reads."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    level = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if bars_were_on:
            datasets.enable_progress_bars()


def _fetch_hint(name: str) -> str:
    return (f"fetch it once with network access: `hf download {name} --repo-type dataset` (older huggingface_hub: "
            "huggingface-cli download), or run once without HF_HUB_OFFLINE / HF_DATASETS_OFFLINE")


def cached_snapshot(name: str) -> Optional[str]:
    """The Hub cache's folder of the repository's main revision, or None when it was never downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(name, repo_type="dataset", local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None


def _config_problem(name: str, config: Optional[str], error: Exception) -> Optional[str]:
    """The message for a configuration that is missing or unknown, listing the repository's configurations."""
    text = str(error)
    listed = re.search(r"\[([^\]]*)\]", text)
    if "Config name is missing" in text or ("not found" in text and "BuilderConfig" in text):
        choices = listed[1].replace("'", "") if listed else "see the dataset's page"
        if config is None:
            return f"{name}: the dataset has several configurations ({choices}); choose one with data.dataset_config"
        return f"{name}: no configuration {config!r} (data.dataset_config); its configurations are: {choices}"
    return None


def load_hub_dataset(name: str, config: Optional[str]):
    """The DatasetDict of every split of `name` (and `config`); DataError naming the dataset and the fix otherwise."""
    import datasets

    with quiet():
        target = name
        if offline():
            target = cached_snapshot(name) or name
        try:
            loaded = datasets.load_dataset(target, config)
        except DataError:
            raise
        except ValueError as e:
            problem = _config_problem(name, config, e)
            if problem:
                raise DataError([problem]) from None
            raise DataError([f"{name}: the Hub dataset does not load ({_first_line(e)})"]) from None
        except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as e:
            if offline():
                raise DataError([f"{name}: not in the local Hugging Face cache (offline: HF_HUB_OFFLINE or "
                                 f"HF_DATASETS_OFFLINE is set, so nothing is downloaded); {_fetch_hint(name)}. "
                                 "A local file or folder of that name does not exist either"]) from None
            if isinstance(e, datasets.exceptions.DatasetNotFoundError):
                raise DataError([f"{name}: no such dataset on the Hugging Face Hub, or it is private or gated "
                                 "(log in with `huggingface-cli login`); check the name, or give a local file or "
                                 "folder"]) from None
            raise DataError([f"{name}: the Hugging Face Hub could not be reached ({_first_line(e)}); with the "
                             "dataset in the local cache, set HF_HUB_OFFLINE=1"]) from None
        except Exception as e:  # noqa: BLE001 - builders raise many kinds of errors on bad data files
            raise DataError([f"{name}: the Hub dataset does not load ({type(e).__name__}: {_first_line(e)})"]) from None
    if isinstance(loaded, datasets.Dataset):  # a dataset of one unnamed split
        loaded = datasets.DatasetDict(train=loaded)
    return loaded


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
