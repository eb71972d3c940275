"""Knowledge distillation: a small recurrent student learns from a fine-tuned GPT-2 teacher.

The student matches the teacher's softened probabilities (temperature T) as well as the true
labels: loss = alpha · T² · KL(p_teacher^T ‖ p_student^T) + (1 − alpha) · CE(student, labels).
The T² keeps the soft term's gradients on the same scale as the hard term's (Hinton et al., 2015).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from .data import PAD_TOKEN_ID


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
        lengths = (input_ids != self.pad_token_id).sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(input_ids), lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, hidden = self.rnn(packed)
        if isinstance(hidden, tuple):  # LSTM returns (h, c)
            hidden = hidden[0]
        return self.fc(hidden[-1])


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE(student, labels)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.softmax(teacher_logits.detach() / temperature, dim=-1), reduction="batchmean")
    hard = F.cross_entropy(student_logits, labels)
    return alpha * temperature ** 2 * soft + (1 - alpha) * hard


@torch.no_grad()
def teacher_logits_for(teacher: nn.Module, loader: DataLoader, device: torch.device) -> TensorDataset:
    """Run the teacher once over ``loader`` (not shuffled) and keep (inputs, labels, logits):
    the student's epochs then reuse them instead of running GPT-2 again."""
    teacher.eval()
    xs, ys, logits = [], [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        logits.append(teacher(x.to(device))[:, -1, :].float().cpu())
    return TensorDataset(torch.cat(xs), torch.cat(ys), torch.cat(logits))


@dataclass
class StudentHistory:
    train_losses: list[float] = field(default_factory=list)
    val_accs: list[float] = field(default_factory=list)


def train_student(student: nn.Module, cached: TensorDataset, val_loader: DataLoader, device: torch.device,
                  num_epochs: int, batch_size: int = 32, lr: float = 1e-3, temperature: float = 2.0,
                  alpha: float = 0.5, use_kd: bool = True, seed: int = 123) -> StudentHistory:
    """Train ``student`` on the cached teacher outputs; ``use_kd=False`` trains on labels alone
    (plain cross-entropy) from the same seed, for a fair comparison."""
    from .training import calc_accuracy_loader

    student.to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    loader = DataLoader(cached, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    history = StudentHistory()
    for _ in range(num_epochs):
        student.train()
        total, batches = 0.0, 0
        for x, y, t in loader:
            x, y, t = x.to(device), y.to(device), t.to(device)
            optimizer.zero_grad()
            logits = student(x)
            loss = distillation_loss(logits, t, y, temperature, alpha) if use_kd else F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        history.train_losses.append(total / max(1, batches))
        history.val_accs.append(calc_accuracy_loader(val_loader, as_sequence_classifier(student), device))
    return history


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
