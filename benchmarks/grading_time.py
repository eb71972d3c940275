"""Wall time of `course grade` on 10 submissions of notebook 04 (or --notebook) with --workers 2, today's
grader against an earlier commit's, one after the other on the same machine, in one run.

    python benchmarks/grading_time.py --baseline cd91f86 [--notebook 07_classification_training --submissions 4]

The baseline is checked out into a temporary git worktree and run with PYTHONPATH pointing at it, so
both graders grade the same submissions with the same Python. Prints both times and their ratio.
Caveat: a sandboxed baseline's kernels do not see PYTHONPATH and import the installed course_lib, so
compare only on a notebook whose graded code both versions share (04 is; 07 was not at b170c2e)."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NB = "04_lora_layers"


def grade_once(code_root: Path, subs: Path, out: Path, env: dict[str, str], notebook: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "course_tools.cli", "grade", str(subs), "--out", str(out), "--notebooks", notebook,
                    "--workers", "2"], cwd=code_root, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="a commit to compare with (e.g. cd91f86)")
    parser.add_argument("--submissions", type=int, default=10)
    parser.add_argument("--notebook", default=NB, help=f"the graded notebook (default {NB})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grading-bench-") as tmp:
        tmp = Path(tmp)
        subs = tmp / "subs"
        for i in range(args.submissions):
            (subs / f"s{i:02d}").mkdir(parents=True)
            source = ROOT / ("solutions" if i % 2 == 0 else "notebooks") / f"{args.notebook}.ipynb"
            shutil.copy(source, subs / f"s{i:02d}" / f"{args.notebook}.ipynb")
        env = {**os.environ, "COURSE_PROFILE": "smoke", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
               "COURSE_CACHE_DIR": str(tmp / "cache")}
        results = {}
        if args.baseline:
            base = tmp / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
                           check=True, capture_output=True)
            try:
                results[f"baseline {args.baseline}"] = grade_once(base, subs, tmp / "base" / "grades.csv",
                                                                  {**env, "PYTHONPATH": str(base)}, args.notebook)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                               capture_output=True)
        results["current (sandboxed)"] = grade_once(ROOT, subs, tmp / "now" / "grades.csv", env, args.notebook)
    print(f"{args.submissions} submissions of {args.notebook} (half solutions, half untouched), --workers 2, "
          f"{os.cpu_count()} CPUs")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.1f} s |")
    if len(results) == 2:
        base, now = results.values()
        print(f"ratio current / baseline: {now / base:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
