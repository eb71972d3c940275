"""Knowledge distillation: a small recurrent student learns from a fine-tuned GPT-2 teacher.

The student matches the teacher's softened probabilities (temperature T) as well as the true
labels: loss = alpha · T² · KL(p_teacher^T ‖ p_student^T) + (1 − alpha) · CE(student, labels).

Why T² (Hinton, Vinyals and Dean, 2015, "Distilling the Knowledge in a Neural Network", §2 and
§2.1, eqs. 2–4): with q = softmax(z/T) the student's and p = softmax(v/T) the teacher's softened
probabilities, the soft term's gradient with respect to a student logit is (1/T)(q_i − p_i). One 1/T
is the chain rule through z/T. The second comes from the probabilities themselves: when T is large
beside the logits, exp(x/T) ≈ 1 + x/T, and with logits of zero mean over the N classes
q_i − p_i ≈ (z_i − v_i)/(N·T), so the gradient is about (z_i − v_i)/(N·T²). Multiplying the soft
term by T² therefore keeps the *relative* contributions of the soft and hard terms roughly unchanged
when T is changed; it does not make the two terms equally large. With two classes, as on CoLA, a
softened distribution is one number, sigmoid((z_1 − z_0)/T): the teacher's confidence, nothing else.

Teacher and student read the same batches: each padded on the right only to its longest sentence
(``course_lib.dataloaders.pad_collate``), the teacher's logits taken at each sentence's last real token
(``course_lib.training.classifier_logits``), the student's RNN stopped at each sentence's length.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from functools import partial
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from .dataloaders import PAD_TOKEN_ID, LengthBucketSampler, message_lengths, pad_collate

class DistilRNN(nn.Module):
    """Token embedding → RNN (GRU or LSTM selectable) → Linear to ``num_classes``, reading each
    sequence up to its last real token (padding is skipped)."""

    def __init__(self, vocab_size: int = 50257, emb_dim: int = 768, hidden_dim: int = 768,
                 num_classes: int = 2, rnn_type: str = "rnn", pad_token_id: int = PAD_TOKEN_ID) -> None:
        super().__init__()
        kinds = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
        if rnn_type not in kinds:
            raise ValueError(f"rnn_type must be one of {list(kinds)}, got {rnn_type!r}.")
        self.pad_token_id = pad_token_id
        self.embedding = nn.Embedding(vocab_size, emb_dim)
        self.rnn = kinds[rnn_type](emb_dim, hidden_dim, batch_first=True)
        self.fc = nn.Linear(hidden_dim, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, classes) logits from the RNN's hidden state after each sequence's last real token."""
        # pack_padded_sequence wants the lengths on the CPU, whatever device the batch is on
        lengths = (input_ids != self.pad_token_id).sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(input_ids), lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, hidden = self.rnn(packed)
        if isinstance(hidden, tuple):  # LSTM returns (h, c)
            hidden = hidden[0]
        return self.fc(hidden[-1])


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE(student, labels).

    The KL term is ``F.kl_div(log-probabilities of the student, probabilities of the teacher)``, which
    computes KL(teacher ‖ student), summed over the classes and averaged over the batch
    (``reduction="batchmean"``; ``"mean"`` would also divide by the number of classes). The teacher's
    logits are detached: only the student learns. The cross-entropy reads the student's raw logits, not
    the softened ones. Why T²: this module's docstring (Hinton et al. 2015, §2). Notebook 08's exercise."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.softmax(teacher_logits.detach() / temperature, dim=-1), reduction="batchmean")
    hard = F.cross_entropy(student_logits, labels)
    return alpha * temperature ** 2 * soft + (1 - alpha) * hard


def length_sorted_loader(dataset: Dataset, batch_size: int = 32, pad_token_id: int = PAD_TOKEN_ID) -> DataLoader:
    """Batches of sentences sorted by length, each padded to its longest: the least padding, for
    evaluation and caching, where the order does not matter."""
    lengths = message_lengths(dataset, pad_token_id)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, collate_fn=partial(pad_collate, pad_token_id=pad_token_id))


