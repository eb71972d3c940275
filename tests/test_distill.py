import zipfile
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from course_lib import cola, stats
from course_lib.config import SMOKE_MODEL
from course_lib.dataloaders import PAD_TOKEN_ID, SpamDataset, make_loader
from course_lib.distill import (
    DistilRNN,
    ParameterShare,
    TeacherOutputs,
    architecture_shares,
    check_baseline,
    compare_kd,
    distillation_loss,
    kd_sweep,
    length_sorted_loader,
    majority_baseline,
    mean_std,
    parameter_share,
    teacher_logits_for,
    train_student,
)
from course_lib.downloads import DownloadError
from course_lib.strategies import build_classifier
from course_lib.tokenizer import get_tokenizer
from course_lib.training import matthews_corrcoef

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "mirror"
needs_mirror = pytest.mark.skipif(not (MIRROR / "cola").is_dir(), reason="the offline mirror is not beside the repository")


@pytest.fixture
def mirror_env(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_MIRROR", str(MIRROR))
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))


@needs_mirror
def test_cola_from_the_mirror_has_the_published_counts(mirror_env):
    path, origin = cola.download_cola()
    assert origin == "mirror"
    splits = cola.load_cola(path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 8551, "validation": 527, "out_of_domain": 516}
    assert splits["train"]["label"].value_counts().to_dict() == {1: 6023, 0: 2528}
    assert list(splits["train"].columns) == ["source", "label", "original_mark", "sentence"]


def _zip_with(tmp_path, edit):
    src = zipfile.ZipFile(MIRROR / "cola" / "cola_public_1.1.zip")
    out = tmp_path / "cola_public_1.1.zip"
    with zipfile.ZipFile(out, "w") as z:
        for name in src.namelist():
            data = src.read(name)
            if name == "cola_public/raw/in_domain_dev.tsv":
                data = edit(data.decode()).encode()
            z.writestr(name, data)
    return out


@needs_mirror
def test_a_split_with_a_missing_column_is_refused(tmp_path):
    drop_column = lambda text: "\n".join("\t".join(l.split("\t")[:3]) if i == 5 else l
                                         for i, l in enumerate(text.split("\n")))
    with pytest.raises(ValueError, match="validation: line 6 has 3 columns, expected 4"):
        cola.load_cola(_zip_with(tmp_path, drop_column))


@needs_mirror
def test_a_split_with_the_wrong_row_count_is_refused(tmp_path):
    truncate = lambda text: "\n".join(text.split("\n")[:400]) + "\n"
    with pytest.raises(ValueError, match="validation has 400 rows, expected 527"):
        cola.load_cola(_zip_with(tmp_path, truncate))


def test_a_truncated_zip_is_refused(tmp_path):
    bad = tmp_path / "cola_public_1.1.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DownloadError, match="not a valid zip"):
        cola.load_cola(bad)


def test_offline_without_mirror_names_the_official_url_and_course_mirror(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    with pytest.raises(DownloadError) as err:
        cola.download_cola()
    message = str(err.value)
    assert "https://nyu-mll.github.io/CoLA/cola_public_1.1.zip" in message and "COURSE_MIRROR" in message
    assert message.count(". ") == 0  # one sentence


def test_kd_loss_with_alpha_zero_is_plain_cross_entropy():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 2, generator=gen), torch.randn(5, 2, generator=gen)
    y = torch.tensor([0, 1, 0, 1, 1])
    assert torch.allclose(distillation_loss(s, t, y, 2.0, 0.0), F.cross_entropy(s, y))


def test_kd_loss_with_equal_logits_has_zero_kl():
    t = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    # zero up to float32 rounding of log_softmax against softmax
    assert distillation_loss(t.clone(), t, torch.zeros(5, dtype=torch.long), 2.0, 1.0).abs().item() < 1e-6


