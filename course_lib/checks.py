"""The visible checks that follow each exercise: they run the learner's code on a few inputs
and say, in plain words, what is wrong. (The instructor's hidden tests are stricter.)"""
from __future__ import annotations

from typing import Any, Callable

import torch


class CheckFailed(AssertionError):
    """An exercise's answer is not right yet; the message says what to look at."""


def passed(what: str) -> None:
    print(f"✓ {what}")


def expect(condition: bool, message: str) -> None:
    """Raise :class:`CheckFailed` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=0)


# ----------------------------------------------------------------------------- 01
def check_count_tensors(count_tensors: Callable[[Any], int], params: Any) -> None:
    tiny = {"a": torch.zeros(2), "b": [{"c": torch.zeros(1), "d": torch.ones(3)}, {"e": torch.zeros(1)}]}
    got = count_tensors(tiny)
    expect(got == 4, f"count_tensors should find 4 tensors in {{'a': t, 'b': [{{'c': t, 'd': t}}, {{'e': t}}]}}, "
                     f"got {got}: go into dicts (their values) and lists (their items) recursively.")
    expect(count_tensors(torch.zeros(3)) == 1, "A single tensor counts as 1.")
    n_layer = len(params["blocks"])
    expected = 4 + 12 * n_layer
    got = count_tensors(params)
    expect(got == expected, f"params has {expected} tensors (4 outside the blocks, 12 per block), got {got}.")
    passed(f"count_tensors is right: {got} tensors in params")


# ----------------------------------------------------------------------------- 02
def check_settings_to_cfg(fn: Callable[..., dict], reference: Callable[..., dict]) -> None:
    settings = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}
    got = fn(dict(settings))
    want = reference(dict(settings))
    for key, value in want.items():
        expect(key in got, f"The cfg has no {key!r}; every model needs it.")
        expect(got[key] == value, f"cfg[{key!r}] should be {value!r} for GPT-2 small, got {got[key]!r}.")
    extra = set(got) - set(want)
    expect(not extra, f"The cfg has keys the model does not use: {sorted(extra)}.")
    for bad, what in ((dict(settings, n_foo=1), "unknown key 'n_foo'"),
                      ({k: v for k, v in settings.items() if k != "n_head"}, "missing key 'n_head'")):
        try:
            fn(bad)
        except KeyError as err:
            expect(what.split("'")[1] in str(err), f"The KeyError for a settings dict with a {what} "
                                                   f"should name it; it says: {err}")
        else:
            raise CheckFailed(f"A settings dict with a {what} should raise KeyError naming it.")
    passed("settings_to_cfg maps all five keys and refuses missing or unknown ones")


def check_split_c_attn(fn: Callable, emb_dim: int = 6) -> None:
    w = torch.arange(emb_dim * 3 * emb_dim, dtype=torch.float32).reshape(emb_dim, 3 * emb_dim)
    b = torch.arange(3 * emb_dim, dtype=torch.float32)
    out = fn(w, b)
    expect(isinstance(out, tuple) and len(out) == 2, "Return two tuples: (weights, biases).")
    weights, biases = out
    expect(len(weights) == 3 and len(biases) == 3, "Return three weights (q, k, v) and three biases.")
    for i, name in enumerate(("query", "key", "value")):
        want_w = w[:, i * emb_dim:(i + 1) * emb_dim].T
        expect(tuple(weights[i].shape) == (emb_dim, emb_dim),
               f"The {name} weight should have shape (out, in) = {(emb_dim, emb_dim)}, got {tuple(weights[i].shape)}.")
        if close(weights[i], want_w.T) and not close(want_w, want_w.T):
            raise CheckFailed(f"The {name} weight is not transposed: nn.Linear stores (out, in), "
                              "the checkpoint stores (in, out).")
        expect(close(weights[i], want_w), f"The {name} weight is not the {['first', 'second', 'third'][i]} "
                                          "third of c_attn's columns, transposed.")
        expect(close(biases[i], b[i * emb_dim:(i + 1) * emb_dim]), f"The {name} bias is the wrong slice.")
    passed("split_c_attn splits and transposes correctly")


# ----------------------------------------------------------------------------- 03
def check_balanced(fn: Callable, df, reference: Callable) -> None:
    got = fn(df)
    want = reference(df)
    counts = got["Label"].value_counts().to_dict()
    expect(counts == {0: 747, 1: 747}, f"The balanced set should have 747 ham (0) and 747 spam (1); it has {counts}. "
                                       "Map 'ham' to 0 and 'spam' to 1 after sampling.")
    expect(list(got["Text"]) == list(want["Text"]),
           "Counts are right but the rows differ from the reference: sample the ham rows with "
           "`.sample(n_spam, random_state=seed)` and put ham before spam.")
    passed("create_balanced_dataset: 747 ham + 747 spam, the same rows as the reference")


def check_split(fn: Callable, df, reference: Callable) -> None:
    parts = fn(df)
    expect(len(parts) == 3, "Return three DataFrames: train, validation, test.")
    sizes = tuple(len(p) for p in parts)
    expect(sizes == (1045, 149, 300), f"Split sizes should be (1045, 149, 300) for 1,494 rows, got {sizes}; "
                                      "use int(len(df) * fraction) for the cut points.")
    want = reference(df)
    for name, got_part, want_part in zip(("train", "validation", "test"), parts, want):
        expect(list(got_part["Text"]) == list(want_part["Text"]),
               f"The {name} rows differ from the reference: shuffle with df.sample(frac=1, random_state=seed) first.")
    passed("random_split: 1045 / 149 / 300, shuffled with the fixed seed")


def check_num_batches(fn: Callable, loaders: dict) -> None:
    for n, b, drop, want in ((10, 3, False, 4), (10, 3, True, 3), (9, 3, False, 3), (9, 3, True, 3), (1, 8, False, 1)):
        got = fn(n, b, drop)
        expect(got == want, f"num_batches({n}, {b}, drop_last={drop}) should be {want}, got {got}.")
    for name, loader in loaders.items():
        got = fn(len(loader.dataset), loader.batch_size, loader.drop_last)
        expect(got == len(loader), f"For the {name} loader you computed {got} batches, len(loader) is {len(loader)}.")
    passed("num_batches agrees with len(loader) for every loader")


# ----------------------------------------------------------------------------- 04
def check_lora_layer(cls: type) -> None:
    torch.manual_seed(0)
    layer = cls(in_dim=10, out_dim=6, rank=4, alpha=8)
    params = dict(layer.named_parameters())
    expect("A" in params and "B" in params, f"LoRALayer needs parameters named A and B; it has {sorted(params)}.")
    expect(tuple(layer.A.shape) == (4, 10), f"A should have shape (rank, in_dim) = (4, 10), got {tuple(layer.A.shape)}.")
    expect(tuple(layer.B.shape) == (6, 4), f"B should have shape (out_dim, rank) = (6, 4), got {tuple(layer.B.shape)}.")
    expect(torch.count_nonzero(layer.B) == 0, "B should start at zero, so the wrapped layer is unchanged at first.")
    expect(torch.count_nonzero(layer.A) == layer.A.numel() and layer.A.abs().max() <= 10 ** -0.5 + 1e-6,
           "A should be Kaiming-uniform: nn.init.kaiming_uniform_(A, a=math.sqrt(5)).")
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(3, 10)
    want = 2.0 * x @ layer.A.T @ layer.B.T
    got = layer(x)
    expect(got.shape == want.shape, f"The output should have shape {tuple(want.shape)}, got {tuple(got.shape)}.")
    if close(got, want / 2.0, atol=1e-5):
        raise CheckFailed("The output is missing the scaling alpha / rank.")
    expect(close(got, want, atol=1e-5), "forward(x) should be (alpha / rank) * x @ A.T @ B.T.")
    passed("LoRALayer: shapes, initialisation and forward are right")


def check_linear_with_lora(cls: type) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(10, 6)
    x = torch.randn(4, 10)
    wrapped = cls(linear, rank=2, alpha=4)
    expect(close(wrapped(x), linear(x)), "At initialisation (B = 0) the wrapped layer must equal the original one.")
    expect(not linear.weight.requires_grad, "The wrapped nn.Linear's weight should be frozen (requires_grad False).")
    with torch.no_grad():
        wrapped.lora.B.normal_()
    unmerged = wrapped(x)
    expect(not close(unmerged, linear(x)), "After B changes, the output should change: add self.lora(x).")
    original = linear.weight.detach().clone()
    wrapped.merge()
    expect(close(wrapped(x), unmerged, atol=1e-5), "After merge() the output should not change.")
    expect(not close(linear.weight, original), "merge() should add (alpha / rank) * B @ A to the weight.")
    wrapped.unmerge()
    expect(close(linear.weight, original, atol=1e-6), "unmerge() should restore the original weight.")
    expect(close(wrapped(x), unmerged, atol=1e-5), "After unmerge() the output should be the unmerged one again.")
    passed("LinearWithLoRA: identical at init, frozen base, merge and unmerge are exact")


# ----------------------------------------------------------------------------- 05
def check_replace(fn: Callable, make_model: Callable, wrapper: type) -> None:
    model = make_model()
    replaced = fn(model, rank=2, alpha=4)
    expect(isinstance(replaced, list), "Return the list of names of the layers you wrapped.")
    names = [n for n, m in model.named_modules() if isinstance(m, wrapper)]
    expect(len(names) == 12, f"The smoke model has 12 Linear layers in its blocks; {len(names)} were wrapped.")
    expect("out_head" not in names, "out_head must be left out (it is in `exclude`).")
    expect(sorted(replaced) == sorted(names), "The returned names should be exactly the layers you wrapped.")
    expect(fn(model, rank=2, alpha=4) == [], "A second call must wrap nothing: skip layers that are already wrapped.")
    targeted = fn(make_model(), rank=2, alpha=4, target_modules=["W_query", "W_value"])
    expect(len(targeted) == 4 and all(n.endswith(("W_query", "W_value")) for n in targeted),
           f"With target_modules=['W_query', 'W_value'] only those 4 layers should be wrapped, got {targeted}.")
    passed("replace_linear_with_lora: all 12 block layers, not out_head, idempotent, targets respected")


# ----------------------------------------------------------------------------- 06
def check_freeze(freeze: Callable, unfreeze: Callable, make_model: Callable) -> None:
    model = make_model()
    freeze(model)
    expect(all(not p.requires_grad for p in model.parameters()), "freeze_model should set requires_grad=False everywhere.")
    unfreeze(model.out_head)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expect(trainable == {n for n, _ in model.named_parameters() if n.startswith("out_head.")},
           f"unfreeze(model.out_head) should make only out_head trainable, got {sorted(trainable)[:4]}.")
    passed("freeze_model and unfreeze set exactly the parameters they should")


def check_lora_grads(fn: Callable) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    A = torch.randn(3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    (1.5 * x @ A.T @ B.T).backward(g)
    dA, dB = fn(x, A.detach(), B.detach(), 1.5, g)
    expect(tuple(dA.shape) == (3, 7) and tuple(dB.shape) == (4, 3), "dA must have A's shape and dB B's shape.")
    expect(close(dB, B.grad, atol=1e-10), "dB is wrong: y = s·(x Aᵀ) Bᵀ, so dB = s · gᵀ (x Aᵀ).")
    expect(close(dA, A.grad, atol=1e-10), "dA is wrong: dA = s · (g B)ᵀ x.")
    passed("your dA and dB equal autograd's")


# ----------------------------------------------------------------------------- 07
def check_training_loop(fn: Callable, make_setup: Callable) -> None:
    """Run the learner's loop and course_lib's on identical fresh set-ups; the losses must agree."""
    from .training import train_classifier

    model, train_loader, val_loader, optimizer, device = make_setup()
    out = fn(model, train_loader, val_loader, optimizer, device, num_epochs=1, eval_freq=2, eval_iter=1)
    expect(isinstance(out, tuple) and len(out) == 5,
           "Return (train_losses, val_losses, train_accs, val_accs, examples_seen).")
    train_losses, val_losses, train_accs, val_accs, examples_seen = out
    model, train_loader, val_loader, optimizer, device = make_setup()
    ref = train_classifier(model, train_loader, val_loader, optimizer, device, num_epochs=1, eval_freq=2,
                           eval_iter=1, progress=False)
    expect(examples_seen == ref.examples_seen,
           f"examples_seen should be {ref.examples_seen} (add input_batch.shape[0] each step), got {examples_seen}.")
    expect(len(train_losses) == len(ref.train_losses),
           f"Evaluate every eval_freq steps (step % eval_freq == 0): expected {len(ref.train_losses)} "
           f"losses, got {len(train_losses)}.")
    expect(all(abs(a - b) < 1e-4 for a, b in zip(train_losses, ref.train_losses)),
           "Your training losses differ from the reference: call optimizer.zero_grad() before loss.backward() "
           "and optimizer.step() after it, once per batch.")
    expect(len(train_accs) == 1 and abs(train_accs[0] - ref.train_accs[0]) < 1e-6,
           "Compute the training and validation accuracy once per epoch, on eval_iter batches.")
    passed("the training loop matches the reference step for step")


# ----------------------------------------------------------------------------- 08
def check_kd_loss(fn: Callable) -> None:
    from .distill import distillation_loss

    gen = torch.Generator().manual_seed(0)
    student = torch.randn(6, 2, generator=gen, requires_grad=True)
    teacher = torch.randn(6, 2, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0, 1, 1])
    ce = torch.nn.functional.cross_entropy(student, labels)
    got0 = fn(student, teacher, labels, temperature=2.0, alpha=0.0)
    expect(torch.allclose(got0, ce, atol=1e-6), f"With alpha = 0 the loss must be plain cross-entropy ({ce.item():.4f}), "
                                                f"got {got0.item():.4f}.")
    same = fn(teacher.detach(), teacher.detach(), labels, temperature=2.0, alpha=1.0)
    expect(abs(same.item()) < 1e-6, f"When student and teacher logits are equal the KL term is 0; with alpha = 1 "
                                    f"the loss should be 0, got {same.item():.4f}. Check the direction of kl_div's arguments.")
    want = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.7)
    got = fn(student, teacher, labels, temperature=2.0, alpha=0.7)
    if torch.allclose(got, (want - 0.3 * ce) / 4 + 0.3 * ce, atol=1e-5):
        raise CheckFailed("The soft term is missing its T² factor.")
    expect(torch.allclose(got, want, atol=1e-5), f"For alpha = 0.7, T = 2 the loss should be {want.item():.4f}, got "
                                                 f"{got.item():.4f}: use kl_div(log_softmax(student/T), softmax(teacher/T), "
                                                 "reduction='batchmean').")
    got.backward()
    expect(teacher.grad is None or torch.count_nonzero(teacher.grad) == 0,
           "No gradient may flow into the teacher: detach the teacher's logits.")
    expect(student.grad is not None and torch.count_nonzero(student.grad) > 0, "The student must receive a gradient.")
    passed("distillation loss: right value, both limits hold, and only the student gets gradients")


# ----------------------------------------------------------------------------- 09
def check_lora_config(config, count_trainable: Callable, model) -> None:
    want = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.15, "bias": "none"}
    for key, value in want.items():
        got = getattr(config, key, None)
        expect(got == value, f"LoraConfig.{key} should be {value!r} (the seed's value), got {got!r}.")
    expect(set(config.target_modules or []) == {"query", "value"},
           f"target_modules should be ['query', 'value'], got {config.target_modules!r}.")
    expect(str(getattr(config.task_type, "value", config.task_type)) == "SEQ_CLS",
           f"task_type should be 'SEQ_CLS' (sequence classification), got {config.task_type!r}.")
    got = count_trainable(model)
    want_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expect(got == want_count, f"count_trainable should count parameters with requires_grad: {want_count:,}, got {got!r}.")
    passed("the LoraConfig is the seed's, and the trainable count is right")
