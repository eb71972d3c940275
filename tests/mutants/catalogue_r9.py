"""Mutants for the ninth round of blind spots (see catalogue_a for the format): answers whose values are right but
whose side effects are not. Process-wide settings switched and left (threads, deterministic algorithms, anomaly
detection, warnings filters), files written in the working directory, hooks left on the caller's model or layer,
layers unfrozen or a model's train/eval mode switched by a function that only counts or wraps; gradients that take a
custom or partly detached path; and the right answers that must stay accepted beside them (settings changed inside
a context manager that restores them, a hook removed before returning, in-place steps autograd allows)."""

_LOOP = "    for epoch in range(num_epochs):\n"
_RETURN = "    return train_losses, val_losses, train_accs, val_accs, examples_seen"


def _before_loop(code: str) -> list:
    return [(_LOOP, code + _LOOP)]


_FORWARD = "        return self.scaling * (x @ self.A.T @ self.B.T)"
_SOFT = ("    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),\n"
         "                    F.softmax(teacher_logits.detach() / temperature, dim=-1), reduction=\"batchmean\")")
_HARD = "    hard = F.cross_entropy(student_logits, labels)"

# LoRA's forward as an autograd.Function of its own; _BACKWARD_A is its gradient for A, which the wrong variant gets
# without the scaling alpha / rank (the output's value is right either way).
_FUNCTION = """        class _LoRAProduct(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, A, B, s):
                ctx.save_for_backward(x, A, B)
                ctx.s = s
                return s * (x @ A.T @ B.T)

            @staticmethod
            def backward(ctx, g):
                x, A, B = ctx.saved_tensors
                g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
                grad_x = ctx.s * g @ B @ A
                grad_A = _BACKWARD_A
                grad_B = ctx.s * g2.T @ (x2 @ A.T)
                return grad_x, grad_A, grad_B, None

        return _LoRAProduct.apply(x, self.A, self.B, self.scaling)"""

