"""Wall time of each notebook in the full profile with its default parameters, on this machine,
without downloading anything: the rehearsal of ``tests/test_full_profile.py`` at full length.

Not a test. It writes into a temporary Hugging Face cache what the full profile downloads:
a randomly initialised GPT-2 124M in the exact layout of ``openai-community/gpt2`` (legacy buffers
included) and, for notebook 09, a randomly initialised RoBERTa-base and AG News in the hub's layout
(``rehearsal``). Random weights time like trained ones; no accuracy printed by a
rehearsal means anything.

    COURSE_MIRROR=../shared/mirror python benchmarks/full_profile_times.py [09_peft_and_tuning ...]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the rehearsal's model writers are test support
NOTEBOOKS = ["01_loading_weights", "02_settings_to_cfg", "03_data_balancing", "04_lora_layers", "05_lora_injection",
             "06_gradient_checks", "07_classification_training", "08_distillation", "09_peft_and_tuning"]


def run(name: str, workdir: Path) -> tuple[float, str]:
    """Seconds to run every cell (one that raises does not stop the rest) and the errors raised."""
    import papermill

    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(ROOT / "solutions" / f"{name}.ipynb"), str(workdir / f"{name}.ipynb"),
                                   cwd=str(ROOT / "solutions"), progress_bar=False, kernel_name="python3",
                                   allow_errors=True)
    except papermill.PapermillExecutionError as err:
        return time.perf_counter() - start, f"cell {err.exec_count} raised {err.ename}: {err.evalue}"
    return time.perf_counter() - start, "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", default=NOTEBOOKS, help="notebook names (default: all nine)")
    args = parser.parse_args()
    mirror = Path(os.environ.get("COURSE_MIRROR") or ROOT.parent / "shared" / "mirror")
    with tempfile.TemporaryDirectory(prefix="full-profile-") as tmp:
        tmp = Path(tmp)
        hub = tmp / "hub"
        from rehearsal import write_hub_cache_model

        write_hub_cache_model(hub, "gpt2-small (124M)")
        if "09_peft_and_tuning" in args.notebooks:
            from rehearsal import write_ag_news, write_roberta

            write_roberta(hub)
            write_ag_news(hub, mirror)
        os.environ.update({"COURSE_PROFILE": "full", "HF_HUB_CACHE": str(hub), "HF_HOME": str(tmp / "home"),
                           "HF_HUB_OFFLINE": "1", "COURSE_CACHE_DIR": str(tmp / "course-cache"),
                           "TQDM_DISABLE": "1", "COURSE_MIRROR": str(mirror.resolve())})
        load = os.getloadavg()[0]
        print(f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"load average {load:.1f} at the start; full profile, each notebook's defaults\n")
        print("| notebook | wall time (s) | load average after | errors (random weights fail accuracy checks) |\n"
              "|---|---|---|---|", flush=True)
        for name in args.notebooks:
            seconds, errors = run(name, tmp)
            print(f"| {name} | {seconds:,.0f} | {os.getloadavg()[0]:.1f} | {errors} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
