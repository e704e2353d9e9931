"""The names of what can be wrong with a sample: one vocabulary for the reader, the encoder, training's
counts and `vlft check-data`'s report, so that a kind train counts is the kind check-data lists."""
from __future__ import annotations

# The sample is dropped (data.on_bad_sample='skip') or stops the run ('error').
MALFORMED = "malformed record"
MISSING_IMAGE = "missing image"
UNREADABLE_IMAGE = "unreadable image"
IMAGE_COUNT = "image count mismatch"
NO_ASSISTANT = "no assistant turn"
EMPTY_ANSWER = "empty answer"
BAD_SAMPLE = "bad sample"
TOO_LONG = "too long"
NO_SAMPLES = "no usable samples"
# Only preference pairs (chosen/rejected) have these.
NO_REJECTED = "no rejected answer"
IDENTICAL_ANSWERS = "identical chosen and rejected"

# The sample is kept, as read or changed the way LLaVA/InternVL/XTuner readers change it, with a warning.
LEADING_ASSISTANT = "leading assistant turn dropped"
USER_TURNS_MERGED = "user turns merged"
IMAGE_OUTSIDE_ROOT = "image outside image_root"
KEPT_WITH_WARNING = (LEADING_ASSISTANT, USER_TURNS_MERGED, IMAGE_OUTSIDE_ROOT)
