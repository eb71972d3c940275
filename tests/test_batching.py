"""Length-aware batching: per-batch padding, seeded length buckets, and evaluation that never
changes what training sees."""
import pytest
import torch

from course_lib.dataloaders import (
    LengthBucketSampler,
    SpamDataset,
    create_dataloaders,
    make_loader,
    pad_collate,
    sequential_loader,
)
from course_lib.profiles import set_seed
from course_lib.sms import prepare_sms_splits
from course_lib.strategies import build_classifier
from course_lib.tokenizer import get_tokenizer
from course_lib.training import calc_loss_batch, train_classifier

SMOKE = "gpt2-smoke (tiny)"


@pytest.fixture(scope="module")
def paths(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.delenv("COURSE_MIRROR", raising=False)
    return prepare_sms_splits(tmp_path_factory.mktemp("splits"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def train_set(paths):
    import pandas as pd

    return SpamDataset(pd.read_csv(paths["train"]), get_tokenizer(), max_length=1024)


def test_pad_collate_pads_to_the_longest_message_of_the_batch():
    x, y = pad_collate([(torch.tensor([1, 2, 50256, 50256]), torch.tensor(0)), (torch.tensor([3, 50256, 50256, 50256]), 1)])
    assert x.tolist() == [[1, 2], [3, 50256]] and y.tolist() == [0, 1]
    x, _ = pad_collate([([4, 5, 6], 0), ([7], 1)])
    assert x.tolist() == [[4, 5, 6], [7, 50256, 50256]]


def test_buckets_are_deterministic_and_hold_every_message_once_per_epoch(train_set):
    lengths = train_set.lengths
    a, b = LengthBucketSampler(lengths, 8, seed=7), LengthBucketSampler(lengths, 8, seed=7)
    epochs_a, epochs_b = [list(a) for _ in range(2)], [list(b) for _ in range(2)]
    assert epochs_a == epochs_b
    assert epochs_a[0] != epochs_a[1]  # a new order each epoch ...
    assert list(LengthBucketSampler(lengths, 8, seed=8)) != epochs_a[0]  # ... and per seed
    for batches in epochs_a:
        flat = [i for batch in batches for i in batch]
        assert sorted(flat) == list(range(len(lengths)))
        assert len(batches) == len(a) == -(-len(lengths) // 8)
        assert sum(len(batch) < 8 for batch in batches) <= 1


def test_a_progress_bar_around_the_bucketed_loader_leaves_its_epochs_as_they_were(train_set):
    """tqdm.auto's bar calls iter() once on what it wraps before the loop takes its own iterator; an iterator that is
    made and dropped must not use up an epoch, or a learner's loop with a bar trains on other batches than without."""
    from tqdm.auto import tqdm

    plain = make_loader(train_set, 8, "bucketed", seed=5)
    barred = make_loader(train_set, 8, "bucketed", seed=5)
    iter(barred)                                                      # made and dropped: no batch taken
    for _ in range(2):
        assert [y.tolist() for _, y in plain] == [y.tolist() for _, y in tqdm(barred, disable=False)]


def test_bucketed_epoch_processes_at_most_1_15_times_the_real_tokens(train_set):
    real = sum(train_set.lengths)
    assert len(train_set) == 1045
    processed = sum(x.numel() for x, _ in make_loader(train_set, 8, "bucketed", seed=123))
    fixed = sum(x.numel() for x, _ in DataLoaderFixed(train_set))
    assert processed <= 1.15 * real, processed / real
    assert fixed > 2 * real  # what padding every message to the longest one costs


def DataLoaderFixed(ds):
    return torch.utils.data.DataLoader(ds, batch_size=8)


def test_batch_loss_is_the_mean_of_the_messages_own_losses(paths):
    set_seed(0)
    model = build_classifier(SMOKE, "last_layer").eval()
    with torch.no_grad():
        model.out_head.weight.mul_(30)
    train, _, _ = create_dataloaders(paths, get_tokenizer(), batch_size=8, context_length=128, max_examples=64,
                                     batching="bucketed")
    device = torch.device("cpu")
    with torch.no_grad():
        for x, y in list(train)[:4]:
            alone = []
            for row, label in zip(x, y):
                ids = row[row != 50256] if (row != 50256).any() else row[:1]
                alone.append(calc_loss_batch(ids[None], label[None], model, device).item())
            assert abs(calc_loss_batch(x, y, model, device).item() - sum(alone) / len(alone)) <= 1e-5


@pytest.mark.parametrize("batching", ["bucketed", "fixed"])
def test_eval_freq_does_not_change_training(paths, batching):
    def run(eval_freq):
        set_seed(123)
        model = build_classifier(SMOKE, "lora", rank=2, alpha=4)
        train, val, _ = create_dataloaders(paths, get_tokenizer(), batch_size=8, context_length=128, max_examples=32,
                                           batching=batching)
        seen = []
        model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()) if m.training else None)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        train_classifier(model, train, val, opt, torch.device("cpu"), num_epochs=2, eval_freq=eval_freq,
                         eval_iter=2, progress=False)
        return seen, model.state_dict()

    seen_1, weights_1 = run(1)
    seen_50, weights_50 = run(50)
    assert len(seen_1) == len(seen_50) == 8
    assert all(torch.equal(a, b) for a, b in zip(seen_1, seen_50))
    assert all(torch.equal(weights_1[k], weights_50[k]) for k in weights_1)


def test_sequential_loader_keeps_order_batch_size_and_padding(train_set):
    loader = make_loader(train_set, 8, "bucketed", seed=1)
    seq = sequential_loader(loader)
    x, _ = next(iter(seq))
    assert x.shape[0] == 8 and x.shape[1] == max(train_set.lengths[:8])
    assert [i for i in seq.batch_sampler.sampler] == list(range(len(train_set)))


def _validation_loader(paths, shuffle: bool = False, batching: str = "per_batch"):
    import pandas as pd

    dataset = SpamDataset(pd.read_csv(paths["validation"]), get_tokenizer(), max_length=1024)
    return make_loader(dataset, 8, batching, shuffle=shuffle, seed=5)


def _two_class_model():
    set_seed(0)
    model = build_classifier(SMOKE, "last_layer").eval()
    with torch.no_grad():  # a head that predicts both classes, so every prediction is checked
        model.out_head.weight.mul_(30)
    return model


def test_whole_split_passes_run_by_length_with_the_in_order_pass_predictions_for_its_real_tokens(paths):
    from course_lib.training import (
        calc_accuracy_loader, calc_loss_loader, classifier_logits, per_class_accuracy, predictions, split_outputs)

    loader, model, cpu = _validation_loader(paths), _two_class_model(), torch.device("cpu")
    dataset = loader.dataset
    widths = []
    model.register_forward_pre_hook(lambda m, args: widths.append(args[0].numel()))
    with torch.no_grad():   # the pass in dataset order, each batch padded to its longest message
        batches = [(classifier_logits(model, x), y) for x, y in loader]
    in_order = sum(widths)
    logits = torch.cat([b[0] for b in batches])
    predicted_in_order = logits.argmax(dim=-1)
    assert 0 < int(predicted_in_order.sum()) < len(dataset), "the check needs both classes predicted"
    widths.clear()
    predicted, true = predictions(loader, model, cpu)
    grouped = sum(widths)
    real = sum(dataset.lengths)
    # the same predictions, in dataset order, for nearly the real tokens (in order: about 1.65 x them)
    assert torch.equal(predicted, predicted_in_order) and true.tolist() == dataset.labels
    assert real <= grouped <= 1.1 * real < 1.5 * real < in_order, (real, grouped, in_order)
    out = split_outputs(loader, model, cpu)
    # other batch shapes, other summation orders: the logits (about 30 in size here) agree to a few ulp
    assert torch.allclose(out.logits, logits, atol=1e-5, rtol=1e-6), (out.logits - logits).abs().max()
    assert out.batch_sizes == [len(b[1]) for b in batches]
    assert calc_accuracy_loader(loader, model, cpu) == (predicted_in_order == true).float().mean().item()
    assert per_class_accuracy(loader, model, cpu) == [
        ((predicted_in_order == c) & (true == c)).sum().item() / (true == c).sum().item() for c in (0, 1)]
    # losses average the loader's batch means, over the loader's first batches
    w = torch.tensor([0.7, 2.0])
    for num_batches in (None, 3):
        want = [torch.nn.functional.cross_entropy(b_logits, y, weight=w).item() for b_logits, y in batches[:num_batches]]
        assert calc_loss_loader(loader, model, cpu, num_batches, w) == pytest.approx(sum(want) / len(want), rel=1e-6)


def test_first_batches_are_the_first_examples_in_dataset_order_regrouped_by_length(paths):
    from course_lib.dataloaders import group_by_length
    from course_lib.training import predictions

    loader, model = _validation_loader(paths), _two_class_model()
    grouped = group_by_length(loader, num_batches=5)
    seen = [i for batch in grouped.loader.batch_sampler for i in batch]
    assert sorted(seen) == list(range(40)), "the same 40 examples as the first 5 batches, not the 40 shortest"
    lengths = [loader.dataset.lengths[i] for i in seen]
    assert lengths == sorted(lengths) and grouped.batch_sizes == [8] * 5
    predicted, true = predictions(loader, model, torch.device("cpu"), num_batches=5)
    assert true.tolist() == loader.dataset.labels[:40]
    assert torch.equal(predicted, predictions(loader, model, torch.device("cpu"))[0][:40])


def test_loaders_whose_order_or_padding_is_their_own_are_evaluated_as_they_are(paths):
    from course_lib.dataloaders import group_by_length
    from course_lib.distill import length_sorted_loader
    from course_lib.training import predictions

    shuffled = _validation_loader(paths, shuffle=True, batching="bucketed")
    fixed = _validation_loader(paths, batching="fixed")
    for loader in (shuffled, fixed, length_sorted_loader(fixed.dataset, 8), list(fixed)):
        assert group_by_length(loader) is None
    assert group_by_length(_validation_loader(paths, batching="bucketed")) is not None  # in order, padded per batch
    # a shuffled loader's labels come back in the order of its (next) epoch, aligned with the predictions
    order = [i for batch in shuffled.batch_sampler.batches(0) for i in batch]
    _, true = predictions(shuffled, _two_class_model(), torch.device("cpu"))
    assert true.tolist() == [shuffled.dataset.labels[i] for i in order]