class TeacherOutputs(Dataset):
    """Sentences (right-padded), labels and the teacher's logits, kept so the student's epochs
    never run the teacher again. Items are (ids, label, teacher_logits); ``lengths`` are real tokens."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                 pad_token_id: int = PAD_TOKEN_ID) -> None:
        self.tensors = (inputs, labels, logits)
        self.pad_token_id = pad_token_id
        self.lengths = (inputs != pad_token_id).sum(dim=1).tolist()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return len(self.tensors[1])


def _bar(total: int, desc: str, progress: bool | None):
    from tqdm.auto import tqdm

    if progress is None:
        progress = not os.environ.get("TQDM_DISABLE")
    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


def _collate_with_logits(batch: list, pad_token_id: int = PAD_TOKEN_ID) -> tuple[torch.Tensor, ...]:
    x, y = pad_collate([(ids, label) for ids, label, _ in batch], pad_token_id)
    return x, y, torch.stack([logits for _, _, logits in batch])


@torch.no_grad()
def teacher_logits_for(teacher: nn.Module, loader: DataLoader, device: torch.device,
                       pad_token_id: int = PAD_TOKEN_ID, progress: bool = False) -> TeacherOutputs:
    """Run the teacher once over ``loader`` and keep (inputs, labels, logits at each sentence's
    last real token): the student's epochs then reuse them instead of running GPT-2 again."""
    from .training import classifier_logits, last_token_index

    was_training = teacher.training
    teacher.eval()
    rows, ys, logits = [], [], []
    bar = _bar(len(loader), "teacher logits", progress)
    for x, y in loader:
        logits.append(classifier_logits(teacher, x.to(device), pad_token_id=pad_token_id).float().cpu())
        ends = last_token_index(x, pad_token_id) + 1
        rows += [row[:end] for row, end in zip(x, ends.tolist())]
        ys.append(y)
        bar.update(1)
    bar.close()
    teacher.train(was_training)
    width = max(1, max(len(r) for r in rows))
    inputs = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        inputs[i, :len(r)] = r
    return TeacherOutputs(inputs, torch.cat(ys), torch.cat(logits), pad_token_id)


def student_loader(cached: TeacherOutputs, batch_size: int = 32, seed: int = 123) -> DataLoader:
    """The student's training batches: similar lengths grouped, each padded to its longest, the
    batches shuffled as a whole (the same order for the same seed)."""
    sampler = LengthBucketSampler(cached.lengths, batch_size, seed=seed)
    return DataLoader(cached, batch_sampler=sampler, collate_fn=partial(_collate_with_logits,
                                                                       pad_token_id=cached.pad_token_id))


def _adamw(params, lr: float, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernel computes the same AdamW update in one pass; with the student's 50,257-row
    # embedding it was 2.6x faster on a 2-core CPU (one measurement). Builds without it get the plain loop.
    # Weight decay: PyTorch's default 0.01 (the teacher's is 0.1); not tuned.
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, fused=torch.device(device).type in ("cpu", "cuda", "mps"))
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr)


@dataclass
class StudentHistory:
    """Per epoch: the mean training loss and the validation accuracy and MCC."""

    train_losses: list[float] = field(default_factory=list)
    val_accs: list[float] = field(default_factory=list)
    val_mccs: list[float] = field(default_factory=list)


def train_student(student: nn.Module, cached: TeacherOutputs, val_loader: DataLoader, device: torch.device,
                  num_epochs: int, batch_size: int = 32, lr: float = 1e-3, temperature: float = 2.0,
                  alpha: float = 0.5, use_kd: bool = True, seed: int = 123,
                  progress: bool | None = None) -> StudentHistory:
    """Train ``student`` on the cached teacher outputs; ``use_kd=False`` trains on labels alone
    (plain cross-entropy) with the same batches, for a fair comparison. ``batch_size`` 32 and ``lr`` 1e-3
    (PyTorch's AdamW default) are not tuned; the pretrained proxy (benchmarks/pretrained_proxy.py,
    docs/benchmarks.md) is the only measurement at them."""
    from .training import accuracy_and_mcc

    student.to(device)
    optimizer = _adamw(student.parameters(), lr, device)
    loader = student_loader(cached, batch_size, seed)
    history = StudentHistory()
    for epoch in range(num_epochs):
        student.train()
        total, batches = 0.0, 0
        bar = _bar(len(loader), f"student epoch {epoch + 1}/{num_epochs}", progress)
        for x, y, t in loader:
            x, y, t = x.to(device), y.to(device), t.to(device)
            optimizer.zero_grad()
            logits = student(x)
            loss = distillation_loss(logits, t, y, temperature, alpha) if use_kd else F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
            bar.update(1)
        bar.close()
        history.train_losses.append(total / max(1, batches))
        acc, mcc = accuracy_and_mcc(val_loader, as_sequence_classifier(student), device)
        history.val_accs.append(acc)
        history.val_mccs.append(mcc)
    return history


