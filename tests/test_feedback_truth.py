"""The feedback a learner reads names the true cause of the mistake, not a neighbouring one.

Each test builds one wrong answer and asserts what the message (a visible check's, or the grader's sentence from
``describe_difference``) says about it: the cause it names is the one the answer has, the attributes it names exist
on the object the learner wrote, and it claims nothing the check did not verify. (tests/test_mutants.py checks that
every catalogued mistake is rejected with a message holding a fragment; these check that the rest of the sentence
is true for answers whose earlier messages named another cause.)"""
from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

from course_lib import checks
from course_lib.dataloaders import sequential_loader
from course_lib.lora import LinearWithLoRA as ReferenceLinearWithLoRA
from course_lib.lora import LoRALayer
from course_lib.training import calc_accuracy_loader, calc_loss_batch, calc_loss_loader
from course_tools.grading.probe import run_in
from course_tools.grading.registry import load_tests

HIDDEN = load_tests()
TESTS = {t.exercise: t for t in HIDDEN.TESTS}


def message(check, *args) -> str:
    with pytest.raises(checks.CheckFailed) as failure:
        check(*args)
    return str(failure.value)


# --------------------------------------------------------------------------- 04 · LoRALayer
def test_a_view_flatten_is_told_view_on_a_non_contiguous_input_not_which_factor_needs_a_transpose():
    class Flattening(LoRALayer):
        def forward(self, x):
            flat = x.view(-1, x.shape[-1])   # fails on the check's transposed input; .reshape() would not
            return (self.scaling * (flat @ self.A.T @ self.B.T)).view(*x.shape[:-1], -1)

    text = message(checks.check_lora_layer, Flattening)
    assert "non-contiguous view" in text and ".view() cannot reshape" in text and ".reshape(...)" in text, text
    assert "needs .T" not in text, text   # the shape hint names another cause


# --------------------------------------------------------------------------- 04 · LinearWithLoRA
def linear_with_lora(forward=None, merge=None, unmerge=None, keep=lambda linear: linear):
    """The solution's LinearWithLoRA with one method replaced, or with ``keep`` deciding what self.linear holds."""
    class Wrapped(nn.Module):
        def __init__(self, linear, rank, alpha):
            super().__init__()
            self.linear = keep(linear)
            for p in self.linear.parameters():
                p.requires_grad_(False)
            self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)
            self.merged = False

        def forward(self, x):
            if forward is not None:
                return forward(self, x)
            return self.linear(x) if self.merged else self.linear(x) + self.lora(x)

        @torch.no_grad()
        def merge(self):
            if merge is not None:
                return merge(self)
            if not self.merged:
                self.linear.weight += self.lora.scaling * (self.lora.B @ self.lora.A)
                self.merged = True

        @torch.no_grad()
        def unmerge(self):
            if unmerge is not None:
                return unmerge(self)
            if self.merged:
                self.linear.weight -= self.lora.scaling * (self.lora.B @ self.lora.A)
                self.merged = False
    return Wrapped


def test_a_lora_path_under_no_grad_is_told_the_wrappers_own_attributes():
    def forward(self, x):
        with torch.no_grad():
            delta = self.lora(x)
        return self.linear(x) + delta
    text = message(checks.check_linear_with_lora, linear_with_lora(forward=forward))
    assert "self.lora.A and self.lora.B" in text and "torch.no_grad()" in text
    assert "use self.A and self.B" not in text        # a LinearWithLoRA has no self.A: the old advice named it


def test_a_detached_b_in_the_wrapper_names_self_lora_b():
    def forward(self, x):
        return self.linear(x) + self.lora.scaling * (x @ self.lora.A.T @ self.lora.B.detach().T)
    text = message(checks.check_linear_with_lora, linear_with_lora(forward=forward))
    assert "B has no gradient" in text and "self.lora.B itself" in text


def test_wrapping_a_copy_is_named_a_copy_not_an_unfrozen_layer():
    text = message(checks.check_linear_with_lora, linear_with_lora(keep=copy.deepcopy))
    assert "copy" in text and "self.linear = linear" in text
    assert "should be frozen" not in text             # the copy it keeps is frozen: the old message blamed freezing


def test_a_merge_that_never_sets_the_flag_is_told_to_set_it():
    def merge(self):
        self.linear.weight += self.lora.scaling * (self.lora.B @ self.lora.A)
    text = message(checks.check_linear_with_lora, linear_with_lora(merge=merge))
    assert "a second time" in text and "self.merged = True" in text


def test_an_unmerge_that_keeps_the_flag_is_told_to_reset_it():
    def unmerge(self):
        if self.merged:
            self.linear.weight -= self.lora.scaling * (self.lora.B @ self.lora.A)
    text = message(checks.check_linear_with_lora, linear_with_lora(unmerge=unmerge))
    assert "unmerged one again" in text and "self.merged back to False" in text


