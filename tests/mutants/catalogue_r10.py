"""Mutants for the tenth round (see catalogue_a for the format). First, right answers that touch what the ninth
round's guards watch, harmlessly, as a learner would: a tqdm.auto bar around the training loader, prints, evaluation
under torch.no_grad() or torch.inference_mode(), hooks removed in a finally block, a checkpoint in tempfile's folder,
warnings silenced or threads changed inside a context manager that restores them, the mode saved and put back. The
tqdm.auto bar was rejected by 07's check and probe (tqdm 4.70's tqdm.asyncio calls iter() on the loader in __init__,
and every DataLoader iterator draws a seed from the loader's generator, which shifted the shuffling); their
training loaders now shuffle with a sampler of their own. Second, plausible wrong answers in the exercises with the
fewest mutants (01, 02, 03-num-batches, 06-lora-grads, 09)."""

_LOOP = "    for epoch in range(num_epochs):\n"
_INNER = "        for input_batch, target_batch in train_loader:\n"
_RETURN = "    return train_losses, val_losses, train_accs, val_accs, examples_seen"
_EVAL = ("                model.eval()\n"
         "                train_losses.append(calc_loss_loader(train_eval_loader, model, device, num_batches=eval_iter))\n"
         "                val_losses.append(calc_loss_loader(val_loader, model, device, num_batches=eval_iter))\n"
         "                model.train()\n")
_SOFT = ("    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),\n"
         "                    F.softmax(teacher_logits.detach() / temperature, dim=-1), reduction=\"batchmean\")")
# A forward hook that records the outputs' norms, removed in a finally block (the loop indented under try:).
_ACCS = ("        train_accs.append(calc_accuracy_loader(train_eval_loader, model, device, num_batches=eval_iter))\n"
         "        val_accs.append(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter))\n")
