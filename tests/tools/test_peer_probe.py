"""peer_probe.py counts what a peer's micro-batch holds: packed segments and real tokens, from each mask form
the peers hand their model (LLaMA-Factory's numbered 2D mask, its block-diagonal 4D mask on sdpa)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))
from peer_probe import _real_tokens, _samples_in  # noqa: E402

#: two packed rows: segments 1, 2, 3 then 2 pad tokens; one segment of 7 then 1 pad token
NUMBERED = torch.tensor([[1, 1, 2, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0]])


def _block_causal(numbered: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] booleans: a token sees the earlier tokens of its own segment; padding sees nothing."""
    same = numbered[:, None, :, None] == numbered[:, None, None, :]
    causal = torch.tril(torch.ones(numbered.shape[1], numbered.shape[1], dtype=torch.bool))
    return same & causal & (numbered != 0)[:, None, None, :]


@pytest.mark.parametrize("form", ["numbered 2D", "4D float (0 attends)", "4D bool"])
def test_packed_segments_and_real_tokens_are_counted_from_every_mask_form(form):
    allowed = _block_causal(NUMBERED)
    mask = {"numbered 2D": NUMBERED,
            "4D float (0 attends)": torch.where(allowed, 0.0, torch.finfo(torch.float32).min),
            "4D bool": allowed}[form]
    inputs = {"input_ids": torch.zeros(NUMBERED.shape, dtype=torch.long), "attention_mask": mask}
    assert _samples_in(inputs) == 4
    assert _real_tokens(inputs) == 13


def test_padded_rows_count_as_one_sample_each():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    inputs = {"input_ids": torch.zeros(mask.shape, dtype=torch.long), "attention_mask": mask}
    assert (_samples_in(inputs), _real_tokens(inputs)) == (2, 7)
