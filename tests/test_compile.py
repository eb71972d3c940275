"""``--compile`` (off by default) reaches train_classifier, which then trains through torch.compile's module."""
import torch

from course_lib.dataloaders import create_dataloaders
from course_lib.profiles import set_seed
from course_lib.sms import prepare_sms_splits
from course_lib.strategies import build_classifier
from course_lib.tokenizer import get_tokenizer
from course_lib.training import train_classifier
from course_tools import cli


def test_experiment_compile_flag_is_off_by_default_and_reaches_train_classifier(tmp_path, monkeypatch):
    import course_lib.experiment as experiment

    seen = []
    monkeypatch.setattr(experiment, "run_experiment", lambda cfg: seen.append(cfg.compile) or [])
    assert cli.main(["experiment", "--profile", "smoke", "--output-dir", str(tmp_path)]) == 0
    assert cli.main(["experiment", "--profile", "smoke", "--compile", "--output-dir", str(tmp_path)]) == 0
    assert seen == [False, True]


def test_train_classifier_with_compile_trains_through_the_compiled_module(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    train, val, _ = create_dataloaders(prepare_sms_splits(tmp_path), get_tokenizer(), batch_size=8,
                                       context_length=128, max_examples=16, batching="bucketed")
    calls = []

    class Compiled(torch.nn.Module):  # stands in for torch.compile's OptimizedModule (same calls, no compiling)
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            calls.append(torch.is_grad_enabled())
            return self.model(x)

    monkeypatch.setattr(torch, "compile", Compiled)
    for compile_ in (False, True):
        set_seed(123)
        model = build_classifier("gpt2-smoke (tiny)", "lora", rank=4, alpha=8)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        train_classifier(model, train, val, optimizer, torch.device("cpu"), num_epochs=1, eval_freq=1, eval_iter=1,
                         progress=False, compile=compile_)
        assert (len(calls) > 0) == compile_
    assert True in calls and False in calls  # training steps and evaluations both ran through it