def test_kd_loss_matches_a_hand_computed_value():
    s = torch.tensor([[2.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    y = torch.tensor([0])
    # T = 2: p_t = softmax([0, 1]), p_s = softmax([1, 0]); KL(p_t || p_s) = (p_t1 - p_t0) * 1 = tanh(1/2)
    kl = torch.tanh(torch.tensor(0.5))
    ce = torch.log1p(torch.exp(torch.tensor(-2.0)))
    expected = 0.5 * 4 * kl + 0.5 * ce
    assert torch.allclose(distillation_loss(s, t, y, 2.0, 0.5), expected, atol=1e-6)


def test_kd_gradients_flow_into_the_student_only():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 2)
    student = torch.nn.Linear(4, 2)
    x = torch.randn(8, 4)
    loss = distillation_loss(student(x), teacher(x), torch.randint(0, 2, (8,)))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.mark.parametrize("rnn_type", ["rnn", "gru", "lstm"])
def test_distil_rnn_ignores_padding_and_outputs_two_logits(rnn_type):
    torch.manual_seed(0)
    model = DistilRNN(vocab_size=100, emb_dim=8, hidden_dim=8, rnn_type=rnn_type, pad_token_id=99).eval()
    short = torch.tensor([[1, 2, 3, 99, 99]])
    assert model(short).shape == (1, 2)
    assert torch.allclose(model(short), model(torch.tensor([[1, 2, 3]])), atol=1e-6)


def test_distil_rnn_default_sizes_follow_the_original_experiment():
    model = DistilRNN()
    assert model.embedding.weight.shape == (50257, 768) and model.rnn.hidden_size == 768 and model.fc.out_features == 2


SENTENCES = ["The writers didn't so believe the boy.", "The men were able to mine more gold.", "Go.",
             "It is important to be more careful, the more you eat.", "John seems that is nice.",
             "Mary sang.", "The more you read, the more books you want to read about cats.", "Him left."]


def padded(rows, width):
    return torch.tensor([r + [PAD_TOKEN_ID] * (width - len(r)) for r in rows])


@pytest.fixture(scope="module")
def teacher():
    """A smoke GPT-2 + LoRA classifier whose LoRA matrices are not zero, so they matter."""
    model = build_classifier(SMOKE_MODEL, "lora", rank=4, alpha=8, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        model.out_head.weight.mul_(20)  # separate the positions clearly, so reading the wrong one shows
    return model.eval()


@pytest.fixture(scope="module")
def sentences_ds():
    df = __import__("pandas").DataFrame({"Text": SENTENCES, "Label": [0, 1, 1, 1, 0, 1, 1, 0]})
    return SpamDataset(df, get_tokenizer(), max_length=24)


def _by_sentence(cached: TeacherOutputs) -> dict[tuple[int, ...], torch.Tensor]:
    inputs, _, logits = cached.tensors
    return {tuple(row[row != PAD_TOKEN_ID].tolist()): out for row, out in zip(inputs, logits)}


def test_teacher_logits_do_not_depend_on_the_padding(teacher, sentences_ds):
    # the same sentences padded to 24 tokens, to each batch's longest, in length order and in buckets
    loaders = {"fixed": make_loader(sentences_ds, 3, "fixed", shuffle=False),
               "per_batch": make_loader(sentences_ds, 3, "per_batch", shuffle=False),
               "sorted": length_sorted_loader(sentences_ds, 3),
               "bucketed": make_loader(sentences_ds, 3, "bucketed", shuffle=True, seed=5)}
    runs = {name: _by_sentence(teacher_logits_for(teacher, loader, torch.device("cpu")))
            for name, loader in loaders.items()}
    reference = runs.pop("fixed")
    assert len(reference) == len(SENTENCES)
    spread = max((reference[k] - reference[j]).abs().max().item() for k in reference for j in reference)
    assert spread > 0.1  # the teacher tells the sentences apart, so equal logits below mean something
    for name, run in runs.items():
        assert run.keys() == reference.keys(), name
        for key, logits in run.items():
            assert torch.allclose(logits, reference[key], atol=1e-5), name


def test_teacher_logits_equal_each_sentence_alone(teacher, sentences_ds):
    cached = teacher_logits_for(teacher, make_loader(sentences_ds, 4, "fixed", shuffle=False), torch.device("cpu"))
    ids = [get_tokenizer().encode(s) for s in SENTENCES]
    with torch.no_grad():
        alone = torch.cat([teacher(torch.tensor([r]))[:, -1, :] for r in ids])
    assert torch.allclose(cached.tensors[2], alone, atol=1e-5)
    assert cached.lengths == [len(r) for r in ids]


@pytest.mark.parametrize("rnn_type", ["rnn", "gru", "lstm"])
def test_student_logits_do_not_depend_on_the_padding(rnn_type):
    torch.manual_seed(0)
    student = DistilRNN(vocab_size=PAD_TOKEN_ID + 1, emb_dim=16, hidden_dim=16, rnn_type=rnn_type).eval()
    ids = [get_tokenizer().encode(s) for s in SENTENCES]
    longest = max(map(len, ids))
    with torch.no_grad():
        alone = torch.cat([student(torch.tensor([r])) for r in ids])
        outputs = [student(padded(ids, width)) for width in (longest, longest + 3, longest + 20)]
    assert (alone[:, 0] - alone[:, 1]).std() > 1e-3  # different sentences, different logits
    for out in outputs:
        assert (out - alone).abs().max().item() <= 1e-5


def _toy_cached(teacher_says: int, n: int = 64) -> TeacherOutputs:
    """Sentences of 2 to 6 tokens, all labelled 0, and a teacher sure that every one is class ``teacher_says``."""
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 20, (int(torch.randint(2, 7, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(n)]
    logits = torch.zeros(n, 2)
    logits[:, teacher_says] = 6.0
    return TeacherOutputs(padded(rows, 6), torch.zeros(n, dtype=torch.long), logits)


def _predicted_classes(student, cached):
    with torch.no_grad():
        return student.eval()(cached.tensors[0]).argmax(dim=-1)


def test_train_student_learns_from_the_cached_teacher_logits():
    cached = _toy_cached(teacher_says=1)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(cached.tensors[0], cached.tensors[1]),
                                      batch_size=16)
    students = {}
    for use_kd in (False, True):
        torch.manual_seed(0)
        students[use_kd] = DistilRNN(vocab_size=PAD_TOKEN_ID + 1, emb_dim=8, hidden_dim=8)
        train_student(students[use_kd], cached, val, torch.device("cpu"), num_epochs=15, batch_size=16,
                      lr=1e-2, alpha=1.0, use_kd=use_kd)
    # the labels say 0 everywhere, the teacher says 1: with alpha = 1 only the teacher is heard
    assert (_predicted_classes(students[False], cached) == 0).all()
    assert (_predicted_classes(students[True], cached) == 1).all()


def test_without_kd_the_teacher_logits_change_nothing():
    weights = []
    for teacher_says in (0, 1):
        cached = _toy_cached(teacher_says)
        val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(cached.tensors[0], cached.tensors[1]))
        torch.manual_seed(0)
        student = DistilRNN(vocab_size=PAD_TOKEN_ID + 1, emb_dim=8, hidden_dim=8)
        train_student(student, cached, val, torch.device("cpu"), num_epochs=2, batch_size=16, use_kd=False)
        weights.append(student.fc.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_teacher_logits_for_runs_the_teacher_once_per_batch():
    calls = []

    class Teacher(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return torch.zeros(x.shape[0], x.shape[1], 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(12, 3, dtype=torch.long),
                                                                        torch.zeros(12, dtype=torch.long)), batch_size=4)
    cached = teacher_logits_for(Teacher(), loader, torch.device("cpu"))
    assert calls == [4, 4, 4] and len(cached) == 12 and cached.tensors[2].shape == (12, 2)


def test_compare_kd_starts_both_variants_from_the_same_weights():
    cached = _toy_cached(teacher_says=1, n=16)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(cached.tensors[0], cached.tensors[1]))
    initial = []

    def make_student():
        student = DistilRNN(vocab_size=PAD_TOKEN_ID + 1, emb_dim=4, hidden_dim=4)
        initial.append(student.fc.weight.detach().clone())
        return student
    rows = compare_kd(make_student, cached, val, torch.device("cpu"), seeds=[1, 2], num_epochs=1, batch_size=8)
    assert [(r["seed"], r["kd"]) for r in rows] == [(1, False), (1, True), (2, False), (2, True)]
    assert torch.equal(initial[0], initial[1]) and torch.equal(initial[2], initial[3])
    assert not torch.equal(initial[0], initial[2])
    assert all(r["accuracy"] == r["history"].val_accs[-1] and r["mcc"] == r["history"].val_mccs[-1] for r in rows)


def test_mean_std_and_majority_baseline():
    assert mean_std([0.1, 0.2, 0.3]) == pytest.approx((0.2, 0.1))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert majority_baseline([1, 1, 0, 1]) == (1, 0.75)
    assert majority_baseline(torch.tensor([0, 0, 1])) == pytest.approx((0, 2 / 3))
    with pytest.raises(ValueError):
        majority_baseline([])


def test_matthews_correlation_limits():
    y = torch.tensor([0, 1, 1, 0, 1])
    assert matthews_corrcoef(y, y) == pytest.approx(1.0)
    assert matthews_corrcoef(1 - y, y) == pytest.approx(-1.0)
    assert matthews_corrcoef(torch.ones(5, dtype=torch.long), y) == 0.0


@pytest.mark.parametrize("case", range(6))
def test_matthews_correlation_agrees_with_scikit_learn(case):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(case)
    true = torch.randint(0, 2, (200,), generator=gen)
    predicted = {0: torch.randint(0, 2, (200,), generator=gen), 1: true.clone(), 2: 1 - true,
                 3: torch.ones(200, dtype=torch.long), 4: torch.where(torch.rand(200, generator=gen) < 0.8, true, 1 - true),
                 5: (torch.rand(200, generator=gen) < 0.9).long()}[case]
    assert matthews_corrcoef(predicted, true) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(true.numpy(), predicted.numpy()), abs=1e-12)


def test_kd_sweep_runs_pair_with_compare_kds_runs_of_the_same_seed():
    cached = _toy_cached(teacher_says=1, n=16)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(cached.tensors[0], cached.tensors[1]))
    make = lambda: DistilRNN(vocab_size=PAD_TOKEN_ID + 1, emb_dim=4, hidden_dim=4)
    kwargs = dict(seeds=[1, 2], num_epochs=2, batch_size=8, lr=1e-2)
    compared = compare_kd(make, cached, val, torch.device("cpu"), temperature=3.0, alpha=0.7, **kwargs)
    swept = kd_sweep(make, cached, val, torch.device("cpu"), settings=[(3.0, 0.7), (1.0, 1.0)], **kwargs)
    assert [(r["temperature"], r["alpha"], r["seed"]) for r in swept] == [(3.0, 0.7, 1), (3.0, 0.7, 2),
                                                                        (1.0, 1.0, 1), (1.0, 1.0, 2)]
    with_kd = [r for r in compared if r["kd"]]
    for sweep_row, kd_row in zip(swept[:2], with_kd):   # same seed, same setting: the same run
        assert sweep_row["seed"] == kd_row["seed"]
        assert sweep_row["mcc"] == kd_row["mcc"] and sweep_row["accuracy"] == kd_row["accuracy"]
    # each setting reaches the loss: the labels say 0, the teacher says 1; alpha 1 hears only the teacher
    heard = kd_sweep(make, cached, val, torch.device("cpu"), seeds=[1], num_epochs=15, batch_size=16, lr=1e-2,
                     settings=[(1.0, 1.0), (1.0, 0.0)])
    assert [r["accuracy"] for r in heard] == [0.0, 1.0]


# --------------------------------------------------------------------------- statistics of a few seeds
def test_t_critical_table_is_scipys_to_three_decimals():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df, tabled in enumerate(stats.T_975, start=1):
        assert tabled == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=6e-4)
        assert stats.t_critical(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-12)
    assert stats.t_critical(2) == pytest.approx(4.303, abs=1e-3)   # 3 seeds: the critical value


