"""The ``course`` command: info, fetch, make-student, execute-solutions."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from course_lib.config import MODEL_SIZES
from course_lib.paths import cache_dir, mirror_dir, repo_root

from .assets import data_assets, gpt2_asset, registry

VERSIONED = ("torch", "tiktoken", "safetensors", "huggingface_hub", "pandas", "matplotlib",
             "nbval", "papermill", "transformers", "peft")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    from course_lib.profiles import get_profile, pick_device

    profile = get_profile(args.profile)
    print(f"profile:  {profile.name} ({profile.description})")
    print(f"model:    {profile.model_size}")
    print(f"device:   {pick_device(profile=profile)}")
    print(f"python:   {platform.python_version()}")
    for package in VERSIONED:
        print(f"{package + ':':<17} {_version(package)}")
    print(f"cache:    {cache_dir()}")
    mirror = mirror_dir()
    print(f"mirror:   {mirror if mirror else 'not set (COURSE_MIRROR)'}")
    print("assets:")
    for asset in registry():
        print(f"  [{'x' if asset.is_cached() else ' '}] {asset.name}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch and verify the chosen GPT-2 sizes (a failure there stops with exit 2) and the profile's data."""
    from course_lib.downloads import DownloadError
    from course_lib.profiles import get_profile

    profile = get_profile(args.profile)
    for size in args.model_size or [profile.model_size]:
        print(f"Fetching {size} ...", flush=True)
        print(f"  ok: {gpt2_asset(size).fetch()}", flush=True)
    ok = True
    for asset in data_assets(profile.name):
        try:
            print(f"{asset.name}: ok ({asset.fetch()})", flush=True)
        except (DownloadError, ValueError, FileNotFoundError) as err:
            print(f"{asset.name}: FAILED: {err}", flush=True)
            ok = False
    return 0 if ok else 1


