"""The two ways to run the course: ``full`` (real GPT-2, real data) and ``smoke`` (tiny, fast).

``COURSE_PROFILE`` selects one; pytest's conftest sets ``smoke``. Every notebook prints the
profile it runs in, so nobody mistakes a smoke number for what GPT-2 achieves.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch

from .config import SMOKE_MODEL


@dataclass(frozen=True)
class Profile:
    """Defaults the notebooks' ``parameters`` cells start from."""

    name: str
    model_size: str
    num_epochs: int
    batch_size: int
    max_examples: int | None  # cap on examples per split; None = all
    learning_rate: float
    description: str
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where measured faster); smoke stays exact
    eval_freq: int = 50  # training steps between loss measurements


PROFILES: dict[str, Profile] = {
    "full": Profile("full", "gpt2-small (124M)", num_epochs=5, batch_size=8, max_examples=None,
                    learning_rate=5e-5, description="pretrained GPT-2 weights and the full data sets",
                    precision="auto"),
    "smoke": Profile("smoke", SMOKE_MODEL, num_epochs=1, batch_size=8, max_examples=64,
                     learning_rate=1e-3, description="a tiny randomly initialised GPT-2-shaped model and a data "
                                 "subset, for fast checks; its numbers are NOT what GPT-2 achieves", eval_freq=2),
}


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name``, or the one ``COURSE_PROFILE`` names (default ``full``)."""
    name = name or os.environ.get("COURSE_PROFILE") or "full"
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}: set COURSE_PROFILE to one of {list(PROFILES)}.")
    return PROFILES[name]


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


def cpu_budget(profile: Profile, device: str | torch.device) -> bool:
    """True when the full profile runs on a CPU: notebooks then choose defaults that finish in minutes."""
    return profile.name == "full" and torch.device(device).type == "cpu"


def set_seed(seed: int) -> None:
    """Seed Python's and torch's random generators so that runs repeat."""
    random.seed(seed)
    torch.manual_seed(seed)


def show_setup(profile: Profile, model_size: str | None = None) -> None:
    """Print the banner every notebook starts with: profile, model, and what that means."""
    print(f"Profile: {profile.name} ({profile.description})")
    print(f"Model:   {model_size or profile.model_size}")
