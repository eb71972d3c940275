"""Last-real-token pooling: a message's logits do not depend on how far it is padded."""
import pytest
import torch

from course_lib.classifier import add_classification_head
from course_lib.config import get_config
from course_lib.dataloaders import PAD_TOKEN_ID, pad_collate
from course_lib.model import GPTModel
from course_lib.tokenizer import get_tokenizer
from course_lib.training import (
    calc_loss_batch,
    classifier_logits,
    classify_text,
    last_position_logits,
    last_token_index,
    predictions,
)

SMOKE = "gpt2-smoke (tiny)"
MESSAGES = ["WINNER!! You have won a 1000 cash prize. Call 09061701461 now to claim.",
            "Ok lar... Joking wif u oni...", "Hi", "Are you coming home for dinner tonight? Mum says 7."]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPTModel(get_config(SMOKE))
    add_classification_head(m, 2, seed=1)
    with torch.no_grad():  # a head that separates positions clearly, so that reading the wrong one shows
        m.out_head.weight.mul_(20)
    return m.eval()


def padded(ids_list, width):
    return torch.tensor([ids + [PAD_TOKEN_ID] * (width - len(ids)) for ids in ids_list])


def test_last_token_index_finds_the_last_real_token():
    x = torch.tensor([[5, 6, 7, PAD_TOKEN_ID], [5, PAD_TOKEN_ID, PAD_TOKEN_ID, PAD_TOKEN_ID], [1, 2, 3, 4],
                      [PAD_TOKEN_ID] * 4, [5, PAD_TOKEN_ID, 7, PAD_TOKEN_ID]])
    assert last_token_index(x).tolist() == [2, 0, 3, 0, 2]


def test_logits_and_predictions_do_not_depend_on_the_padding(model):
    ids = [get_tokenizer().encode(t) for t in MESSAGES]
    longest = max(map(len, ids))
    with torch.no_grad():
        per_length = [classifier_logits(model, padded(ids, width)) for width in (longest, longest + 7, 120)]
        alone = torch.cat([classifier_logits(model, torch.tensor([i])) for i in ids])
        old = [last_position_logits(model, padded(ids, width)) for width in (longest, 120)]
    for logits in per_length:
        assert torch.allclose(logits, alone, atol=1e-5), (logits - alone).abs().max()
        assert torch.equal(logits.argmax(-1), alone.argmax(-1))
    # the original reading (last padded position) does depend on it: this is what the fix removes
    assert (old[0] - old[1]).abs().max() > 1e-2


def test_loss_prediction_and_classify_text_read_the_last_real_token(model):
    tok = get_tokenizer()
    ids = [tok.encode(t) for t in MESSAGES]
    y = torch.tensor([1, 0, 0, 0])
    device = torch.device("cpu")
    losses = [calc_loss_batch(padded(ids, w), y, model, device).item() for w in (60, 120)]
    assert abs(losses[0] - losses[1]) <= 1e-5
    want = torch.nn.functional.cross_entropy(torch.cat([model(torch.tensor([i]))[:, -1] for i in ids]), y)
    assert abs(losses[0] - want.item()) <= 1e-5
    loaders = [[pad_collate([(padded([i], w)[0], torch.tensor(0)) for i in ids])] for w in (60, 120)]
    assert torch.equal(predictions(loaders[0], model, device)[0], predictions(loaders[1], model, device)[0])
    answers = {classify_text(t, model, tok, device, max_length=w) for t in MESSAGES[:1] for w in (None, 40, 120)}
    assert len(answers) == 1


def test_last_token_index_keeps_pad_ids_inside_a_message_and_handles_full_rows():
    # pad id 0 also occurs inside messages; a full-width row has no pad at all; counting would be wrong
    x = torch.tensor([[5, 0, 7, 0, 0], [4, 4, 0, 4, 0], [1, 0, 3, 4, 5]])
    assert last_token_index(x, 0).tolist() == [2, 3, 4]
    assert ((x != 0).sum(dim=1) - 1).tolist() != [2, 3, 4]
    assert last_token_index(torch.tensor([[3, 1, 4]])).tolist() == [2]
    assert last_token_index(x, 0).dtype == torch.long


STRIPPED_ROUTES = r'''
import json, sys
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from course_lib import dataloaders, distill, training

P = 50256
x = torch.tensor([[5, 6, P, P], [7, P, 8, P], [1, 2, 3, 4]])
y = torch.zeros(3, dtype=torch.long)


class Positions(nn.Module):
    """Logits that are the one-hot position: whatever reads them at a position reveals that position."""
    def forward(self, ids):
        return torch.eye(ids.shape[1]).expand(ids.shape[0], -1, -1)


class Tok:
    def encode(self, text):
        return [5, 6]


routes = {
    "last_token_index": lambda: training.last_token_index(x),
    "pool_last_token": lambda: training.pool_last_token(Positions()(x), x),
    "classifier_logits": lambda: training.classifier_logits(Positions(), x),
    "calc_loss_batch": lambda: training.calc_loss_batch(x, y, Positions(), "cpu"),
    "predictions": lambda: training.predictions([(x, y)], Positions(), "cpu"),
    "calc_accuracy_loader": lambda: training.calc_accuracy_loader([(x, y)], Positions(), "cpu"),
    "classify_text": lambda: training.classify_text("hi", Positions(), Tok(), "cpu", max_length=4),
    "pad_collate": lambda: dataloaders.pad_collate([(x[0], 0)]),
    "message_lengths": lambda: dataloaders.message_lengths(TensorDataset(x, y)),
    "length_sorted_loader": lambda: list(distill.length_sorted_loader(TensorDataset(x, y))),
    "teacher_logits_for": lambda: distill.teacher_logits_for(Positions(), DataLoader(TensorDataset(x, y)), "cpu"),
}
out = {}
for name, call in routes.items():
    try:
        call()
        out[name] = "reachable"
    except RuntimeError as err:
        out[name] = "stub" if "write it yourself" in str(err) else f"RuntimeError {err}"
    except Exception as err:
        out[name] = f"{type(err).__name__} {err}"
print(json.dumps(out))
'''


def _routes_in_stripped_course(tmp_path, exercise):
    import json
    import subprocess
    import sys
    from pathlib import Path

    import course_lib
    from course_tools.grading.probe import ALLOWED, build_stripped_course

    build_stripped_course(Path(course_lib.__file__).parent, tmp_path / "course_lib", ALLOWED.get(exercise, set()))
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
                           + STRIPPED_ROUTES], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_course_code_finds_the_last_real_token_while_07_last_token_is_graded(tmp_path):
    """The probe of 07-last-token sees a course_lib in which every function that computes (or reveals)
    each row's last real position is a stub: the exercise can only be passed by the learner's own code."""
    routes = _routes_in_stripped_course(tmp_path, "07-last-token")
    assert routes == {name: "stub" for name in routes}, routes


def test_the_training_loop_probe_still_reads_losses_through_the_library(tmp_path):
    """07-train-loop's probe needs calc_loss_batch, so there the pooling stays (and pads are read right)."""
    routes = _routes_in_stripped_course(tmp_path, "07-train-loop")
    for name in ("last_token_index", "pool_last_token", "classifier_logits", "calc_loss_batch", "predictions"):
        assert routes[name] == "reachable", routes
