"""Where a dataset's images resolve (its image root) and what the dataset is called by default (its stem)."""

from __future__ import annotations

import os


def image_root(given: str | None, path: str) -> str:
    """The folder relative image paths resolve in: the one given, else the folder holding `path`."""
    if given:
        return os.path.abspath(os.path.expanduser(given))
    # The folder holding the annotation file, or holding the save_to_disk directory.
    return os.path.dirname(os.path.abspath(path))


def is_absolute(image: str) -> bool:
    return image.startswith("~") or os.path.isabs(image)


def is_inside(path: str, root: str) -> bool:
    """Lexically (symlinks are the user's business): is `path` under the folder `root`?"""
    return os.path.commonpath([path, root]) == os.path.normpath(root)


def resolve(image: str, root: str) -> str:
    if image.startswith("~"):
        image = os.path.expanduser(image)
    if os.path.isabs(image):
        return image
    return os.path.normpath(os.path.join(root, image))


def stem(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    return os.path.splitext(base)[0] if os.path.isfile(path) else base