MUTANTS = [
    # ------------------------------------------------------------------ process-wide settings left switched
    # "For reproducibility" inside the loop: every cell after it runs with four threads, or with deterministic
    # algorithms (which raise on the GPU for operations that have none).
    ("r9-sets-threads", "07-train-loop", "wrong", _before_loop("    torch.set_num_threads(4)\n"), "number of threads"),
    ("r9-deterministic-algorithms", "07-train-loop", "wrong",
     _before_loop("    torch.use_deterministic_algorithms(True)\n"), "deterministic algorithms"),
    ("r9-threads-restored", "07-train-loop", "right",
     [(_LOOP, "    threads = torch.get_num_threads()\n    torch.set_num_threads(1)\n" + _LOOP),
      (_RETURN, "    torch.set_num_threads(threads)\n" + _RETURN)], ""),
    # Anomaly detection switched on while debugging the gradients, and left on: every backward pass after it is slow.
    ("r9-anomaly-left-on", "06-lora-grads", "wrong",
     [("    h = x @ A.T\n", "    torch.autograd.set_detect_anomaly(True)\n    h = x @ A.T\n")], "anomaly detection"),
    ("r9-anomaly-left-on", "06-freeze", "wrong",
     [("def freeze_model(model: nn.Module) -> None:\n",
       "def freeze_model(model: nn.Module) -> None:\n    torch.autograd.set_detect_anomaly(True)\n")], "anomaly detection"),
    ("r9-anomaly-context", "06-lora-grads", "right",
     [("    h = x @ A.T\n", "    with torch.autograd.detect_anomaly():\n        h = x @ A.T\n")], ""),
    # kl_div's warnings silenced for the whole program: every warning of every later cell is lost.
    ("r9-warnings-ignored", "08-kd-loss", "wrong",
     [(_SOFT, "    import warnings\n    warnings.filterwarnings(\"ignore\")\n" + _SOFT)], "warnings filters"),
    ("r9-warnings-context", "08-kd-loss", "right",
     [(_SOFT, "    import warnings\n    with warnings.catch_warnings():\n        warnings.simplefilter(\"ignore\")\n    "
              + _SOFT.replace("\n", "\n    "))], ""),

    # ------------------------------------------------------------------ files written in the working directory
    ("r9-checkpoint-written", "07-train-loop", "wrong",
     [(_RETURN, "    torch.save(model.state_dict(), \"checkpoint.pth\")\n" + _RETURN)], "working directory"),
    # The book saves the three parts as CSV files after splitting; inside the function they overwrite the learner's.
    ("r9-split-writes-csv", "03-split", "wrong",
     [("    return (shuffled[:train_end]",
       "    shuffled[:train_end].to_csv(\"train.csv\", index=None)\n    return (shuffled[:train_end]")],
     "working directory"),
    ("r9-balanced-writes-csv", "03-balance", "wrong",
     [("    return balanced", "    balanced.to_csv(\"balanced.csv\", index=None)\n    return balanced")],
     "working directory"),

    # ------------------------------------------------------------------ hooks left behind
    # A forward hook to read the outputs, and gradient hooks that clip (at a bound the toy's gradients never reach,
    # so training is unchanged): never removed, they run in every later pass, and each call of the loop adds more.
    ("r9-forward-hook-left", "07-train-loop", "wrong",
     _before_loop("    outputs = []\n    model.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))\n"),
     "hooks"),
    ("r9-grad-clip-hooks-left", "07-train-loop", "wrong",
     _before_loop("    for p in model.parameters():\n        if p.requires_grad:\n"
                  "            p.register_hook(lambda g: g.clamp(-100, 100))\n"), "hooks"),
    ("r9-hook-removed", "07-train-loop", "right",
     [(_LOOP, "    outputs = []\n    handle = model.register_forward_hook(lambda m, i, o: outputs.append(o.shape))\n"
              + _LOOP),
      (_RETURN, "    handle.remove()\n" + _RETURN)], ""),
    # LoRA added by a forward hook on the caller's nn.Linear: the wrapper's output is right, but the layer itself,
    # called on its own, now adds the LoRA path too.
    ("r9-lora-as-hook-on-linear", "04-linear-with-lora", "wrong",
     [("        self.merged = False\n\n",
       "        self.merged = False\n"
       "        linear.register_forward_hook(lambda m, inp, out: out if self.merged else out + self.lora(inp[0]))\n\n"),
      ("        return self.linear(x) + self.lora(x)", "        return self.linear(x)")], "hook"),

    # ------------------------------------------------------------------ requires_grad and modes it must not touch
    ("r9-replace-unfreezes-wrapped", "05-replace", "wrong",
     [("            replaced.append(name)", "            replaced.append(name)\n            child.requires_grad_(True)")],
     "trains again"),
    ("r9-count-switches-eval", "09-lora-config", "wrong",
     [("def count_trainable(model) -> int:\n", "def count_trainable(model) -> int:\n    model.eval()\n")],
     "training mode"),
    ("r9-count-switches-train", "09-lora-config", "wrong",
     [("def count_trainable(model) -> int:\n", "def count_trainable(model) -> int:\n    model.train()\n")],
     "training mode"),
    ("r9-freeze-clears-grad", "06-freeze", "right",
     [("        p.requires_grad_(False)", "        p.requires_grad_(False)\n        p.grad = None")], ""),

    # ------------------------------------------------------------------ gradients: right value, wrong graph
    ("r9-hard-term-item", "08-kd-loss", "wrong", [(_HARD, _HARD + ".item()")], "both terms must reach the student"),
    ("r9-soft-term-item", "08-kd-loss", "wrong",
     [("    return alpha * temperature ** 2 * soft", "    return alpha * temperature ** 2 * soft.item()")],
     "both terms must reach the student"),
    ("r9-hard-sum-over-count", "08-kd-loss", "right",   # a mean written out: the same value and gradient
     [(_HARD, "    hard = F.cross_entropy(student_logits, labels, reduction=\"sum\") / labels.numel()")], ""),
    ("r9-function-backward-unscaled-A", "04-lora-layer", "wrong",
     [(_FORWARD, _FUNCTION.replace("_BACKWARD_A", "(g2 @ B).T @ x2"))], "A's gradient"),
    ("r9-function-backward-right", "04-lora-layer", "right",
     [(_FORWARD, _FUNCTION.replace("_BACKWARD_A", "ctx.s * (g2 @ B).T @ x2"))], ""),
    ("r9-scaled-in-place", "04-lora-layer", "right",   # an in-place step on an intermediate: autograd allows it
     [(_FORWARD, "        h = x @ self.A.T\n        h *= self.scaling\n        return h @ self.B.T")], ""),
]