def _folders(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.root:
        root = Path(args.root)
    else:  # the course folder you are in, else the one course_lib was installed from
        root = Path.cwd() if (Path.cwd() / "solutions").is_dir() else repo_root()
    if not (root / "solutions").is_dir():
        # a non-editable install used outside the course folder: repo_root() is then site-packages, where
        # `make-student` made a `notebooks/` folder and reported success, and `--check` said "up to date"
        raise FileNotFoundError(f"{root} holds no solutions/ folder, so it is not the course's folder: run `course "
                                f"{args.command}` in the course's folder, or pass --root (or set COURSE_ROOT) to it.")
    return root / "solutions", root / "notebooks"


def cmd_make_student(args: argparse.Namespace) -> int:
    from .notebooks import make_student, stale_notebooks

    solutions, notebooks = _folders(args)
    if args.check:
        stale = stale_notebooks(solutions, notebooks)
        if stale:
            for name in stale:
                print(f"notebooks/{name} is not what `course make-student` generates from solutions/.")
            print("Run `course make-student` and commit notebooks/ with solutions/.")
            return 1
        print("notebooks/ is up to date with solutions/.")
        return 0
    try:
        written = make_student(solutions, notebooks)
    except OSError as err:   # a course folder this user may not write (another user's clone, a read-only mount)
        raise ValueError(f"`course make-student` cannot write {err.filename or notebooks} ({err.strerror or err}): run "
                         "it as a user who may write the course's notebooks/ folder, or pass --root a copy you can "
                         "write.") from None
    for name in written:
        print(f"wrote notebooks/{name}")
    return 0


def cmd_execute_solutions(args: argparse.Namespace) -> int:
    from .notebooks import execute_solutions

    solutions, _ = _folders(args)
    present = {x for p in solutions.glob("*.ipynb") for x in (p.stem, p.name)}
    unknown = [n for n in args.notebooks if n not in present]
    if unknown:   # a misspelt name executed nothing and exited 0
        raise FileNotFoundError(f"{solutions} holds no notebook {unknown[0]!r}: name solution notebooks such as "
                                "04_lora_layers (or none, for all of them).")
    for name in execute_solutions(solutions, args.notebooks or None):
        print(f"executed and stored solutions/{name}", flush=True)
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from course_lib.experiment import ExperimentConfig, run_experiment
    from course_lib.plans import plan_for
    from course_lib.profiles import get_profile

    profile = get_profile(args.profile)
    if args.max_examples is not None and args.max_examples < 1:
        raise ValueError(f"--max-examples must be at least 1, got {args.max_examples}.")
    if args.eval_freq < 1:
        raise ValueError(f"--eval-freq must be at least 1, got {args.eval_freq}.")
    cfg = ExperimentConfig(
        profile=profile, model_size=args.model_size or profile.model_size, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, trainable_layers=tuple(args.trainable_layers),
        num_epochs=args.num_epochs if args.num_epochs is not None else plan_for("experiment", profile).num_epochs,
        batch_size=args.batch_size, eval_iter=args.eval_iter, eval_iter_val=args.eval_iter_val,
        learning_rate=args.learning_rate,  # None: each strategy's own rate (profiles.learning_rate_for)
        seed=args.seed, device=args.device, output_dir=Path(args.output_dir), eval_freq=args.eval_freq,
        max_examples=args.max_examples, batching=args.batching, compile=args.compile,
        precision=args.precision or ("auto" if profile.name == "full" else "fp32"))
    try:
        run_experiment(cfg)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from .grading.grade import grade, merge
    from .grading.registry import DEFAULT_TESTS
    from .grading.reports import print_totals
    from .grading.sandbox import Limits

    if args.merge:
        if not args.out:
            raise ValueError("--merge needs --out grades.csv.")
        rows = merge([Path(p) for p in args.merge], Path(args.out),
                     submissions=Path(args.submissions) if args.submissions else None)
    else:
        if not args.submissions or not args.out:
            raise ValueError("Usage: course grade SUBMISSIONS_DIR --out grades.csv")
        rows = grade(Path(args.submissions), Path(args.out), notebooks=args.notebooks,
                     feedback_dir=Path(args.feedback_dir) if args.feedback_dir else None,
                     executed_dir=Path(args.executed_dir) if args.executed_dir else None,
                     workers=args.workers, cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout,
                     profile=args.profile, shard=args.shard, tests_path=Path(args.tests or DEFAULT_TESTS),
                     use_sandbox=not args.no_sandbox,
                     limits=Limits(memory_bytes=int(args.memory_gb * 1024**3), processes=args.max_processes),
                     seed=args.seed)
    print_totals(rows, args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="course", description="LoRA fine-tuning of GPT-2: course tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="profile, device, versions, and which assets are cached")
    p.add_argument("--profile", choices=["full", "smoke"], default=None)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fetch", help="download and verify the assets ahead of time")
    p.add_argument("--profile", choices=["full", "smoke"], default=None)
    p.add_argument("--model-size", nargs="+", choices=list(MODEL_SIZES), default=None)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("make-student", help="regenerate notebooks/ from solutions/")
    p.add_argument("--check", action="store_true", help="exit 1 if notebooks/ is stale")
    p.add_argument("--root", default=None, help="course folder (default: this repository)")
    p.set_defaults(func=cmd_make_student)

    p = sub.add_parser("execute-solutions", help="re-run solutions in the smoke profile and store outputs")
    p.add_argument("notebooks", nargs="*", help="names like 04_lora_layers (default: all)")
    p.add_argument("--root", default=None)
    p.set_defaults(func=cmd_execute_solutions)

    p = sub.add_parser("grade", help="grade a folder of submissions with the hidden tests")
    p.add_argument("submissions", nargs="?", help="SUBMISSIONS_DIR/<student>/<NN_name>.ipynb")
    p.add_argument("--out", required=False, help="the gradebook CSV to write")
    p.add_argument("--notebooks", nargs="+", default=None, help="e.g. 04_lora_layers (default: all graded notebooks)")
    p.add_argument("--feedback-dir", default=None, help="default: feedback/ beside --out")
    p.add_argument("--executed-dir", default=None, help="default: executed/ beside --out")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cell-timeout", type=int, default=120, help="seconds per cell")
    p.add_argument("--notebook-timeout", type=int, default=1200, help="seconds per notebook")
    p.add_argument("--profile", choices=["smoke", "full"], default="smoke")
    p.add_argument("--shard", default=None, help="K/N: grade only the K-th of N deterministic shards of students")
    p.add_argument("--merge", nargs="+", default=None, metavar="CSV", help="merge shard gradebooks into --out")
    p.add_argument("--tests", default=None, help="the hidden tests file (default: grading/hidden_tests.py)")
    p.add_argument("--no-sandbox", action="store_true",
                   help="run submissions without the bubblewrap sandbox (trusted notebooks only; see README)")
    p.add_argument("--memory-gb", type=float, default=8, help="address-space limit per sandboxed process (GiB)")
    p.add_argument("--max-processes", type=int, default=256, help="processes and threads per sandbox")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the hidden tests' inputs, the same for every student (default: a fresh one, printed)")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("experiment", help="fine-tune one classifier per trainable-layers strategy and compare")
    p.add_argument("--model-size", choices=list(MODEL_SIZES), default=None,
                   help="default: the profile's model (gpt2-small (124M) in full)")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--lora-alpha", type=float, default=4)
    p.add_argument("--trainable-layers", nargs="+", default=["lora", "last_block", "last_layer", "all"],
                   choices=["lora", "last_block", "last_layer", "all"])
    p.add_argument("--num-epochs", type=int, default=None,
                   help="default: the plan's (course_lib.plans: 5 in full, 1 in smoke); the original script's setting is 20")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-examples", type=int, default=None,
                   help="use at most N examples of each split (default: all in full, 64 in smoke)")
    p.add_argument("--eval-freq", type=int, default=50, help="measure the losses every N training steps")
    p.add_argument("--eval-iter", type=int, default=50, help="batches for the final losses")
    p.add_argument("--eval-iter-val", type=int, default=5, help="batches for the losses measured during training")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default=None,
                   help="default: auto in full (bf16 where the hardware has bf16 units), fp32 in smoke")
    p.add_argument("--batching", choices=["bucketed", "per_batch", "fixed"], default="bucketed",
                   help="bucketed: similar lengths together, each batch padded to its longest message")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="one rate for every strategy (Raschka ch. 6 uses 5e-5 for all); default: each strategy's own")
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile (off by default: on a 2-core CPU compiling took minutes and "
                        "the compiled step was no faster; see docs/benchmarks.md)")
    p.add_argument("--profile", choices=["full", "smoke"], default=None)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: picked automatically)")
    p.add_argument("--output-dir", default="outputs")
    p.set_defaults(func=cmd_experiment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:   # run from a folder deleted meanwhile, every command said only "error: [Errno 2] No such file or directory"
        os.getcwd()
    except OSError as err:
        print(f"error: the current folder cannot be used ({err.strerror}; was it deleted?): cd into an existing "
              "folder and run the command again.", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command != "grade":
            raise
        print("stopped: the grader removed its temporary files and sandboxes; the gradebook and feedback of this run "
              "were not (or not all) written, so run the same command again.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
