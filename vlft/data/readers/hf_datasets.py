"""A table (JSON, parquet, or a save_to_disk folder) read through Hugging Face `datasets` into rows and columns."""

from __future__ import annotations

import contextlib
import tempfile

from vlft.data.readers.source import DataFormatError


def load_rows(path: str, kind: str) -> tuple[list, list[str]]:
    """Every row of `path` as Python objects, and the column names; `kind` is "disk", "json" or "parquet"."""
    import datasets  # heavy; only when data is read

    with tempfile.TemporaryDirectory(prefix="vlft-datasets-") as cache_dir, _quiet_datasets(datasets):
        # A throwaway cache_dir: load_dataset writes arrow files there (never into ~/.cache), and
        # keep_in_memory holds the table after the directory is gone.
        try:
            if kind == "disk":
                ds = datasets.load_from_disk(path, keep_in_memory=True)
                if isinstance(ds, datasets.DatasetDict):
                    ds = _one_split(ds, path)
            else:
                ds = datasets.load_dataset(kind, data_files=path, split="train", cache_dir=cache_dir,
                                           keep_in_memory=True)
            # to_list decodes Json columns but not Image columns: those stay {"bytes", "path"} dicts.
            return ds.to_list(), list(ds.column_names)
        except DataFormatError:
            raise
        except Exception as e:  # datasets raises many types (DatasetGenerationError, ArrowInvalid, StopIteration...)
            what = "a dataset saved with save_to_disk" if kind == "disk" else f"a {kind} file"
            cause = e.__cause__ or e
            raise DataFormatError(f"{path}: cannot be read as {what} "
                                  f"({type(cause).__name__}: {_one_line(cause)})") from None


def _one_split(ds, path: str):
    if "train" in ds:
        return ds["train"]
    if len(ds) == 1:
        return next(iter(ds.values()))
    raise DataFormatError(f"{path}: a DatasetDict with splits {sorted(ds)} and no 'train': "
                          "save the split to train on, or name it 'train'")


@contextlib.contextmanager
def _quiet_datasets(datasets):
    """No progress bars or 'Failed to load JSON' log lines while we read (we report our own errors)."""
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.utils.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_were_off:
            datasets.utils.enable_progress_bars()


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__
