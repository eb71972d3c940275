"""Wall time of each notebook in the full profile with its default parameters, on this machine,
without downloading anything: the rehearsal of ``tests/test_full_profile.py`` at full length.

Not a test. It writes into a temporary Hugging Face cache what the full profile downloads:
a randomly initialised GPT-2 124M in the exact layout of ``openai-community/gpt2`` (legacy buffers
included) and, for notebook 09, a randomly initialised RoBERTa-base and AG News in the hub's layout
(``rehearsal``). Random weights time like trained ones; no accuracy printed by a
rehearsal means anything.

    COURSE_MIRROR=../shared/mirror python benchmarks/full_profile_times.py [09_peft_and_tuning ...]

``--experiment`` times instead one full-profile epoch of ``course experiment --trainable-layers lora``
with its evaluations, end to end in a fresh process (wall, CPU, peak memory, the load average at its
start and end; the command prints its own phases), with ``--threads`` threads:

    COURSE_MIRROR=../shared/mirror python benchmarks/full_profile_times.py --experiment --threads 2
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
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


def evaluation_tokens(batch_size: int = 8) -> None:
    """Token positions an evaluation pass over each split processes: each batch padded to its longest
    message in dataset order, and the same examples regrouped by length (``group_by_length``)."""
    from course_lib.dataloaders import create_dataloaders, group_by_length, sequential_loader
    from course_lib.sms import prepare_sms_splits
    from course_lib.tokenizer import get_tokenizer

    train, val, test = create_dataloaders(prepare_sms_splits(seed=123), get_tokenizer(), batch_size=batch_size,
                                          context_length=1024, seed=123, batching="bucketed")
    print("| pass | real tokens | padded in dataset order | regrouped by length |\n|---|---|---|---|")
    for name, loader, batches in (("training set", sequential_loader(train), None), ("validation", val, None),
                                  ("test", test, None), ("training set, first 5 batches", sequential_loader(train), 5),
                                  ("validation, first 5 batches", val, 5)):
        n = len(loader.dataset) if batches is None else batches * batch_size
        real = sum(loader.dataset.lengths[:n])
        in_order = sum(x.numel() for x, _ in list(loader)[:batches])
        grouped = sum(x.numel() for x, _ in group_by_length(loader, batches).loader)
        print(f"| {name} | {real:,} | {in_order:,} ({in_order / real:.2f}x) | {grouped:,} ({grouped / real:.2f}x) |")


def experiment(tmp: Path, threads: int, epochs: int) -> None:
    """Run ``course experiment --trainable-layers lora`` in a fresh process and print what it cost."""
    command = ["course", "experiment", "--trainable-layers", "lora", "--num-epochs", str(epochs),
               "--output-dir", str(tmp / "experiment")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print(f"OMP_NUM_THREADS={threads} {' '.join(command)}\nload average at the start {os.getloadavg()[0]:.2f}",
          flush=True)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"wall {wall:.1f} s, CPU {usage.ru_utime + usage.ru_stime:.1f} s (user {usage.ru_utime:.1f} s), "
          f"peak RSS {usage.ru_maxrss / 1e6:.2f} GB, load average at the end {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", default=NOTEBOOKS, help="notebook names (default: all nine)")
    parser.add_argument("--experiment", action="store_true",
                        help="time `course experiment --trainable-layers lora` end to end instead of notebooks")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for --experiment (default 2)")
    parser.add_argument("--epochs", type=int, default=1, help="--num-epochs for --experiment (default 1)")
    args = parser.parse_args()
    mirror = Path(os.environ.get("COURSE_MIRROR") or ROOT.parent / "shared" / "mirror")
    with tempfile.TemporaryDirectory(prefix="full-profile-") as tmp:
        tmp = Path(tmp)
        hub = tmp / "hub"
        from rehearsal import write_hub_cache_model

        write_hub_cache_model(hub, "gpt2-small (124M)")
        if args.experiment:
            os.environ.update({"COURSE_PROFILE": "full", "HF_HUB_CACHE": str(hub), "HF_HOME": str(tmp / "home"),
                               "HF_HUB_OFFLINE": "1", "COURSE_CACHE_DIR": str(tmp / "course-cache"),
                               "TQDM_DISABLE": "1", "COURSE_MIRROR": str(mirror.resolve())})
            evaluation_tokens()
            return experiment(tmp, args.threads, args.epochs)
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
