"""The two ways to run the course: ``full`` (real GPT-2, real data) and ``smoke`` (tiny, fast).

``COURSE_PROFILE`` selects one; pytest's conftest sets ``smoke``. Every notebook prints the
profile it runs in, so nobody mistakes a smoke number for what GPT-2 achieves. How big each
notebook's run is in a profile, on a CPU or a GPU, is that notebook's plan: ``course_lib.plans``.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch

from .config import SMOKE_MODEL


STRATEGIES = ("lora", "last_block", "last_layer", "all")  # what trains: see course_lib.strategies

# Learning rates on pretrained GPT-2 (the full profile), one per strategy; AdamW, weight decay 0.1 (Raschka ch. 6;
# also every one of Hu et al.'s roberta_base_*.sh at microsoft/LoRA c4593f0: --weight_decay 0.1).
# LoRA is set by the product (alpha / rank) · lr, which its first steps follow for a given start of A.
# 8e-4 is the product of Hu et al.'s released RoBERTa-base scripts at lr 4e-4 (microsoft/LoRA c4593f0,
# examples/NLU/roberta_base_*.sh: r 8, alpha 16; their 5e-4 runs give 1e-3; the paper's Table 9 lists alpha 8 for
# the same runs, a product of 4e-4 to 5e-4, and alpha 16 at r 8 for RoBERTa-large, 4e-4 to 8e-4), whose A starts as ours
# (Kaiming-uniform over fan-in = in_features). Raschka's appendix E (LLMs-from-scratch,
# appendix-E/01_main-chapter-code/appendix-E.ipynb at commit 28c65cd) also uses 8e-4 (alpha / rank = 16 / 16
# at lr 8e-4; the printed book alpha = 16 alone at 5e-5), but stores A as in x rank, so its A starts
# sqrt(in / rank) times larger (6.9x at r = 16) and its steps are that much larger at the same product. Last-block fine-tuning follows his ch. 6
# (ch06/01_main-chapter-code/ch06.ipynb at 28c65cd: lr 5e-5, weight decay 0.1); full fine-tuning takes the same rate,
# as row 5 (all layers) of his ch. 6 bonus table (ch06/02_bonus_additional-experiments/additional_experiments.py). The head alone (a linear probe)
# has no rate in ch. 6. All four were measured on a pretrained encoder reachable offline
# (benchmarks/pretrained_proxy.py, all-MiniLM-L6-v2; the table in docs/benchmarks.md).
LORA_SCALED_LEARNING_RATE = 8e-4
LEARNING_RATES = {"last_block": 5e-5, "last_layer": 1e-3, "all": 5e-5}


@dataclass(frozen=True, kw_only=True)
class Profile:
    """What every notebook shares in a profile: the model, the data subset, the batch size and the
    arithmetic. What one notebook runs with them (epochs, sizes, experiments) is its plan: course_lib.plans."""

    name: str
    model_size: str
    batch_size: int
    max_examples: int | None  # cap on examples per split; None = all
    learning_rate: float  # full fine-tuning's; each strategy's own: learning_rate_for(profile, strategy, ...)
    description: str
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where the hardware has bf16 units); smoke stays in fp32 (no bf16 rounding)


PROFILES: dict[str, Profile] = {
    "full": Profile(name="full", model_size="gpt2-small (124M)", batch_size=8, max_examples=None,
                    learning_rate=LEARNING_RATES["all"], description="pretrained GPT-2 weights and the full data sets",
                    precision="auto"),
    "smoke": Profile(name="smoke", model_size=SMOKE_MODEL, batch_size=8, max_examples=64, learning_rate=1e-3,
                     description="a tiny randomly initialised GPT-2-shaped model and a data subset, for fast checks; "
                                 "its numbers are NOT what GPT-2 achieves"),
}


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name``, or the one ``COURSE_PROFILE`` names (default ``full``)."""
    name = name or os.environ.get("COURSE_PROFILE") or "full"
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}: set COURSE_PROFILE to one of {list(PROFILES)}.")
    return PROFILES[name]


def learning_rate_for(profile: Profile, strategy: str, rank: int = 4, alpha: float = 4) -> float:
    """The learning rate ``strategy`` trains at in ``profile``.

    Full profile: for ``lora`` the rate whose product with the scaling alpha / rank is
    ``LORA_SCALED_LEARNING_RATE`` (8e-4 at alpha = rank, 4e-4 at alpha = 2·rank), otherwise
    ``LEARNING_RATES[strategy]``. Smoke profile: its one rate for every strategy (a tiny random model
    that has nothing pretrained to preserve). Why these rates (sources, and the pretrained-proxy
    measurement): the comment above ``LORA_SCALED_LEARNING_RATE`` and docs/benchmarks.md, "What the
    learning rates rest on".
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown trainable_layers {strategy!r}; choose one of {list(STRATEGIES)}.")
    if profile.name == "smoke":
        return profile.learning_rate
    if strategy == "lora":
        if not rank > 0 or not alpha > 0:
            raise ValueError(f"rank and alpha must be positive numbers, got rank={rank!r}, alpha={alpha!r}.")
        return LORA_SCALED_LEARNING_RATE / (alpha / rank)
    return LEARNING_RATES[strategy]


def pick_device(preference: str | None = None, profile: Profile | None = None) -> torch.device:
    """``preference`` if given; CPU in the smoke profile (reproducible outputs); else CUDA, MPS, CPU."""
    if preference:
        return torch.device(preference)
    if profile is not None and profile.name == "smoke":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_seed(seed: int) -> None:
    """Seed Python's and torch's random generators so that runs repeat."""
    random.seed(seed)
    torch.manual_seed(seed)


def show_setup(profile: Profile, model_size: str | None = None) -> None:
    """Print the banner every notebook starts with: profile, model, and what that means."""
    print(f"Profile: {profile.name} ({profile.description})")
    print(f"Model:   {model_size or profile.model_size}")
