import csv

import pytest
import torch

from course_lib.classifier import add_classification_head
from course_lib.config import get_config
from course_lib.dataloaders import create_dataloaders
from course_lib.model import GPTModel
from course_lib.profiles import set_seed
from course_lib.sms import prepare_sms_splits
from course_lib.strategies import STRATEGIES, build_classifier, configure_trainable, load_checkpoint, save_checkpoint
from course_lib.tokenizer import get_tokenizer
from course_lib.training import (
    calc_accuracy_loader,
    calc_loss_batch,
    calc_loss_loader,
    classifier_logits,
    classify_text,
    per_class_accuracy,
    train_classifier,
)
from course_tools.cli import main as course

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


@pytest.mark.parametrize("strategy", ["last_layer", "last_block", "lora", "all"])
def test_strategies_train_exactly_their_layers(strategy):
    model = GPTModel(get_config(SMOKE))
    add_classification_head(model, 2)
    configure_trainable(model, strategy, rank=2, alpha=4)
    names = [n for n, _ in model.named_parameters()]
    last = f"trf_blocks.{len(model.trf_blocks) - 1}."
    expected = {
        "last_layer": {n for n in names if n.startswith("out_head.")},
        "last_block": {n for n in names if n.startswith(("out_head.", "final_norm.", last))},
        "lora": {n for n in names if n.startswith("out_head.") or ".lora." in n},
        "all": set(names),
    }[strategy]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert {"out_head.weight", "out_head.bias"} <= trainable  # the new head always learns
    if strategy == "lora":
        wrapped = [m for m in model.modules() if hasattr(m, "lora")]
        assert len(wrapped) == 6 * len(model.trf_blocks)  # every Linear of every block, not the head
        assert len([n for n in trainable if ".lora." in n]) == 2 * len(wrapped)  # A and B of each


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


def test_accuracy_and_spam_recall_agree_with_scikit_learn(loaders):
    from sklearn.metrics import accuracy_score, recall_score

    from course_lib.training import classifier_logits, predictions

    set_seed(3)
    model = build_classifier(SMOKE, "last_layer")
    with torch.no_grad():
        model.out_head.bias.copy_(torch.tensor([0.0, 0.3]))  # not all one class, so every count matters
    _, val_loader, _ = loaders
    device = torch.device("cpu")
    predicted, true = predictions(val_loader, model, device)
    model.eval()
    with torch.no_grad():
        by_hand = torch.cat([classifier_logits(model, x).argmax(dim=-1) for x, _ in val_loader])
    assert torch.equal(predicted, by_hand) and len(true) == len(val_loader.dataset)
    assert 0 < int(predicted.sum()) < len(predicted), "the check needs both classes predicted"
    acc = calc_accuracy_loader(val_loader, model, device)
    recalls = per_class_accuracy(val_loader, model, device)
    assert acc == pytest.approx(accuracy_score(true.numpy(), predicted.numpy()))
    assert recalls == pytest.approx(list(recall_score(true.numpy(), predicted.numpy(), average=None, labels=[0, 1])))
    # classify_text names the class the model's logits at the last real token pick, for both classes
    texts = list(val_loader.dataset.data["Text"])
    picked = [int(classifier_logits(model, torch.tensor([get_tokenizer().encode(t)])).argmax()) for t in texts]
    assert set(picked) == {0, 1}, "the check needs both classes predicted"
    assert [classify_text(t, model, get_tokenizer(), device) for t in texts] == [("ham", "spam")[i] for i in picked]
    assert [classify_text(t, model, get_tokenizer(), device, labels=("no", "yes")) for t in texts[:8]] == \
        [("no", "yes")[i] for i in picked[:8]]


@pytest.mark.parametrize("seed", range(6))
def test_matthews_corrcoef_agrees_with_scikit_learn(seed):
    from sklearn.metrics import matthews_corrcoef as sk_mcc

    from course_lib.training import matthews_corrcoef

    g = torch.Generator().manual_seed(seed)
    true = torch.randint(0, 2, (40,), generator=g)
    for predicted in (torch.randint(0, 2, (40,), generator=g), true.clone(), 1 - true, torch.ones(40, dtype=torch.long)):
        assert matthews_corrcoef(predicted, true) == pytest.approx(sk_mcc(true.numpy(), predicted.numpy()), abs=1e-12)


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


