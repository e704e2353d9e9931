"""The preference losses on the summed answer log-probs of a pair batch: sigmoid DPO, IPO and InternVL's MPO.

Definitions (each test in tests/engine/test_preference_loss.py checks one against TRL's `DPOTrainer` or a reference
written from the paper):

- DPO (Rafailov et al. 2023, arXiv 2305.18290): with Δ = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) −
  log π_ref(y_r)), the loss is −log σ(βΔ). Label smoothing ε is the conservative DPO of Mitchell's note on noisy
  preferences (2023): −(1−ε) log σ(βΔ) − ε log σ(−βΔ); ε = 0 is TRL's `loss_type="sigmoid"`.
- IPO (Azar et al. 2023, arXiv 2310.12036, eq. 17): (Δ̄ − 1/(2β))², Δ̄ the same difference of log-ratios with each
  side's log-prob divided by its answer's token count, as TRL's `loss_type="ipo"` does (length normalised, which the
  IPO authors confirmed is what their figures used).
- MPO (Wang et al. 2024, arXiv 2411.10442, §3.2; InternVL's `internvl_chat/shell/internvl2.5/mpo` scripts:
  `loss_type sigmoid,bco_pair`, weights 0.8 / 0.2 and `rpo_alpha 1`): w_p·L_p + w_q·L_q + w_g·L_g. L_p is the DPO
  loss above; L_q the BCO quality loss −log σ(βr_c − δ) − log σ(−(βr_r − δ)) with r = log π − log π_ref of each
  side and δ the running mean of the rewards seen so far (each micro batch adds the mean of its chosen and rejected
  rewards, then δ is read, as TRL's `bco_pair` with its `RunningMoments` did when InternVL used it); L_g the
  language-model loss of the chosen answers (mean negative log-prob per chosen token of the micro batch).

Rewards are β·(log π − log π_ref) of each side, detached, as TRL logs them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PREFERENCE_OBJECTIVES = ("dpo", "ipo", "mpo")


@dataclass(frozen=True)
class PreferenceSettings:
    objective: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    preference_weight: float = 0.8   # MPO's w_p
    quality_weight: float = 0.2      # MPO's w_q
    generation_weight: float = 1.0   # MPO's w_g

    def __post_init__(self):
        if self.objective not in PREFERENCE_OBJECTIVES:
            raise ValueError(f"objective {self.objective!r}: not one of {', '.join(PREFERENCE_OBJECTIVES)}")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor,
                   ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of each row's label tokens, how many there are): `labels` sit under the tokens they name
    (as for SFT), so position t's logits predict labels[t + 1]. Computed in fp32 without a [rows, tokens, vocab]
    log-softmax copy: the label's logit minus the row's log-sum-exp."""
    logits = logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != ignore_index
    picked = torch.gather(logits, 2, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1).float()
    per_token = picked - torch.logsumexp(logits.float(), dim=-1)
    return (per_token * mask).sum(-1), mask.sum(-1)


@dataclass
class PreferenceLossResult:
    loss: torch.Tensor                # to backpropagate
    terms: dict[str, torch.Tensor]    # each term's value (detached), before its weight
    chosen_rewards: torch.Tensor      # [pairs], detached
    rejected_rewards: torch.Tensor

    def metrics(self) -> dict[str, float]:
        margins = self.chosen_rewards - self.rejected_rewards
        return {**{name: float(value) for name, value in self.terms.items()},
                "rewards/chosen": float(self.chosen_rewards.mean()),
                "rewards/rejected": float(self.rejected_rewards.mean()),
                "rewards/accuracy": float((margins > 0).float().mean()),
                "rewards/margin": float(margins.mean())}


class PreferenceLoss:
    """The loss of one micro batch of pairs (see the module doc). MPO keeps a state, the running reward mean δ:
    `state_dict`/`load_state_dict` carry it through a checkpoint so a resume continues it exactly.
    `mean_across_ranks` turns a micro batch's mean reward into the mean over every rank's micro batch, so all ranks
    keep the same δ (identity in one process)."""

    def __init__(self, settings: PreferenceSettings,
                 mean_across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.settings = settings
        self.mean_across_ranks = mean_across_ranks or (lambda value: value)
        self.reward_mean = torch.zeros((), dtype=torch.float64)
        self.reward_batches = torch.zeros((), dtype=torch.int64)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"reward_mean": self.reward_mean.clone(), "reward_batches": self.reward_batches.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.reward_mean = state["reward_mean"].detach().to(torch.float64).clone()
        self.reward_batches = state["reward_batches"].detach().to(torch.int64).clone()

    def __call__(self, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                 reference_rejected: torch.Tensor, chosen_tokens: torch.Tensor,
                 rejected_tokens: torch.Tensor) -> PreferenceLossResult:
        """Each argument is [pairs]: summed answer log-probs under the policy and the reference, and each answer's
        token count."""
        s = self.settings
        chosen_ratio = policy_chosen - reference_chosen
        rejected_ratio = policy_rejected - reference_rejected
        terms: dict[str, torch.Tensor] = {}
        if s.objective == "ipo":
            delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
            loss = terms["loss/ipo"] = ((delta - 1 / (2 * s.beta)) ** 2).mean()
        else:
            delta = s.beta * (chosen_ratio - rejected_ratio)
            terms["loss/sigmoid"] = (-(1 - s.label_smoothing) * F.logsigmoid(delta)
                                     - s.label_smoothing * F.logsigmoid(-delta)).mean()
            loss = terms["loss/sigmoid"]
        if s.objective == "mpo":
            shift = self._running_reward_mean(s.beta * torch.cat([chosen_ratio, rejected_ratio]).detach().mean())
            shift = shift.to(chosen_ratio)
            terms["loss/bco"] = (-F.logsigmoid(s.beta * chosen_ratio - shift)
                                 - F.logsigmoid(-(s.beta * rejected_ratio - shift))).mean()
            terms["loss/sft"] = -policy_chosen.sum() / chosen_tokens.sum().clamp(min=1)
            loss = (s.preference_weight * terms["loss/sigmoid"] + s.quality_weight * terms["loss/bco"]
                    + s.generation_weight * terms["loss/sft"])
        return PreferenceLossResult(loss, {name: value.detach() for name, value in terms.items()},
                                    (s.beta * chosen_ratio).detach(), (s.beta * rejected_ratio).detach())

    def _running_reward_mean(self, batch_mean: torch.Tensor) -> torch.Tensor:
        """δ after this micro batch: the mean of every micro batch's mean reward so far, this one included."""
        batch_mean = self.mean_across_ranks(batch_mean).detach().to("cpu", torch.float64)
        self.reward_batches = self.reward_batches + 1
        self.reward_mean = self.reward_mean + (batch_mean - self.reward_mean) / self.reward_batches
        return self.reward_mean