def test_a_hand_written_backward_is_not_told_to_read_a_and_b():
    class Product(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, A, B, s):
            ctx.save_for_backward(x, A, B)
            ctx.s = s
            return s * (x @ A.T @ B.T)

        @staticmethod
        def backward(ctx, g):
            x, A, B = ctx.saved_tensors
            g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
            return ctx.s * g @ B @ A, (g2 @ B).T @ x2, ctx.s * g2.T @ (x2 @ A.T), None   # dA without s

    class Layer(LoRALayer):
        def __init__(self, in_dim, out_dim, rank, alpha):
            super().__init__(in_dim, out_dim, rank, alpha)

        def forward(self, x):
            return Product.apply(x, self.A, self.B, self.scaling)
    text = message(checks.check_lora_layer, Layer)
    assert "A's gradient differs" in text and "hand-written backward" in text


def test_a_zero_a_is_told_its_gradients_are_zero_not_missing():
    class Layer(LoRALayer):
        def __init__(self, in_dim, out_dim, rank, alpha):
            super().__init__(in_dim, out_dim, rank, alpha)
            with torch.no_grad():
                self.A.zero_()
    text = message(checks.check_lora_layer, Layer)
    layer = Layer(8, 3, 2, 4)
    layer(torch.randn(5, 8)).sum().backward()   # what the message says: gradients there, and zero
    assert layer.A.grad is not None and not layer.A.grad.any() and not layer.B.grad.any()
    assert "random, not zero" in text and "nonzero gradient" in text


# --------------------------------------------------------------------------- 06 · lora_grads
def test_db_through_x_is_told_what_db_goes_through():
    def lora_grads(x, A, B, s, g):
        return s * (g @ B).T @ x, s * g.T @ x               # dB through x, not through h = x Aᵀ
    text = message(checks.check_lora_grads, lora_grads)
    assert "dB goes through h = x Aᵀ" in text and "(4, 7)" in text   # the wrong shape it got is said


def test_gradients_of_the_sum_are_told_they_ignore_g():
    def lora_grads(x, A, B, s, g):
        A_, B_ = A.detach().clone().requires_grad_(True), B.detach().clone().requires_grad_(True)
        (s * (x @ A_.T @ B_.T)).sum().backward()
        return A_.grad, B_.grad
    text = message(checks.check_lora_grads, lora_grads)
    assert "y.sum()" in text and "upstream gradient g" in text


# --------------------------------------------------------------------------- 05 · replace_linear_with_lora
def test_names_joined_without_dots_are_told_to_add_the_dot():
    def replace(module, rank, alpha, target_modules=None, exclude=("out_head",), prefix=""):
        done = []
        for child_name, child in module.named_children():
            name = prefix + child_name
            if isinstance(child, ReferenceLinearWithLoRA):
                continue
            if isinstance(child, nn.Linear):
                if name == "out_head" or any(name.endswith("." + k) or name == k for k in exclude):
                    continue
                if target_modules is not None and not any(name == k or name.endswith("." + k) for k in target_modules):
                    continue
                setattr(module, child_name, ReferenceLinearWithLoRA(child, rank, alpha))
                done.append(name)
            else:
                done += replace(child, rank, alpha, target_modules, exclude, name)   # the dot forgotten
        return done
    text = message(checks.check_replace, replace, HIDDEN.smoke_gpt, ReferenceLinearWithLoRA)
    assert "lack their dots" in text and "trf_blocks0attW_query" in text


# --------------------------------------------------------------------------- 03 · random_split
FRAME = pd.DataFrame({"Label": [i % 2 for i in range(120)], "Text": [f"t{i}" for i in range(120)]})


def reference_split(df, train_frac=0.7, validation_frac=0.1, seed=123):
    from course_lib.sms import random_split
    return random_split(df, train_frac, validation_frac, seed)


def split_with(seed_default=123, order=(0, 1, 2)):
    def random_split(df, train_frac=0.7, validation_frac=0.1, seed=seed_default):
        shuffled = df.sample(frac=1, random_state=seed).reset_index(drop=True)
        a = int(len(shuffled) * train_frac)
        b = a + int(len(shuffled) * validation_frac)
        parts = (shuffled[:a].reset_index(drop=True), shuffled[a:b].reset_index(drop=True),
                 shuffled[b:].reset_index(drop=True))
        return tuple(parts[i] for i in order)
    return random_split


def test_another_default_seed_is_named_a_default_not_an_ignored_argument():
    text = message(checks.check_split, split_with(seed_default=42), FRAME, reference_split)
    assert "keep those defaults" in text and "seed=123" in text
    assert "using the function's seed argument" not in text   # it uses it: the default is what differs


def test_validation_and_test_swapped_are_told_the_order():
    text = message(checks.check_split, split_with(order=(0, 2, 1)), FRAME, reference_split)
    assert "(train, validation, test)" in text


# --------------------------------------------------------------------------- 01, 09 · counts as plain ints
def test_a_numpy_count_is_not_told_about_sums_started_at_0_0():
    import numpy as np

    def count_tensors(tree):
        if isinstance(tree, torch.Tensor):
            return np.int64(1)
        return sum(count_tensors(v) for v in (tree.values() if isinstance(tree, dict) else tree))
    text = message(checks.check_count_tensors, count_tensors, HIDDEN.params_tree())
    assert "numpy.int64" in text and "0.0" not in text


