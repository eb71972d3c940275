import zipfile
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from course_lib import cola
from course_lib.distill import DistilRNN, distillation_loss, teacher_logits_for, train_student
from course_lib.downloads import DownloadError
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


def test_distil_rnn_default_sizes_follow_the_seed():
    model = DistilRNN()
    assert model.embedding.weight.shape == (50257, 768) and model.rnn.hidden_size == 768 and model.fc.out_features == 2


def test_teacher_logits_are_computed_once_and_reused():
    calls = []

    class Teacher(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            return torch.zeros(x.shape[0], x.shape[1], 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(12, 3, dtype=torch.long),
                                                                        torch.zeros(12, dtype=torch.long)), batch_size=4)
    cached = teacher_logits_for(Teacher(), loader, torch.device("cpu"))
    assert len(calls) == 3
    student = DistilRNN(vocab_size=10, emb_dim=4, hidden_dim=4)
    train_student(student, cached, loader, torch.device("cpu"), num_epochs=3, batch_size=4)
    assert len(calls) == 3  # three student epochs, no further teacher passes


def test_matthews_correlation_limits():
    y = torch.tensor([0, 1, 1, 0, 1])
    assert matthews_corrcoef(y, y) == pytest.approx(1.0)
    assert matthews_corrcoef(1 - y, y) == pytest.approx(-1.0)
    assert matthews_corrcoef(torch.ones(5, dtype=torch.long), y) == 0.0
