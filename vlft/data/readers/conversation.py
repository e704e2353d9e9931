"""One conversation row (LLaVA or ShareGPT keys) into its turns and image paths in placeholder order.

Role names, OpenAI-style content blocks and the image keys ('image', 'images', image blocks) of every
supported format are read here; a row that cannot be read raises `RowError`.
"""

from __future__ import annotations

from collections.abc import Mapping

from vlft.data.record import IMAGE_PLACEHOLDER, Turn

# Role names seen in the wild -> ours. Looked up lower-cased ("Human", "GPT" occur in LLaVA-style data).
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_IMAGE_BLOCK_TYPES = ("image", "image_url")


class RowError(Exception):
    """A bad row; read_samples prefixes the file and sample id."""


def parse_row(row: Mapping, turns_key: str) -> tuple[tuple[Turn, ...], list[str]]:
    """(turns, image paths in placeholder order) of one row, or RowError naming what is wrong."""
    raw_turns = row.get(turns_key)
    if raw_turns is None:
        other = "messages" if turns_key == "conversations" else "conversations"
        if row.get(other) is not None:  # the other format's key: accept it (a mixed file)
            turns_key, raw_turns = other, row[other]
        else:
            raise RowError(f"missing '{turns_key}'")
    if not isinstance(raw_turns, list):
        raise RowError(f"'{turns_key}' is a {type(raw_turns).__name__}, expected a list of turns")
    if not raw_turns:
        raise RowError(f"empty '{turns_key}'")
    role_key, text_key = ("role", "content") if turns_key == "messages" else ("from", "value")

    given = _given_images(row)
    turns: list[Turn] = []
    slots: list[str | None] = []  # one per placeholder: a path from a content block, or None = next given image
    for i, turn in enumerate(raw_turns):
        if not isinstance(turn, dict):
            raise RowError(f"{turns_key}[{i}] is a {type(turn).__name__}, expected {{'{role_key}', '{text_key}'}}")
        raw_role = turn.get(role_key)
        if raw_role is None:
            # LLaMA-Factory lets either tag pair name the fields; a datasets-unified row has both keys, one null.
            alt_role, alt_text = ("from", "value") if role_key == "role" else ("role", "content")
            if turn.get(alt_role) is not None:
                raw_role, text_key_i = turn[alt_role], alt_text
            else:
                raise RowError(f"{turns_key}[{i}] has no '{role_key}'")
        else:
            text_key_i = text_key
        role = _ROLES.get(raw_role.lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise RowError(f"{turns_key}[{i}] has unknown role {raw_role!r}: use human/user, gpt/assistant or system")
        text = _turn_text(turn.get(text_key_i), f"{turns_key}[{i}]", text_key_i, slots)
        if role != "user" and IMAGE_PLACEHOLDER in text:
            raise RowError(f"{turns_key}[{i}] ({role}) contains '{IMAGE_PLACEHOLDER}': images go in user turns")
        turns.append(Turn(role, text))

    if not slots and given:
        # LLaVA / InternVL put the images before the first user message when the text has no placeholder.
        first_user = next((i for i, t in enumerate(turns) if t.role == "user"), None)
        if first_user is None:
            raise RowError(f"{len(given)} image(s) but no user turn to put them in")
        turns[first_user] = Turn("user", f"{IMAGE_PLACEHOLDER}\n" * len(given) + turns[first_user].text)
        return tuple(turns), given

    wanted = slots.count(None)
    if wanted != len(given):
        placed = len(slots) - wanted
        detail = f" (plus {placed} image block(s) with their own path)" if placed else ""
        key = "images" if row.get("images") is not None else "image"
        raise RowError(f"{wanted} '{IMAGE_PLACEHOLDER}' placeholder(s){detail} but {len(given)} path(s) in '{key}'")
    pending = iter(given)
    return tuple(turns), [p if p is not None else next(pending) for p in slots]


def _turn_text(content, where: str, key: str, slots: list) -> str:
    """A turn's text; OpenAI-style content blocks become text with one placeholder per image block."""
    if isinstance(content, str):
        slots.extend([None] * content.count(IMAGE_PLACEHOLDER))
        return content
    if content is None:
        raise RowError(f"{where} has no '{key}'")
    if not isinstance(content, list):
        raise RowError(f"{where} '{key}' is a {type(content).__name__}, expected text or a list of content blocks")
    parts = []
    for j, block in enumerate(content):
        if isinstance(block, str):
            block = {"type": "text", "text": block}
        if not isinstance(block, dict):
            raise RowError(f"{where} '{key}'[{j}] is a {type(block).__name__}, expected a content block")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise RowError(f"{where} '{key}'[{j}] is a text block without a string 'text'")
            slots.extend([None] * text.count(IMAGE_PLACEHOLDER))
            parts.append(text)
        elif kind in _IMAGE_BLOCK_TYPES:
            slots.append(_block_image_path(block, f"{where} '{key}'[{j}]"))
            parts.append(IMAGE_PLACEHOLDER)
        else:
            raise RowError(f"{where} '{key}'[{j}] has unsupported block type {kind!r}: use 'text' or 'image'")
    return "\n".join(parts)


def _block_image_path(block: Mapping, where: str) -> str | None:
    """The path an image block carries ({"image": p}, {"path": p}, {"image_url": {"url": p}}), or None."""
    for key in ("image", "path", "url", "image_url"):
        value = block.get(key)
        if isinstance(value, dict):
            value = value.get("url")
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise RowError(f"{where} '{key}' is {type(value).__name__}, expected an image path")
        if value.startswith("data:"):
            raise RowError(f"{where} is an inline data: URL; vlft reads image files: save it and give its path")
        return value
    return None


def _given_images(row: Mapping) -> list[str]:
    """The row's 'image' / 'images' paths (a string, a list, or HF Image dicts with a path)."""
    key = "image" if row.get("image") is not None else "images"
    value = row.get(key)
    if row.get("videos") or row.get("video"):
        raise RowError("has videos, which vlft does not read")
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    paths = []
    for n, item in enumerate(items):
        if isinstance(item, dict) and ("bytes" in item or "path" in item):  # a datasets Image feature
            if item.get("bytes") is not None:
                raise RowError(f"'{key}'[{n}] is image bytes embedded in the dataset; vlft reads image files: "
                                "write the images out and store their paths")
            item = item.get("path")
        if not isinstance(item, str) or not item:
            raise RowError(f"'{key}'[{n}] is {item!r}, expected an image path")
        paths.append(item)
    return paths
