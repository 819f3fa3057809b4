"""The training objective's keys of `train:`: sft, or a preference / reward objective and its settings.

They live in `train:` (`train.objective: dpo`, `train.beta: 0.1`) like every other training key;
this file only keeps config.py short. `TrainSection` inherits them, so they come first in a
written config.yaml.

Run as:
    cfg = load_config("examples/dpo.yaml")
    print(cfg.train.objective, cfg.train.beta)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Objective = Literal["sft", "dpo", "orpo", "simpo", "kto", "grpo"]
# The objectives that read preference pairs (prompt, chosen, rejected); kto reads labelled
# completions, grpo prompts.
PAIRED = ("dpo", "orpo", "simpo")
DPO_LOSSES = ("sigmoid", "hinge", "ipo")
# Unset settings take these per objective (TRL's defaults, where TRL has one).
BETA = {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0, "kto": 0.1, "grpo": 0.0}


class ObjectiveFields(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    objective: Objective = Field(
        "sft",
        description="sft: supervised fine-tuning. dpo, orpo, simpo: preference pairs (prompt, chosen, "
        "rejected). kto: completions labelled good or bad. grpo: prompts, answers sampled and scored "
        "by train.rewards.",
    )
    beta: float | None = Field(
        None,
        ge=0.0,
        description="Strength of the preference (dpo, kto: KL to the reference; orpo: odds-ratio weight; "
        "simpo: reward scale; grpo: KL penalty). Default per objective: dpo/orpo/kto 0.1, simpo 2.0, grpo 0.",
    )
    loss_type: Literal["sigmoid", "hinge", "ipo"] = Field(
        "sigmoid", description="dpo only: sigmoid (DPO), hinge (SLiC) or ipo (IPO)."
    )
    simpo_gamma: float = Field(0.5, ge=0.0, description="simpo only: the target reward margin.")
    sft_weight: float = Field(
        0.0,
        ge=0.0,
        description="dpo, simpo: add this times the SFT loss on the chosen answers (RPO; TRL's dpo "
        "loss_type [sigmoid, sft], CPO's cpo_alpha). Keeps the chosen answers likely: pure DPO on "
        "near-identical pairs can lower both.",
    )
    num_generations: int = Field(
        4, ge=2, description="grpo: answers sampled per prompt (their rewards are compared in the group)."
    )
    max_completion_length: int = Field(64, ge=1, description="grpo: tokens per sampled answer.")
    temperature: float = Field(1.0, gt=0.0, description="grpo: sampling temperature.")
    rewards: list[str] = Field(
        default_factory=list,
        description="grpo: reward functions, 'file.py:function' or a built-in: exact_match[:column], "
        "contains[:column], regex:PATTERN, length:N. Summed.",
    )

    @field_validator("rewards")
    @classmethod
    def _reward_names(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if not isinstance(r, str) or not r.strip()]
        if bad:
            raise ValueError("each reward is 'file.py:function' or a built-in name, e.g. exact_match")
        return v

    @model_validator(mode="after")
    def _grpo_needs_rewards(self):
        if self.objective == "grpo" and not self.rewards:
            raise ValueError(
                "objective grpo needs train.rewards, e.g. --set 'train.rewards=[exact_match]' or "
                "[examples/rewards.py:short_answer]"
            )
        return self

    @property
    def strength(self) -> float:
        """beta, or the objective's default."""
        return self.beta if self.beta is not None else BETA.get(self.objective, 0.1)
