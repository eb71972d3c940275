"""Last-real-token pooling: a message's logits do not depend on how far it is padded."""
import pytest
import torch

from course_lib.classifier import add_classification_head
from course_lib.config import get_config
from course_lib.data import PAD_TOKEN_ID, pad_collate
from course_lib.model import GPTModel
from course_lib.tokenizer import get_tokenizer
from course_lib.training import (calc_loss_batch, classifier_logits, classify_text, last_position_logits,
                                 last_token_index, predictions)

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