def test_t_critical_without_scipy_reads_the_table(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name == "scipy.stats" or name.startswith("scipy"):
            raise ImportError("no scipy here")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert stats.t_critical(2) == 4.303 and stats.t_critical(4) == 2.776
    assert stats.t_critical(100) == stats.T_975[-1]   # past the table: its last value, a little too wide
    with pytest.raises(ValueError, match="pip install scipy"):
        stats.t_critical(4, confidence=0.9)


def test_paired_difference_is_scipys_paired_t_interval():
    scipy_stats = pytest.importorskip("scipy.stats")
    treated, control = [0.31, 0.27, 0.40, 0.35, 0.29], [0.30, 0.20, 0.33, 0.36, 0.21]
    result = stats.paired_difference(treated, control)
    reference = scipy_stats.ttest_rel(treated, control).confidence_interval(0.95)
    assert (result.low, result.high) == pytest.approx((reference.low, reference.high), rel=1e-9)
    assert result.mean == pytest.approx(0.044) and result.n == 5
    diffs = [a - b for a, b in zip(treated, control)]
    assert result.standard_error == pytest.approx(mean_std(diffs)[1] / 5 ** 0.5)


def test_a_gain_larger_than_its_spread_can_still_be_inconclusive():
    # three seeds, differences 0.02, 0.05, 0.08: mean 0.05 > standard deviation 0.03 (the rule
    # "gain larger than its spread" says gain), but t = 0.05 / (0.03 / sqrt 3) = 2.89 < 4.30
    result = stats.paired_difference([0.12, 0.15, 0.18], [0.10, 0.10, 0.10])
    assert result.mean > mean_std([0.02, 0.05, 0.08])[1]
    assert result.low < 0 < result.high and result.verdict == "inconclusive"
    assert "inconclusive" in result.describe("with KD minus without KD")
    assert stats.paired_difference([0.2, 0.21, 0.22], [0.1, 0.1, 0.1]).verdict == "higher"
    assert stats.paired_difference([0.0, 0.01, 0.02], [0.1, 0.1, 0.1]).verdict == "lower"
    assert "excludes 0" in stats.paired_difference([0.2, 0.21, 0.22], [0.1, 0.1, 0.1]).describe()


def test_paired_difference_refuses_one_seed_and_unpaired_runs():
    with pytest.raises(ValueError, match="at least 2 paired runs"):
        stats.paired_difference([0.3], [0.2])
    with pytest.raises(ValueError, match="come in pairs"):
        stats.paired_difference([0.3, 0.2], [0.2])


def test_chance_mcc_is_the_chi_square_test_of_a_two_by_two_table():
    scipy_stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(3)
    true = torch.randint(0, 2, (527,), generator=gen)
    predicted = torch.where(torch.rand(527, generator=gen) < 0.55, true, 1 - true)
    table = [[int(((predicted == a) & (true == b)).sum()) for b in (0, 1)] for a in (0, 1)]
    chi2 = scipy_stats.chi2_contingency(table, correction=False)[0]
    assert 527 * matthews_corrcoef(predicted, true) ** 2 == pytest.approx(chi2, rel=1e-9)
    assert stats.chance_mcc(527) == pytest.approx(1.96 / 527 ** 0.5)
    assert scipy_stats.chi2.sf(stats.chance_mcc(527) ** 2 * 527, 1) == pytest.approx(0.05, abs=1e-3)


def test_check_baseline_names_a_constant_teacher_and_one_within_chance():
    true = torch.tensor([1] * 365 + [0] * 162)
    constant = check_baseline(torch.ones(527, dtype=torch.long), true)
    assert constant.constant and not constant.beats_baseline and constant.mcc == 0.0
    assert constant.accuracy == pytest.approx(365 / 527) == constant.majority_accuracy
    assert "AT THE BASELINE" in constant.describe() and "undefined" in constant.describe()
    weak = true.clone()
    weak[:3], weak[365:368] = 0, 1                     # 3 errors each way: nearly constant but not quite
    weak = torch.where(torch.arange(527) % 2 == 0, torch.ones_like(true), weak)   # half always 'acceptable'
    weak_check = check_baseline(weak, true)
    assert not weak_check.constant and weak_check.mcc > 0
    perfect = check_baseline(true, true)
    assert perfect.beats_baseline and perfect.mcc == pytest.approx(1.0) and "ABOVE" in perfect.describe()
    chance = check_baseline(torch.tensor([1, 0] * 263 + [1]), true)   # alternating: unrelated to the labels
    assert abs(chance.mcc) < chance.chance_mcc and not chance.beats_baseline
    assert "AT THE BASELINE" in chance.describe() and "within what chance" in chance.describe()
    with pytest.raises(ValueError, match="one per sentence"):
        check_baseline(torch.ones(3), true)


def test_parameter_share_counts_a_shared_tensor_once():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight               # tied, as GPT-2's out_head and tok_emb
    model[0].weight.requires_grad_(False)
    assert parameter_share(model) == ParameterShare(total=40, trainable=0, embedding=40)


def test_full_scale_shares_teacher_31_percent_embedding_student_97():
    shares = architecture_shares("gpt2-small (124M)", lora_rank=4, lora_alpha=8, student_dim=768)
    teacher, student = shares["teacher"], shares["student"]
    assert teacher.trainable == 665_090                    # 0.67M, the count notebook 08 prints
    assert student.total == 50257 * 768 + 2 * (768 * 768 + 768) + 768 * 2 + 2
    assert round(teacher.embedding_share, 2) == 0.31 and round(student.embedding_share, 2) == 0.97
    assert 3.0 < teacher.total / student.total < 3.3
    assert architecture_shares("gpt2-medium (355M)", 4, 8, 768)["teacher"].trainable == 1_771_522