def test_a_lora_checkpoint_holds_the_trained_numbers_only(tmp_path):
    """Its size is the LoRA matrices' and the head's numbers (plus a little framing), not the model's: for
    GPT-2 small at rank 4 that is 0.5% of a full checkpoint (counted on the meta device, no 500 MB file)."""
    model = build_classifier(SMOKE, "all")
    full = save_checkpoint(model, tmp_path / "full.pth", SMOKE, "all")
    configure_trainable(model, "lora", rank=4, alpha=4)
    lora = save_checkpoint(model, tmp_path / "lora.pth", SMOKE, "lora", rank=4, alpha=4)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    everything = sum(t.numel() for t in model.state_dict().values())
    assert 4 * trained < lora.stat().st_size < 4 * trained + 64_000   # float32 numbers plus the file's framing
    assert full.stat().st_size > 4 * (everything - trained)
    with torch.device("meta"):
        small = GPTModel(get_config("gpt2-small (124M)"))
        add_classification_head(small, 2)
        configure_trainable(small, "lora", rank=4, alpha=4)
    share = sum(p.numel() for p in small.parameters() if p.requires_grad) / sum(p.numel() for p in small.parameters())
    assert share < 0.01, share


def test_experiment_writes_results_checkpoints_plots_and_summary(tmp_path):
    out = tmp_path / "exp"
    assert course(["experiment", "--profile", "smoke", "--num-epochs", "1", "--output-dir", str(out),
                   "--trainable-layers", *STRATEGIES]) == 0
    before = set()
    for strategy in STRATEGIES:
        rows = list(csv.DictReader(open(out / f"tl_{strategy}_results.csv")))
        assert len(rows) == 1
        row = rows[0]
        # the same classifier before training whatever is about to train (LoRA starts as the identity)
        before.add(tuple(row[c] for c in ("train_acc_before", "val_acc_before", "test_acc_before")))
        model = build_classifier(SMOKE, strategy, rank=4, alpha=4)
        assert int(row["trainable_params"]) == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert float(row["train_loss"]) > 0
        assert (out / "trainable_layers_checkpoints" / f"llmgpt_rank4_alpha4_tl_{strategy}.pth").is_file()
        assert (out / f"tl_{strategy}-loss.png").stat().st_size > 1000
    assert len(before) == 1, before
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["trainable_layers"] for r in summary] == list(STRATEGIES)
    assert "| lora |" in (out / "summary.md").read_text()


def test_strategies_share_the_accuracies_before_training_only_while_their_classifier_is_the_same(
        tmp_path, loaders, monkeypatch):
    """`course experiment` measures the accuracies before training once for the strategies that start from the
    same classifier; they equal a measurement of each alone, and a classifier that differs is evaluated in full."""
    from course_lib import experiment
    from course_lib.profiles import get_profile

    full = []
    real = experiment._accuracies
    monkeypatch.setattr(experiment, "_accuracies", lambda *a: full.append(a[-1]) or real(*a))
    cfg = experiment.ExperimentConfig(profile=get_profile("smoke"), model_size=SMOKE, num_epochs=1, eval_freq=4,
                                      output_dir=tmp_path, progress=False)
    columns = ("train_acc_before", "val_acc_before", "test_acc_before")
    cpu = torch.device("cpu")
    alone = experiment.run_strategy(cfg, "last_layer", loaders, cpu)   # no sharing: measured in full
    shared = {}
    first = experiment.run_strategy(cfg, "lora", loaders, cpu, before=shared)
    second = experiment.run_strategy(cfg, "last_layer", loaders, cpu, before=shared)
    assert full.count("before training") == 2   # alone and the first: the second reused the first's
    assert [second[c] for c in columns] == [first[c] for c in columns] == [alone[c] for c in columns]

    def other_head(*args, **kwargs):
        model = build_classifier(*args, **kwargs)
        with torch.no_grad():
            model.out_head.bias += torch.tensor([3.0, -3.0])   # every message now leans to "ham"
        return model

    third = experiment.run_strategy(cfg, "last_layer", loaders, cpu, build=other_head, before=shared)
    assert full.count("before training") == 3   # a different classifier is measured, not given the shared numbers
    assert [third[c] for c in columns] != [first[c] for c in columns]


