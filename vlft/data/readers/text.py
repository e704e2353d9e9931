"""A UTF-8 text file's contents, or one line naming the file and the first byte that is not UTF-8."""

from __future__ import annotations

import codecs

from vlft.data.readers.source import DataFormatError


def read_text(path: str) -> str:
    """A UTF-8 text file's contents (a leading byte-order mark dropped), or a DataFormatError naming the
    file, the first byte that is not UTF-8 and its line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataFormatError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            found = "it is UTF-16 (it starts with a UTF-16 byte-order mark)"
        else:
            line = data.count(b"\n", 0, e.start) + 1
            found = f"byte 0x{data[e.start]:02x} at offset {e.start} (line {line}) is not UTF-8"
        raise DataFormatError(f"{path}: not UTF-8 text: {found}; save it as UTF-8 "
                              "(e.g. iconv -f ITS-ENCODING -t UTF-8 FILE > NEW-FILE)") from None
