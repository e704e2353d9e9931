"""Read a user's dataset (LLaVA, ShareGPT/messages, InternVL meta; JSON, JSONL, parquet, save_to_disk) into Samples,
or preference data (LLaMA-Factory's, InternVL MPO's, messages + chosen/rejected) into PreferencePairs.

The public names of the readers in `vlft.data.readers` (one module per format; see `samples` for what
reading does with bad rows). The underscored names are the helpers `vlft.data.rows` replays repeats with.
"""

from vlft.data.readers.conversation import parse_row as _parse_row
from vlft.data.readers.internvl_meta import maybe_meta as _maybe_meta
from vlft.data.readers.paths import stem as _stem
from vlft.data.readers.repeat import repeat as _repeat
from vlft.data.readers.pairs import read_pairs, read_preference_pairs
from vlft.data.readers.samples import read_all, read_samples
from vlft.data.readers.sniff import FORMATS, PAIR_FORMATS, detect_format, is_pair_format
from vlft.data.readers.source import DataFormatError, DatasetSource, ReadReport, ReadWarning
from vlft.data.readers.text import read_text
from vlft.data.readers.turns import normalize_turns

__all__ = ["FORMATS", "PAIR_FORMATS", "DataFormatError", "DatasetSource", "ReadReport", "ReadWarning",
           "detect_format", "is_pair_format", "normalize_turns", "read_all",
           "read_pairs", "read_preference_pairs", "read_samples", "read_text",
           "_maybe_meta", "_parse_row", "_repeat", "_stem"]