def test_interrupted_experiment_keeps_finished_runs(tmp_path, monkeypatch):
    from course_lib import experiment

    real = experiment.run_strategy
    calls = []

    def interrupt_second(cfg, strategy, loaders, device, **kwargs):
        calls.append(strategy)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, strategy, loaders, device, **kwargs)

    monkeypatch.setattr(experiment, "run_strategy", interrupt_second)
    out = tmp_path / "exp"
    assert course(["experiment", "--profile", "smoke", "--num-epochs", "1", "--output-dir", str(out),
                   "--trainable-layers", "last_layer", "lora"]) == 130
    assert (out / "tl_last_layer_results.csv").is_file() and not (out / "tl_lora_results.csv").exists()
    assert [r["trainable_layers"] for r in csv.DictReader(open(out / "summary.csv"))] == ["last_layer"]


def test_train_classifier_trains_lora_through_the_fast_path_to_what_the_written_layers_reach(tmp_path, monkeypatch):
    from course_lib import lora_fast, precision

    paths = prepare_sms_splits(tmp_path)
    device, trained, calls = torch.device("cpu"), {}, []
    apply = lora_fast._GroupedLoRALinear.apply
    monkeypatch.setattr(lora_fast._GroupedLoRALinear, "apply", lambda *a: calls.append(1) or apply(*a))
    for fast in (True, False):
        if not fast:  # the same loop with the LoRA layers as notebook 04 writes them
            monkeypatch.setattr(precision, "fast_lora", lambda model: torch.enable_grad())
        train_loader, val_loader, _ = create_dataloaders(paths, get_tokenizer(), batch_size=8, context_length=128,
                                                         max_examples=64)  # fresh: the same shuffling each run
        set_seed(123)
        model = build_classifier(SMOKE, "lora", rank=4, alpha=8)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
        history = train_classifier(model, train_loader, val_loader, optimizer, device, num_epochs=1, eval_freq=4,
                                   eval_iter=1, progress=False)
        trained[fast] = (history.train_losses, {n: p.detach().clone() for n, p in model.named_parameters()
                                                if p.requires_grad})
        if fast:
            assert calls and not any("forward" in m.__dict__ for m in model.modules())  # used, then restored
            calls.clear()
    assert not calls
    assert trained[True][0] == pytest.approx(trained[False][0], abs=1e-5)
    for name, p in trained[False][1].items():
        assert torch.allclose(trained[True][1][name], p, atol=1e-5), name


def test_make_adamw_is_fused_and_updates_like_the_plain_adamw_loop():
    from course_lib.training import make_adamw

    params = {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = build_classifier(SMOKE, "lora", rank=4, alpha=8)
        optimizer = (make_adamw(model, lr=1e-2) if fused else
                     torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1))
        assert optimizer.param_groups[0]["fused"] is (True if fused else None)
        initial = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
        for step in range(4):
            optimizer.zero_grad()
            for p in optimizer.param_groups[0]["params"]:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            optimizer.step()
        params[fused] = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
        moved = [(p - q).abs().max() for p, q in zip(params[fused], initial)]
        assert min(moved) > 1e-3  # every tensor really stepped
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params[True], params[False]))