_HOOK_TRY_FINALLY = """from course_lib.dataloaders import sequential_loader
from course_lib.training import calc_loss_batch


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter):
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, step = 0, -1
    train_eval_loader = sequential_loader(train_loader)
    norms = []
    handle = model.register_forward_hook(lambda m, i, o: norms.append(o.detach().norm().item()))
    try:
        for epoch in range(num_epochs):
            model.train()
            for input_batch, target_batch in train_loader:
                optimizer.zero_grad()
                loss = calc_loss_batch(input_batch, target_batch, model, device)
                loss.backward()
                optimizer.step()
                examples_seen += input_batch.shape[0]
                step += 1
                if step % eval_freq == 0:
                    model.eval()
                    train_losses.append(calc_loss_loader(train_eval_loader, model, device, num_batches=eval_iter))
                    val_losses.append(calc_loss_loader(val_loader, model, device, num_batches=eval_iter))
                    model.train()
            train_accs.append(calc_accuracy_loader(train_eval_loader, model, device, num_batches=eval_iter))
            val_accs.append(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter))
    finally:
        handle.remove()
    return train_losses, val_losses, train_accs, val_accs, examples_seen
"""
MUTANTS = [
  # ------------------------------------------------------------------ right answers that touch guarded state harmlessly
  ("r10-tqdm-bar", "07-train-loop", "right",
   [(_INNER, "        from tqdm.auto import tqdm\n        for input_batch, target_batch in tqdm(train_loader, desc=f\"epoch {epoch + 1}\", leave=False):\n")], ""),
  ("r10-tqdm-epochs", "07-train-loop", "right",
   [(_LOOP, "    from tqdm.auto import trange\n    for epoch in trange(num_epochs, desc=\"epochs\"):\n")], ""),
  ("r10-model-to-device", "07-train-loop", "right", [(_LOOP, "    model.to(device)\n" + _LOOP)], ""),
  ("r10-print-progress", "07-train-loop", "right",
   [(_EVAL, _EVAL + "                print(f\"Ep {epoch + 1} (step {step:06d}): train loss {train_losses[-1]:.3f}, val loss {val_losses[-1]:.3f}\")\n")], ""),
  ("r10-eval-under-no-grad", "07-train-loop", "right",
   [(_EVAL, "                model.eval()\n                with torch.no_grad():\n"
            "                    train_losses.append(calc_loss_loader(train_eval_loader, model, device, num_batches=eval_iter))\n"
            "                    val_losses.append(calc_loss_loader(val_loader, model, device, num_batches=eval_iter))\n"
            "                model.train()\n")], ""),
  ("r10-inference-mode", "07-train-loop", "right",
   [(_EVAL, "                model.eval()\n                with torch.inference_mode():\n"
            "                    train_losses.append(calc_loss_loader(train_eval_loader, model, device, num_batches=eval_iter))\n"
            "                    val_losses.append(calc_loss_loader(val_loader, model, device, num_batches=eval_iter))\n"
            "                model.train()\n")], ""),
  ("r10-hook-try-finally", "07-train-loop", "right", _HOOK_TRY_FINALLY, ""),
  ("r10-grad-hooks-removed", "07-train-loop", "right",
   [(_LOOP, "    handles = [p.register_hook(lambda g: g.clamp(-100, 100)) for p in model.parameters() if p.requires_grad]\n" + _LOOP),
    (_RETURN, "    for h in handles:\n        h.remove()\n" + _RETURN)], ""),
  ("r10-checkpoint-in-tempdir", "07-train-loop", "right",
   [(_RETURN, "    import os, tempfile\n    with tempfile.TemporaryDirectory() as folder:\n"
              "        torch.save(model.state_dict(), os.path.join(folder, \"best.pth\"))\n" + _RETURN)], ""),
  ("r10-catch-warnings", "07-train-loop", "right",
   [(_ACCS, "        import warnings\n        with warnings.catch_warnings():\n            warnings.simplefilter(\"ignore\")\n"
            + _ACCS.replace("        ", "            "))], ""),
  ("r10-mode-saved-restored", "07-train-loop", "right",
   [(_EVAL, "                was_training = model.training\n                model.eval()\n"
            "                train_losses.append(calc_loss_loader(train_eval_loader, model, device, num_batches=eval_iter))\n"
            "                val_losses.append(calc_loss_loader(val_loader, model, device, num_batches=eval_iter))\n"
            "                model.train(was_training)\n")], ""),
  ("r10-threads-context", "07-train-loop", "right",
   [(_LOOP, "    import contextlib\n    @contextlib.contextmanager\n    def threads(n):\n        old = torch.get_num_threads()\n"
            "        torch.set_num_threads(n)\n        try:\n            yield\n        finally:\n            torch.set_num_threads(old)\n"
            + _LOOP), (_ACCS, "        with threads(1):\n" + _ACCS.replace("        ", "            "))], ""),
  # 08: the teacher's probabilities under no_grad; kl_div's warnings recorded inside catch_warnings.
  ("r10-teacher-under-no-grad", "08-kd-loss", "right",
   [(_SOFT, "    with torch.no_grad():\n        teacher_probs = F.softmax(teacher_logits / temperature, dim=-1)\n"
            "    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1), teacher_probs, reduction=\"batchmean\")")], ""),
  ("r10-kl-warning-caught-record", "08-kd-loss", "right",
   [(_SOFT, "    import warnings\n    with warnings.catch_warnings(record=True):\n        warnings.simplefilter(\"always\")\n    "
            + _SOFT.replace("\n", "\n    "))], ""),
  # A filter for kl_div's own message left in place: only filters that silence or raise every warning of a category
  # are guarded (a targeted one is a library's business too, as course_lib.checks._blanket_filters has it).
  ("r10-kl-warning-filtered-by-message", "08-kd-loss", "right",
   [(_SOFT, "    import warnings\n    warnings.filterwarnings(\"ignore\", message=\"reduction: 'mean'\")\n" + _SOFT)], ""),
  # 06: the gradients by autograd on copies, inside enable_grad; the product under no_grad.
  ("r10-grads-by-autograd", "06-lora-grads", "right",
   [("    h = x @ A.T\n    dB = s * g.T @ h\n    dA = s * (g @ B).T @ x\n    return dA, dB",
     "    with torch.enable_grad():\n        A_ = A.detach().clone().requires_grad_(True)\n        B_ = B.detach().clone().requires_grad_(True)\n"
     "        out = s * (x.detach() @ A_.T @ B_.T)\n        dA, dB = torch.autograd.grad(out, (A_, B_), grad_outputs=g.detach())\n"
     "    return dA, dB")], ""),
  ("r10-grads-torch-func-vjp", "06-lora-grads", "right",
   [("    h = x @ A.T\n    dB = s * g.T @ h\n    dA = s * (g @ B).T @ x\n    return dA, dB",
     "    _, vjp = torch.func.vjp(lambda A_, B_: s * (x @ A_.T @ B_.T), A, B)\n    dA, dB = vjp(g)\n    return dA, dB")], ""),
  ("r10-grads-no-grad", "06-lora-grads", "right",
   [("    h = x @ A.T\n", "    with torch.no_grad():\n        h = x @ A.T\n")], ""),
  # 09: counting under no_grad, or with a printout.
  ("r10-count-no-grad", "09-lora-config", "right",
   [("    return sum(p.numel() for p in model.parameters() if p.requires_grad)",
     "    with torch.no_grad():\n        return sum(p.numel() for p in model.parameters() if p.requires_grad)")], ""),
  ("r10-count-named-params-set", "09-lora-config", "right",
   [("    return sum(p.numel() for p in model.parameters() if p.requires_grad)",
     "    total = 0\n    for name, p in model.named_parameters():\n        if p.requires_grad:\n            total += p.numel()\n"
     "    print(f\"trainable: {total:,}\")\n    return total")], ""),
  # 04: merging through .data, or in a with torch.no_grad() block.
  ("r10-merge-data", "04-linear-with-lora", "right",
   [("            self.linear.weight += self.lora.scaling * (self.lora.B @ self.lora.A)",
     "            self.linear.weight.data += self.lora.scaling * (self.lora.B.data @ self.lora.A.data)")], ""),
  ("r10-merge-no-grad-context", "04-linear-with-lora", "right",
   [("    @torch.no_grad()\n    def merge(self) -> None:\n        if not self.merged:\n            self.linear.weight += self.lora.scaling * (self.lora.B @ self.lora.A)\n",
     "    def merge(self) -> None:\n        if not self.merged:\n            with torch.no_grad():\n                self.linear.weight.add_(self.lora.scaling * (self.lora.B @ self.lora.A))\n")], ""),
  # 05: a print per wrapped layer; a UserWarning silenced around the swap only.
  ("r10-replace-prints", "05-replace", "right",
   [("            replaced.append(name)", "            replaced.append(name)\n            print(f\"wrapped {name}\")")], ""),
  ("r10-replace-warns-once", "05-replace", "right",
   [("            setattr(module, child_name, LinearWithLoRA(child, rank, alpha))",
     "            import warnings\n            with warnings.catch_warnings():\n                warnings.simplefilter(\"ignore\", UserWarning)\n"
     "                setattr(module, child_name, LinearWithLoRA(child, rank, alpha))")], ""),
  # ------------------------------------------------------------------ wrong answers where the catalogue was thinnest
  # 02: the fused weight reshaped as if q, k and v were stacked blocks of rows, or interleaved column by column.
  ("r10-reshape-blocks", "02-split-c-attn", "wrong",
   [("    q_w, k_w, v_w = torch.chunk(w, 3, dim=-1)\n", "    q_w, k_w, v_w = w.reshape(3, w.shape[0], w.shape[0]).transpose(1, 2)\n")],
   "not the first third"),
  ("r10-interleaved-columns", "02-split-c-attn", "wrong",
   [("    q_w, k_w, v_w = torch.chunk(w, 3, dim=-1)\n", "    q_w, k_w, v_w = w.reshape(w.shape[0], -1, 3).unbind(-1)\n")],
   "not the first third"),
  ("r10-bias-interleaved", "02-split-c-attn", "wrong",
   [("    q_b, k_b, v_b = torch.chunk(b, 3, dim=-1)\n", "    q_b, k_b, v_b = b.reshape(-1, 3).unbind(-1)\n")],
   "bias is the wrong slice"),
  # The book's loader (Raschka 2024, ch. 5, load_weights_into_gpt) splits with np.split: on a tensor NumPy calls the
  # tensor's own swapaxes, so the parts come back as tensors (NumPy 2, PyTorch 2).
  ("r10-numpy-split", "02-split-c-attn", "right",
   [("torch.chunk(w, 3, dim=-1)", "np.split(w, 3, axis=-1)"), ("torch.chunk(b, 3, dim=-1)", "np.split(b, 3, axis=-1)")], ""),
  ("r10-reshape-transposed", "02-split-c-attn", "right",   # w.T's rows are w's columns: three (e, e) blocks of them
   [("    q_w, k_w, v_w = torch.chunk(w, 3, dim=-1)\n", "    q_w, k_w, v_w = w.T.reshape(3, w.shape[0], w.shape[0]).transpose(1, 2)\n")], ""),
  # 03: ceil minus one batch when dropping (wrong on exact multiples), floor plus one when keeping (the same),
  # and "at least one batch".
  ("r10-ceil-minus-drop", "03-num-batches", "wrong",
   [("    if drop_last:\n        return n_examples // batch_size\n    return math.ceil(n_examples / batch_size)",
     "    return math.ceil(n_examples / batch_size) - int(drop_last)")],
   "floor"),
  ("r10-floor-plus-one", "03-num-batches", "wrong",
   [("return math.ceil(n_examples / batch_size)", "return n_examples // batch_size + 1")], "ceil"),
  ("r10-at-least-one", "03-num-batches", "wrong",
   [("return n_examples // batch_size", "return max(1, n_examples // batch_size)")], "floor"),
  ("r10-batch-sampler", "03-num-batches", "right",
   [("    if drop_last:\n        return n_examples // batch_size\n    return math.ceil(n_examples / batch_size)",
     "    from torch.utils.data import BatchSampler\n    return len(BatchSampler(range(n_examples), batch_size, drop_last))")], ""),
  # 01: a list counted as its first item times its length, as if every list held alike trees (GPT-2's blocks do).
  ("r10-list-first-times-len", "01-count-tensors", "wrong",
   [("        return sum(count_tensors(v) for v in tree)", "        return count_tensors(tree[0]) * len(tree) if tree else 0")],
   "a list the sum over its items"),
  ("r10-zip-by-order", "02-settings-to-cfg", "wrong",
   [("    cfg = {names[key]: value for key, value in settings.items()}", "    cfg = dict(zip(names.values(), settings.values()))")],
   "which settings key maps to which"),
  # 06: autograd through the forward, but backward of the sum: the upstream gradient g is ignored.
  ("r10-autograd-ignores-g", "06-lora-grads", "wrong",
   [("    h = x @ A.T\n    dB = s * g.T @ h\n    dA = s * (g @ B).T @ x\n    return dA, dB",
     "    A_ = A.detach().clone().requires_grad_(True)\n    B_ = B.detach().clone().requires_grad_(True)\n"
     "    (s * (x.detach() @ A_.T @ B_.T)).sum().backward()\n    return A_.grad, B_.grad")], "differs from autograd's"),
  # 09: LoRA on the first layer only (layers_to_transform); the count taken from peft's printout, which returns None.
  ("r10-first-layer-only", "09-lora-config", "wrong", [("task_type=\"SEQ_CLS\"", "task_type=\"SEQ_CLS\", layers_to_transform=[0]")],
   "layers_to_transform"),
  ("r10-count-by-print", "09-lora-config", "wrong",
   [("    return sum(p.numel() for p in model.parameters() if p.requires_grad)", "    return model.print_trainable_parameters()")], "print_trainable_parameters"),
  ("r10-fan-in-fan-out", "09-lora-config", "right",   # peft sets it back to False on nn.Linear, with a warning
   [("task_type=\"SEQ_CLS\"", "task_type=\"SEQ_CLS\", fan_in_fan_out=True")], ""),
  # Transposed first (to nn.Linear's layout), then still chunked along the last axis: the rows of c_attn get split.
  ("r10-transpose-then-last-axis", "02-split-c-attn", "wrong",
   [("    q_w, k_w, v_w = torch.chunk(w, 3, dim=-1)\n", "    q_w, k_w, v_w = (t.T for t in torch.chunk(w.T, 3, dim=-1))\n")],
   "shape"),
  ("r10-floor-plus-remainder", "03-num-batches", "right",   # an int plus a bool is an int
   [("math.ceil(n_examples / batch_size)", "n_examples // batch_size + (n_examples % batch_size > 0)")], ""),
  # 09: the attention's output projection adapted too; the pooler kept trainable beside the head.
  ("r10-targets-dense-too", "09-lora-config", "wrong",
   [("target_modules=[\"query\", \"value\"]", "target_modules=[\"query\", \"value\", \"dense\"]")],
   "puts LoRA on the layers"),
  ("r10-pooler-saved-too", "09-lora-config", "wrong",
   [("task_type=\"SEQ_CLS\"", "task_type=\"SEQ_CLS\", modules_to_save=[\"classifier\", \"pooler\"]")],
   "trains other parameters"),
]
