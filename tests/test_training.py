import csv

import pytest
import torch

from course_lib.classifier import add_classification_head
from course_lib.cli import main as course
from course_lib.config import get_config
from course_lib.data import create_dataloaders, prepare_sms_splits
from course_lib.model import GPTModel
from course_lib.profiles import set_seed
from course_lib.strategies import STRATEGIES, build_classifier, configure_trainable, load_checkpoint, save_checkpoint
from course_lib.tokenizer import get_tokenizer
from course_lib.training import (calc_accuracy_loader, calc_loss_batch, calc_loss_loader, classify_text,
                                 per_class_accuracy, train_classifier)

SMOKE = "gpt2-smoke (tiny)"


@pytest.fixture(scope="module")
def loaders(tmp_path_factory):
    paths = prepare_sms_splits(tmp_path_factory.mktemp("splits"))
    return create_dataloaders(paths, get_tokenizer(), batch_size=8, context_length=128, max_examples=64)


def test_loss_uses_the_last_token_and_class_weights():
    torch.manual_seed(0)
    model = GPTModel(get_config(SMOKE))
    add_classification_head(model, 2)
    x, y = torch.randint(0, 100, (4, 9)), torch.tensor([0, 1, 1, 1])
    logits = model(x)[:, -1, :]
    assert torch.allclose(calc_loss_batch(x, y, model, torch.device("cpu")),
                          torch.nn.functional.cross_entropy(logits, y))
    w = torch.tensor([3.0, 0.5])
    assert torch.allclose(calc_loss_batch(x, y, model, torch.device("cpu"), w),
                          torch.nn.functional.cross_entropy(logits, y, weight=w))


@pytest.mark.parametrize("strategy,expected", [
    ("last_layer", {"out_head"}), ("last_block", {"out_head", "trf_blocks.1", "final_norm"}),
    ("lora", {"out_head", "lora"}), ("all", None)])
def test_strategies_train_exactly_their_layers(strategy, expected):
    model = GPTModel(get_config(SMOKE))
    add_classification_head(model, 2)
    configure_trainable(model, strategy, rank=2, alpha=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if expected is None:
        assert all(p.requires_grad for p in model.parameters())
        return
    for name in trainable:
        assert any(name.startswith(e + ".") or f".{e}." in name for e in expected), name
    if strategy == "lora":
        assert not any(n.startswith("trf_blocks") and ".lora." not in n for n in trainable)


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="last_block"):
        configure_trainable(GPTModel(get_config(SMOKE)), "everything")


def test_training_lowers_the_training_loss_on_a_fixed_seed(loaders):
    train_loader, val_loader, _ = loaders
    set_seed(123)
    model = build_classifier(SMOKE, "lora", rank=4, alpha=8)
    device = torch.device("cpu")
    before = calc_loss_loader(train_loader, model, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
    history = train_classifier(model, train_loader, val_loader, optimizer, device, num_epochs=3, eval_freq=4,
                               eval_iter=2, progress=False)
    after = calc_loss_loader(train_loader, model, device)
    assert after < before
    assert history.examples_seen == 3 * 64 and len(history.train_accs) == 3
    assert len(history.train_losses) == len(history.eval_examples_seen) == 6


def test_accuracy_and_spam_recall_are_fractions(loaders):
    model = build_classifier(SMOKE, "last_layer")
    _, val_loader, _ = loaders
    device = torch.device("cpu")
    acc = calc_accuracy_loader(val_loader, model, device)
    recalls = per_class_accuracy(val_loader, model, device)
    assert 0 <= acc <= 1 and all(0 <= r <= 1 for r in recalls)
    assert classify_text("You won a free iPhone", model, get_tokenizer(), device, max_length=20) in {"ham", "spam"}


def test_lora_checkpoint_reloads_into_a_fresh_base_with_identical_logits(tmp_path):
    set_seed(0)
    model = build_classifier(SMOKE, "lora", rank=4, alpha=8)
    for p in model.parameters():
        if p.requires_grad:
            with torch.no_grad():
                p.add_(torch.randn_like(p) * 0.05)
    path = save_checkpoint(model, tmp_path / "lora.pth", SMOKE, "lora", rank=4, alpha=8)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(".lora." in k or k.startswith("out_head.") for k in saved)
    reloaded = load_checkpoint(path, SMOKE)
    ids = torch.randint(0, 50257, (2, 10))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), reloaded(ids))


def test_checkpoint_of_another_size_or_rank_is_refused_naming_both(tmp_path):
    model = build_classifier(SMOKE, "lora", rank=4, alpha=8)
    path = save_checkpoint(model, tmp_path / "lora.pth", SMOKE, "lora", rank=4, alpha=8)
    with pytest.raises(ValueError, match=r"gpt2-smoke \(tiny\).*gpt2-small \(124M\)"):
        load_checkpoint(path, "gpt2-small (124M)")
    with pytest.raises(ValueError, match="rank 4, not rank 8"):
        load_checkpoint(path, SMOKE, rank=8)


def test_lora_checkpoint_of_gpt2_small_is_under_5_percent_of_the_full_one(tmp_path):
    model = GPTModel(get_config("gpt2-small (124M)"))
    add_classification_head(model, 2)
    full = save_checkpoint(model, tmp_path / "full.pth", "gpt2-small (124M)", "all")
    configure_trainable(model, "lora", rank=4, alpha=4)
    lora = save_checkpoint(model, tmp_path / "lora.pth", "gpt2-small (124M)", "lora", rank=4, alpha=4)
    ratio = lora.stat().st_size / full.stat().st_size
    assert ratio < 0.05, ratio


def test_experiment_writes_results_checkpoints_plots_and_summary(tmp_path):
    out = tmp_path / "exp"
    assert course(["experiment", "--profile", "smoke", "--num-epochs", "1", "--output-dir", str(out),
                   "--trainable-layers", *STRATEGIES]) == 0
    for strategy in STRATEGIES:
        rows = list(csv.DictReader(open(out / f"tl_{strategy}_results.csv")))
        assert len(rows) == 1
        row = rows[0]
        for col in ("train_acc_before", "val_acc_before", "test_acc_before", "train_acc", "val_acc", "test_acc"):
            assert 0.0 <= float(row[col]) <= 1.0
        assert float(row["train_loss"]) > 0 and float(row["wall_time_s"]) >= 0 and int(row["trainable_params"]) > 0
        assert (out / "trainable_layers_checkpoints" / f"llmgpt_rank4_alpha4_tl_{strategy}.pth").is_file()
        assert (out / f"tl_{strategy}-loss.png").stat().st_size > 1000
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["trainable_layers"] for r in summary] == list(STRATEGIES)
    assert "| lora |" in (out / "summary.md").read_text()


def test_interrupted_experiment_keeps_finished_runs(tmp_path, monkeypatch):
    from course_lib import experiment

    real = experiment.run_strategy
    calls = []

    def interrupt_second(cfg, strategy, loaders, device):
        calls.append(strategy)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, strategy, loaders, device)

    monkeypatch.setattr(experiment, "run_strategy", interrupt_second)
    out = tmp_path / "exp"
    assert course(["experiment", "--profile", "smoke", "--num-epochs", "1", "--output-dir", str(out),
                   "--trainable-layers", "last_layer", "lora"]) == 130
    assert (out / "tl_last_layer_results.csv").is_file() and not (out / "tl_lora_results.csv").exists()
    assert [r["trainable_layers"] for r in csv.DictReader(open(out / "summary.csv"))] == ["last_layer"]