def test_periodic_evaluation_reads_the_first_eval_iter_batches_in_dataset_order(tmp_path):
    from course_lib.dataloaders import group_by_length, sequential_loader

    train_loader, val_loader, _ = create_dataloaders(prepare_sms_splits(tmp_path), get_tokenizer(), batch_size=8,
                                                     context_length=128, max_examples=64, batching="bucketed")
    assert group_by_length(val_loader) is not None   # evaluated in batches of similar length
    set_seed(4)
    model = build_classifier(SMOKE, "last_layer")
    with torch.no_grad():
        model.out_head.weight.mul_(30)   # losses far from ln 2, so another subset would show
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)  # the model stays put
    device = torch.device("cpu")
    history = train_classifier(model, train_loader, val_loader, optimizer, device, num_epochs=1, eval_freq=100,
                               eval_iter=3, progress=False)
    model.eval()
    with torch.no_grad():
        for loader, losses, accs in ((sequential_loader(train_loader), history.train_losses, history.train_accs),
                                     (val_loader, history.val_losses, history.val_accs)):
            first = list(loader)[:3]      # what the in-order loader's first 3 batches hold
            want = [calc_loss_batch(x, y, model, device).item() for x, y in first]
            assert losses == [pytest.approx(sum(want) / 3, rel=1e-6)]
            right = sum((classifier_logits(model, x).argmax(-1) == y).sum().item() for x, y in first)
            assert accs == [pytest.approx(right / 24)]


def test_classifier_logits_reads_the_course_gpt_at_the_last_real_tokens_only():
    from course_lib.training import classifier_logits, pool_last_token
    from course_lib.dataloaders import PAD_TOKEN_ID

    torch.manual_seed(0)
    model = GPTModel(get_config("gpt2-smoke (tiny)")).eval()
    add_classification_head(model, 2)
    ids = torch.randint(0, 1000, (4, 7))
    ids[1, 3:] = PAD_TOKEN_ID
    ids[2, 1:] = PAD_TOKEN_ID
    asked = []
    model.register_forward_pre_hook(lambda m, args, kwargs: asked.append(kwargs.get("read_at")), with_kwargs=True)
    with torch.no_grad():
        got = classifier_logits(model, ids)
        whole = pool_last_token(model(ids), ids)
    assert asked[0].tolist() == [6, 2, 0, 6]  # the last real token of each row, not the padded end
    assert got.shape == (4, 2) and (got - whole).abs().max() <= 1e-5


def test_classifier_logits_runs_the_whole_model_while_last_block_dropout_draws_masks():
    from course_lib.training import classifier_logits, pool_last_token

    cfg = dict(get_config("gpt2-smoke (tiny)"), drop_rate=0.2)
    torch.manual_seed(0)
    model = GPTModel(cfg)
    add_classification_head(model, 2)
    ids = torch.randint(0, 1000, (3, 6))
    torch.manual_seed(1)
    got = classifier_logits(model.train(), ids)
    torch.manual_seed(1)
    whole = pool_last_token(model(ids), ids)  # the same masks drawn: the same numbers
    assert torch.equal(got, whole)


def test_plot_history_draws_each_loss_where_it_was_measured():
    """Losses measured after 8, 24, 40 and 56 of 64 examples (2 epochs) sit at those fractions of the run,
    not spread evenly from 0 to the end; the top axis (examples seen) tells the same positions."""
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.plots import plot_history
    from course_lib.training import History

    history = History(train_losses=[0.7, 0.6, 0.5, 0.4], val_losses=[0.7, 0.65, 0.6, 0.55],
                      train_accs=[0.6, 0.8], val_accs=[0.55, 0.75], examples_seen=64,
                      eval_examples_seen=[8, 24, 40, 56])
    loss_fig, acc_fig = plot_history(history, num_epochs=2)
    bottom, top = loss_fig.axes
    assert list(bottom.lines[0].get_xdata()) == pytest.approx([0.25, 0.75, 1.25, 1.75])
    assert list(top.lines[0].get_xdata()) == [8, 24, 40, 56]
    assert [32 * x for x in bottom.get_xlim()] == pytest.approx(top.get_xlim())  # 32 examples an epoch on both axes
    assert list(acc_fig.axes[0].lines[0].get_xdata()) == [1, 2]