def _train_seeded(make_student: Callable[[], nn.Module], cached: TeacherOutputs, val_loader: DataLoader,
                  device: torch.device, seed: int, num_epochs: int, use_kd: bool, **train_kwargs
                  ) -> tuple[nn.Module, StudentHistory]:
    """A student built and trained from ``seed``: the same seed gives the same initial weights and batches."""
    from .profiles import set_seed

    set_seed(seed)
    student = make_student()
    history = train_student(student, cached, val_loader, device, num_epochs, use_kd=use_kd, seed=seed,
                            **train_kwargs)
    return student, history


def compare_kd(make_student: Callable[[], nn.Module], cached: TeacherOutputs, val_loader: DataLoader,
               device: torch.device, seeds: list[int], num_epochs: int, **train_kwargs) -> list[dict]:
    """Train one student without and one with distillation for each seed (same initial weights
    and batches within a seed); one row per run: seed, kd, history, final validation acc and MCC."""
    rows = []
    for seed in seeds:
        for use_kd in (False, True):
            student, history = _train_seeded(make_student, cached, val_loader, device, seed, num_epochs, use_kd,
                                             **train_kwargs)
            rows.append({"seed": seed, "kd": use_kd, "student": student, "history": history,
                         "accuracy": history.val_accs[-1], "mcc": history.val_mccs[-1]})
    return rows


def kd_sweep(make_student: Callable[[], nn.Module], cached: TeacherOutputs, val_loader: DataLoader,
             device: torch.device, seeds: list[int], num_epochs: int, settings: list[tuple[float, float]],
             **train_kwargs) -> list[dict]:
    """One distilled student per (temperature, alpha) in ``settings`` and per seed, each started as
    ``compare_kd`` starts the same seed, so it pairs with that seed's student trained without
    distillation. One row per run: temperature, alpha, seed, final validation accuracy and MCC."""
    rows = []
    for temperature, alpha in settings:
        for seed in seeds:
            _, history = _train_seeded(make_student, cached, val_loader, device, seed, num_epochs, True,
                                       temperature=temperature, alpha=alpha, **train_kwargs)
            rows.append({"temperature": temperature, "alpha": alpha, "seed": seed,
                         "accuracy": history.val_accs[-1], "mcc": history.val_mccs[-1]})
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def majority_baseline(labels) -> tuple[int, float]:
    """The most common class and the accuracy of always predicting it (its share of ``labels``)."""
    labels = torch.as_tensor(list(labels) if not torch.is_tensor(labels) else labels).long()
    if labels.numel() == 0:
        raise ValueError("majority_baseline needs at least one label.")
    counts = torch.bincount(labels)
    return int(counts.argmax()), counts.max().item() / labels.numel()


