"""course experiment: data limit, eval frequency, precision, progress bars, trainable-only checkpoints."""
import csv

import pytest
import torch

from course_lib import experiment, profiles
from course_lib.profiles import set_seed
from course_lib.strategies import build_classifier, load_checkpoint, save_checkpoint
from course_tools.cli import main as course

SMOKE = "gpt2-smoke (tiny)"


def test_defaults_finish_on_a_cpu_and_the_original_setting_is_one_flag_away(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(experiment, "run_experiment", lambda cfg: seen.append(cfg) or [])
    assert course(["experiment", "--profile", "full", "--output-dir", str(tmp_path)]) == 0
    assert course(["experiment", "--profile", "full", "--num-epochs", "20", "--output-dir", str(tmp_path)]) == 0
    assert course(["experiment", "--profile", "smoke", "--output-dir", str(tmp_path)]) == 0
    full, original, smoke = seen
    assert (full.num_epochs, full.precision, full.batching, full.max_examples) == (5, "auto", "bucketed", None)
    assert original.num_epochs == 20
    assert (smoke.num_epochs, smoke.precision) == (1, "fp32")
    assert course(["experiment", "--profile", "smoke", "--max-examples", "0"]) == 2


def test_each_strategy_trains_at_its_own_rate_and_the_seeds_rate_is_one_flag_away(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(experiment, "run_experiment", lambda cfg: seen.append(cfg) or [])
    for argv in ([], ["--lora-alpha", "8"], ["--learning-rate", "5e-5"]):
        assert course(["experiment", "--profile", "full", "--output-dir", str(tmp_path), *argv]) == 0
    own, alpha8, seeds = seen
    rates = {s: experiment.strategy_learning_rate(own, s) for s in ("lora", "last_block", "last_layer", "all")}
    # LoRA by the product (alpha / rank) * lr = 8e-4 (Raschka appendix E); full and last block at ch. 6's 5e-5;
    # the head alone at 1e-3 (measured on the pretrained proxy, docs/benchmarks.md)
    assert rates == {"lora": 8e-4, "last_block": 5e-5, "last_layer": 1e-3, "all": 5e-5}
    assert experiment.strategy_learning_rate(alpha8, "lora") == 4e-4   # the same product at scaling 8 / 4
    assert {experiment.strategy_learning_rate(seeds, s) for s in rates} == {5e-5}
    smoke = profiles.get_profile("smoke")   # a tiny random model: one rate for every strategy
    assert {profiles.learning_rate_for(smoke, s, 4, a) for s in rates for a in (4, 8)} == {1e-3}


def test_max_examples_eval_freq_and_progress_bars_reach_the_run(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    calls = []
    real = experiment.train_classifier

    def spy(model, train_loader, val_loader, optimizer, device, num_epochs, **kwargs):
        calls.append((len(train_loader.dataset), len(val_loader.dataset), kwargs, optimizer.param_groups[0]["lr"]))
        return real(model, train_loader, val_loader, optimizer, device, num_epochs, **kwargs)

    monkeypatch.setattr(experiment, "train_classifier", spy)
    out = tmp_path / "exp"
    assert course(["experiment", "--profile", "smoke", "--max-examples", "16", "--eval-freq", "1", "--trainable-layers",
                   "last_layer", "--output-dir", str(out)]) == 0
    (n_train, n_val, kwargs, lr), = calls
    assert (n_train, n_val, kwargs["eval_freq"], kwargs["precision"]) == (16, 16, 1, "fp32")
    row, = csv.DictReader(open(out / "tl_last_layer_results.csv"))
    assert row["max_examples"] == "16" and row["batching"] == "bucketed" and row["precision"] == "fp32"
    assert float(row["learning_rate"]) == lr == 1e-3  # the smoke profile's rate, recorded as trained at
    err = capsys.readouterr().err
    for bar in ("training accuracy before training", "test accuracy before training", "epoch 1/1"):
        assert bar in err, bar
    assert "at most 16 examples per split" in (out / "summary.md").read_text()


def test_checkpoints_hold_only_what_the_strategy_trained_and_reload(tmp_path):
    for strategy, prefixes in [("last_layer", ("out_head.",)),
                               ("last_block", ("out_head.", "final_norm.", "trf_blocks.1."))]:
        set_seed(0)
        model = build_classifier(SMOKE, strategy)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
        path = save_checkpoint(model, tmp_path / f"{strategy}.pth", SMOKE, strategy)
        keys = set(torch.load(path, weights_only=True)["state_dict"])
        assert keys and all(k.startswith(prefixes) for k in keys), keys
        assert keys == {n for n, p in model.named_parameters() if p.requires_grad}
        ids = torch.randint(0, 50257, (2, 9))
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(ids), load_checkpoint(path, SMOKE)(ids))


def test_after_training_one_pass_per_split_gives_the_accuracies_recall_and_losses(monkeypatch, tmp_path):
    from course_lib.dataloaders import create_dataloaders, group_by_length, sequential_loader
    from course_lib.sms import prepare_sms_splits
    from course_lib.tokenizer import get_tokenizer
    from course_lib.training import calc_accuracy_loader, calc_loss_loader, per_class_accuracy

    kept = {}
    real_save = experiment.save_checkpoint
    monkeypatch.setattr(experiment, "save_checkpoint", lambda model, *a, **k: kept.update(model=model) or real_save(model, *a, **k))
    cfg = experiment.ExperimentConfig(profile=profiles.get_profile("smoke"), model_size=SMOKE, num_epochs=1,
                                      eval_iter=3, output_dir=tmp_path, eval_freq=100, progress=False)
    loaders = create_dataloaders(prepare_sms_splits(tmp_path / "splits"), get_tokenizer(), batch_size=8,
                                 context_length=128, max_examples=40, batching="bucketed")
    train_eval, val_loader, test_loader = sequential_loader(loaders[0]), loaders[1], loaders[2]
    assert all(group_by_length(loader) is not None for loader in (train_eval, val_loader, test_loader))
    tokens = []
    real_run = experiment.split_outputs

    def counted(loader, model, *args, **kwargs):
        hook = model.register_forward_pre_hook(lambda m, a: tokens.append(a[0].numel()))
        try:
            return real_run(loader, model, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(experiment, "split_outputs", counted)
    row = experiment.run_strategy(cfg, "last_layer", loaders, torch.device("cpu"))
    grouped = sum(sum(x.numel() for x, _ in group_by_length(loader).loader)
                  for loader in (train_eval, val_loader, test_loader))
    assert sum(tokens) == 2 * grouped   # before and after training: each example once, in batches by length
    model, cpu = kept["model"], torch.device("cpu")
    assert row["train_acc"] == round(calc_accuracy_loader(train_eval, model, cpu), 4)
    assert row["test_acc"] == round(calc_accuracy_loader(test_loader, model, cpu), 4)
    assert row["test_spam_recall"] == round(per_class_accuracy(test_loader, model, cpu)[1], 4)
    model.eval()
    # rounded to 4 places from logits of another grouping, so within half a unit of the last place
    assert row["train_loss"] == pytest.approx(calc_loss_loader(train_eval, model, cpu, num_batches=3), abs=5.1e-5)
    assert row["val_loss"] == pytest.approx(calc_loss_loader(val_loader, model, cpu, num_batches=3), abs=5.1e-5)
