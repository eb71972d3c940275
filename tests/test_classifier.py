import torch

from course_lib.classifier import add_classification_head
from course_lib.config import SMOKE_MODEL, get_config
from course_lib.model import GPTModel


def _model():
    torch.manual_seed(0)
    return GPTModel(get_config(SMOKE_MODEL))


def test_a_seeded_head_is_the_same_head_whatever_the_global_random_state():
    torch.manual_seed(1)
    first = add_classification_head(_model(), 2, seed=7).weight.detach().clone()
    torch.manual_seed(2)
    second = add_classification_head(_model(), 2, seed=7).weight.detach().clone()
    assert torch.equal(first, second)


def test_a_seeded_head_leaves_the_callers_random_stream_where_it_was():
    model = _model()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    add_classification_head(model, 2, seed=123)
    assert torch.equal(torch.rand(3), expected)


def test_an_unseeded_head_draws_from_the_global_stream():
    model = _model()
    a = add_classification_head(model, 2, seed=None).weight.detach().clone()
    b = add_classification_head(model, 2, seed=None).weight.detach().clone()
    assert not torch.equal(a, b)