@dataclass(frozen=True)
class BaselineCheck:
    """How a classifier's predictions compare with always answering the majority class."""

    n: int
    majority_class: int
    majority_accuracy: float     # accuracy of always answering the majority class
    accuracy: float
    mcc: float
    predicted_majority: float    # share of predictions that are the majority class
    chance_mcc: float            # |MCC| that label-independent predictions stay below ~95% of the time

    @property
    def constant(self) -> bool:
        """Every prediction is the same class."""
        return self.predicted_majority in (0.0, 1.0)

    @property
    def beats_baseline(self) -> bool:
        """Its MCC is above what predictions independent of the labels reach by chance."""
        return not self.constant and self.mcc > self.chance_mcc

    def describe(self, who: str = "the teacher", class_names: tuple[str, ...] = ("unacceptable", "acceptable")) -> str:
        """Plain sentences saying whether ``who`` sits at the majority baseline, and what follows."""
        name = class_names[self.majority_class]
        facts = (f"{who} answers '{name}' for {self.predicted_majority:.1%} of the {self.n} sentences; accuracy "
                 f"{self.accuracy:.1%} against the majority baseline's {self.majority_accuracy:.1%}; MCC "
                 f"{self.mcc:+.3f}, where label-independent guessing stays within ±{self.chance_mcc:.3f} "
                 "about 95% of the time.")
        if self.constant:
            return (f"AT THE BASELINE: {facts} It predicts one class for every sentence, so its MCC is undefined "
                    "(0/0, reported as 0): it has learned nothing a constant could not say, and a student "
                    "distilled from it can learn only that constant.")
        if not self.beats_baseline:
            return (f"AT THE BASELINE: {facts} Its MCC is within what chance produces, so there is no evidence "
                    "that it has learned the task: a comparison of students distilled from it shows noise.")
        return f"ABOVE THE BASELINE: {facts} Its MCC is beyond chance: it has something to teach."


def check_baseline(predicted: torch.Tensor, true: torch.Tensor) -> BaselineCheck:
    """Compare binary predictions with the majority-class baseline of ``true`` (see BaselineCheck)."""
    from .stats import chance_mcc
    from .training import matthews_corrcoef

    predicted, true = torch.as_tensor(predicted).long().flatten(), torch.as_tensor(true).long().flatten()
    if predicted.shape != true.shape:
        raise ValueError(f"got {predicted.numel()} predictions for {true.numel()} labels; pass one per sentence.")
    majority, majority_accuracy = majority_baseline(true)
    return BaselineCheck(n=true.numel(), majority_class=majority, majority_accuracy=majority_accuracy,
                         accuracy=(predicted == true).float().mean().item(),
                         mcc=matthews_corrcoef(predicted, true),
                         predicted_majority=(predicted == majority).float().mean().item(),
                         chance_mcc=chance_mcc(true.numel()))


@dataclass(frozen=True)
class ParameterShare:
    """A model's parameters: all, trainable, and those in its embedding tables (token and position)."""

    total: int
    trainable: int
    embedding: int

    @property
    def embedding_share(self) -> float:
        return self.embedding / self.total


def parameter_share(model: nn.Module) -> ParameterShare:
    """Count ``model``'s parameters (each shared tensor once) and how many sit in ``nn.Embedding`` tables."""
    unique = {id(p): p for p in model.parameters()}
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    return ParameterShare(total=sum(p.numel() for p in unique.values()),
                          trainable=sum(p.numel() for p in unique.values() if p.requires_grad),
                          embedding=sum(unique[i].numel() for i in embedding))


def architecture_shares(model_size: str, lora_rank: int, lora_alpha: float, student_dim: int,
                        rnn_type: str = "rnn") -> dict[str, ParameterShare]:
    """Teacher (``model_size`` GPT-2 with a 2-class head and LoRA on every block's Linear) and
    ``DistilRNN`` student, built on PyTorch's meta device: exact counts with no weights, memory or download."""
    from .config import get_config
    from .model import GPTModel
    from .strategies import add_classification_head, configure_trainable

    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # the caller's random state stays as it was
        teacher = GPTModel(get_config(model_size))
        add_classification_head(teacher, 2)
        configure_trainable(teacher, "lora", lora_rank, lora_alpha)
        student = DistilRNN(emb_dim=student_dim, hidden_dim=student_dim, rnn_type=rnn_type)
    return {"teacher": parameter_share(teacher), "student": parameter_share(student)}


class _LastTokenAdapter(nn.Module):
    """Presents a (batch, classes) classifier as (batch, 1, classes), the shape GPT-style
    helpers such as ``calc_accuracy_loader`` read the last position from."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).unsqueeze(1)


def as_sequence_classifier(model: nn.Module) -> nn.Module:
    """Wrap a (batch, classes) model so that course_lib.training's metrics can evaluate it."""
    return _LastTokenAdapter(model)