def test_a_right_count_as_a_float_is_told_it_is_right_but_a_float():
    pytest.importorskip("peft")
    config = TESTS["09-lora-config"].references()["lora_config"]

    def count_trainable(model):
        return float(sum(p.numel() for p in model.parameters() if p.requires_grad))
    text = message(checks.check_lora_config, config, count_trainable, HIDDEN.half_frozen())
    assert "the count is right" in text and "plain int" in text
    assert "sum p.numel()" not in text                 # it did sum p.numel(): the old advice did not fix it


# --------------------------------------------------------------------------- 07 · the training loop
def loop_with(step):
    """The solution's loop with the training step ``step(model, xb, yb, optimizer, device, index)``."""
    def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter):
        tl, vl, ta, va, seen, index = [], [], [], [], 0, -1
        train_eval_loader = sequential_loader(train_loader)
        for _ in range(num_epochs):
            model.train()
            for xb, yb in train_loader:
                index += 1
                step(model, xb, yb, optimizer, device, index)
                seen += xb.shape[0]
                if index % eval_freq == 0:
                    model.eval()
                    tl.append(calc_loss_loader(train_eval_loader, model, device, num_batches=eval_iter))
                    vl.append(calc_loss_loader(val_loader, model, device, num_batches=eval_iter))
                    model.train()
            ta.append(calc_accuracy_loader(train_eval_loader, model, device, num_batches=eval_iter))
            va.append(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter))
        return tl, vl, ta, va, seen
    return train_classifier_simple


def test_a_drift_is_blamed_on_zero_grad_only_when_zero_grad_is_the_cause():
    def doubled_after_the_first(model, xb, yb, optimizer, device, index):   # zeroes every step, yet drifts
        optimizer.zero_grad()
        (calc_loss_batch(xb, yb, model, device) * (1 if index == 0 else 2)).backward()
        optimizer.step()

    def never_zeroed(model, xb, yb, optimizer, device, index):
        calc_loss_batch(xb, yb, model, device).backward()
        optimizer.step()
    drift = message(checks.check_training_loop, loop_with(doubled_after_the_first))
    assert "drift" in drift and "as without optimizer.zero_grad()" not in drift
    assert "as without optimizer.zero_grad()" in message(checks.check_training_loop, loop_with(never_zeroed))


# --------------------------------------------------------------------------- the grader's parts
def grader_sentence(exercise: str, student: dict, seed: int) -> str:
    test = TESTS[exercise]
    want = json.loads(json.dumps(run_in(test.references(), test.probe, seed)))
    got = json.loads(json.dumps(run_in(student, test.probe, seed)))
    assert not HIDDEN.same(got, want, test.tolerance)
    return HIDDEN.describe_difference(got, want, test.tolerance, test.parts)


def test_a_second_call_that_wraps_again_is_not_said_of_the_first_call():
    from course_lib.lora import LinearWithLoRA

    def replace_linear_with_lora(module, rank, alpha, target_modules=None, exclude=("out_head",), prefix=""):
        done = []
        for child_name, child in module.named_children():   # no skip of the layers already wrapped
            name = prefix + child_name
            if isinstance(child, nn.Linear):
                if any(name == k or name.endswith("." + k) for k in exclude) or (
                        target_modules is not None and not any(name == k or name.endswith("." + k)
                                                               for k in target_modules)):
                    continue
                setattr(module, child_name, LinearWithLoRA(child, rank, alpha))
                done.append(name)
            else:
                done += replace_linear_with_lora(child, rank, alpha, target_modules, exclude, name + ".")
        return done
    sentence = grader_sentence("05-replace", {"replace_linear_with_lora": replace_linear_with_lora}, 0)
    assert "(entry [1])" in sentence and "after a second call" in sentence   # entry [1] is read after both calls


def test_an_unfreeze_that_toggles_is_not_blamed_on_freezing_a_linear():
    def unfreeze(module):
        for p in module.parameters():
            p.requires_grad_(not p.requires_grad)
    sentence = grader_sentence("06-freeze", {"freeze_model": TESTS["06-freeze"].reference(), "unfreeze": unfreeze}, 0)
    assert "(entry [2])" in sentence and "unfreeze of that sub-module again" in sentence


def test_the_thousand_odd_case_of_num_batches_claims_no_remainder():
    """Entry 7 of 03-num-batches is (1000 + SEED % 97) examples in batches of 3 + SEED % 11: an exact multiple for
    some seeds (SEED = 11: 1011 = 3 · 337), so its name must not say it is not one."""
    multiples = [seed for seed in range(100) if (1000 + seed % 97) % (3 + seed % 11) == 0]
    assert multiples
    name = TESTS["03-num-batches"].parts[7]
    assert "multiple" not in name and "drop_last=False" in name
    got = json.loads(json.dumps(run_in({"num_batches": lambda n, b, d=False: math.ceil(n / b) + 1},
                                       TESTS["03-num-batches"].probe, multiples[0])))
    assert got[7] == [True, (1000 + multiples[0] % 97) // (3 + multiples[0] % 11) + 1]   # the entry it names is that case