# 07's step counter kept in a global (`global step` to silence an UnboundLocalError, after trying the loop at the top
# level of a cell): the first call is right, every later one evaluates at other steps.
MUTANTS += [
    ("r9-global-step-counter", "07-train-loop", "wrong",
     [("def train_classifier_simple(", "step = -1\n\n\ndef train_classifier_simple("),
      ("    examples_seen, step = 0, -1\n", "    global step\n    examples_seen = 0\n")], "not a global"),
    ("r9-step-counter-reset-global", "07-train-loop", "right",   # a global, but reset at the start of every call
     [("def train_classifier_simple(", "step = -1\n\n\ndef train_classifier_simple("),
      ("    examples_seen, step = 0, -1\n", "    global step\n    examples_seen, step = 0, -1\n")], ""),
]

# 05's names collected in a module-level list (the recursion appends to it, so its calls need not return anything):
# the first call is right, the second returns the first's names again.
MUTANTS += [
    ("r9-names-in-a-global-list", "05-replace", "wrong",
     [("def replace_linear_with_lora(", "_names = []\n\n\ndef replace_linear_with_lora("),
      ("    replaced = []\n", "    replaced = _names\n"),
      ("            replaced += replace_linear_with_lora(child, rank, alpha, target_modules, exclude, name + \".\")",
       "            replace_linear_with_lora(child, rank, alpha, target_modules, exclude, name + \".\")")],
     "kept between calls"),
    ("r9-einsum-forward", "04-lora-layer", "right",
     [(_FORWARD, "        return self.scaling * torch.einsum(\"...i,ri,or->...o\", x, self.A, self.B)")], ""),
]

# 04's merge() freezing A and B (merged, they would not be used) and unmerge() not switching them back on: after an
# evaluation with merged weights, the layer no longer trains.
MUTANTS += [
    ("r9-merge-freezes-lora", "04-linear-with-lora", "wrong",
     [("            self.merged = True", "            self.merged = True\n            self.lora.requires_grad_(False)")],
     "no longer train"),
    ("r9-merge-freezes-unmerge-restores", "04-linear-with-lora", "right",
     [("            self.merged = True", "            self.merged = True\n            self.lora.requires_grad_(False)"),
      ("            self.merged = False", "            self.merged = False\n            self.lora.requires_grad_(True)")], ""),
]

# The two process-wide settings the checks restored but the probes' guard did not watch (now both do): cuDNN's
# autotuner switched on "for speed", and float32 products allowed in TF32 or bf16, each left for every later cell.
MUTANTS += [
    ("r9-cudnn-benchmark", "07-train-loop", "wrong", _before_loop("    torch.backends.cudnn.benchmark = True\n"),
     "cudnn.deterministic or .benchmark"),
    ("r9-matmul-precision", "07-train-loop", "wrong", _before_loop("    torch.set_float32_matmul_precision(\"high\")\n"),
     "precision of float32 matrix products"),
]

# Answers written from the statements (helper "fair") that the probe rejected while the visible check passed them, or
# that got a message naming another cause: labels mapped with pandas 3's replace (an object column, not integers),
# and the wrapped layer kept under another name than self.linear (merge() and the grader read wrapped.linear).
MUTANTS += [
    ("r9-labels-by-replace", "03-balance", "wrong",
     [("[\"Label\"].map({\"ham\": 0, \"spam\": 1})", "[\"Label\"].replace({\"ham\": 0, \"spam\": 1})")], "integer dtype"),
    ("r9-linear-named-base", "04-linear-with-lora", "wrong", [("self.linear", "self.base")], "keep the wrapped layer as self.linear"),
]
