"""What a fresh Python process costs before it does any work, in CPU seconds (not a test).

The suite starts hundreds of processes: every notebook nbval or the grader runs gets a kernel, every graded
notebook gets probe processes, every `course grade` call its own interpreter, a child that prepares the shared
assets and spawned workers. Each pays for its imports again. This runs each start-up below in a fresh
interpreter, ``--rounds`` times, and prints the median CPU time (user + system, the process and everything it
waited for), which a loaded machine changes less than wall time:

- ``python``: the interpreter alone;
- ``import torch``;
- ``+ first optimizer``: torch, then one ``torch.optim.AdamW``, whose constructor imports ``torch._dynamo``
  the first time it runs (torch wraps it to be skipped by ``torch.compile``), in every process that trains;
- ``import matplotlib.pyplot``;
- ``course_lib for 04``: what notebook 04's graded cells import (the model, LoRA, strategies, training);
- ``kernel start``: an IPython kernel started, asked for one empty cell and shut down (jupyter_client);
- ``course grade, 1 x 04`` (with ``--grade``): the whole grader on one copy of 04's solution in its sandbox, every
  process it started included (needs bubblewrap, as `course grade` does without ``--no-sandbox``).

    python benchmarks/process_costs.py [--rounds 3] [--grade]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STARTS = {
    "python": "pass",
    "import torch": "import torch",
    "+ first optimizer": "import torch; torch.optim.AdamW([torch.zeros(1, requires_grad=True)])",
    "import matplotlib.pyplot": "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot",
    "course_lib for 04": "import course_lib.lora, course_lib.model, course_lib.strategies, course_lib.training",
    "kernel start": (
        "from jupyter_client.manager import start_new_kernel\n"
        "km, kc = start_new_kernel(kernel_name='python3')\n"
        "kc.execute_interactive('', timeout=60)\n"
        "kc.stop_channels(); km.shutdown_kernel(now=False)"),
}


def children_cpu() -> float:
    """CPU seconds of every child this process has waited for (and of theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_of(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> float:
    """CPU seconds of ``argv`` run to the end, its descendants included."""
    before = children_cpu()
    subprocess.run(argv, env=env, cwd=cwd, check=True, capture_output=True)
    return children_cpu() - before


def grade_one(env: dict[str, str]) -> float:
    """CPU seconds of `course grade` on one copy of 04's solution."""
    tmp = Path(tempfile.mkdtemp(prefix="process-costs-"))
    try:
        (tmp / "subs" / "s0").mkdir(parents=True)
        shutil.copy(ROOT / "solutions" / "04_lora_layers.ipynb", tmp / "subs" / "s0")
        return cpu_of([sys.executable, "-m", "course_tools.cli", "grade", str(tmp / "subs"), "--out",
                       str(tmp / "out" / "grades.csv"), "--notebooks", "04_lora_layers"], env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grade", action="store_true", help="also time `course grade` on one copy of 04")
    args = parser.parse_args()
    env = {**os.environ, "COURSE_PROFILE": "smoke", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    times: dict[str, list[float]] = {name: [] for name in STARTS}
    if args.grade:
        times["course grade, 1 x 04"] = []
    for _ in range(args.rounds):   # rounds interleaved: a burst of load spreads over every start-up
        for name, code in STARTS.items():
            times[name].append(cpu_of([sys.executable, "-c", code], env))
        if args.grade:
            times["course grade, 1 x 04"].append(grade_one(env))
    print(f"CPU seconds, median of {args.rounds} fresh processes (torch {__import__('torch').__version__}, "
          f"{os.cpu_count()} cores)")
    for name, values in times.items():
        print(f"  {name:<26} {statistics.median(values):6.2f} s   (rounds: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
