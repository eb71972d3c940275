"""Mutants for the eighth round of blind spots (see catalogue_a for the format): a training loop that evaluates by
hand and averages over batches or examples the other way from calc_accuracy_loader and calc_loss_loader, or counts
the loader's batch_size; answers that keep a result from an earlier call (by the batch's shape or storage) or keep
their merged flag on the class; and the right answers that must stay accepted beside them."""

# 07's loop evaluating by hand instead of with calc_loss_loader / calc_accuracy_loader: the numbers agree on batches of
# one size and differ only on a smaller last batch (the check's validation batches of 5, 5 and 2; the probe's 2, 2, 1).
_ACCS = ("        train_accs.append(calc_accuracy_loader(train_eval_loader, model, device, num_batches=eval_iter))\n"
         "        val_accs.append(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter))")
_ACCS_BY_HAND = ("        def accuracy(loader):\n"
                 "            from course_lib.training import classifier_logits\n"
                 "            model.eval()\n"
                 "            accs = []\n"
                 "            with torch.no_grad():\n"
                 "                for i, (xb, yb) in enumerate(loader):\n"
                 "                    if i >= eval_iter:\n"
                 "                        break\n"
                 "                    xb, yb = xb.to(device), yb.to(device)\n"
                 "                    accs.append((classifier_logits(model, xb).argmax(-1) == yb).float().mean().item())\n"
                 "            model.train()\n"
                 "            return sum(accs) / len(accs)\n"
                 "        train_accs.append(accuracy(train_eval_loader))\n"
                 "        val_accs.append(accuracy(val_loader))")
_ACCS_BY_EXAMPLES = (_ACCS_BY_HAND
                     .replace("accs.append((classifier_logits(model, xb).argmax(-1) == yb).float().mean().item())",
                              "accs.append(((classifier_logits(model, xb).argmax(-1) == yb).sum().item(), len(yb)))")
                     .replace("return sum(accs) / len(accs)", "return sum(a for a, _ in accs) / sum(n for _, n in accs)"))
_LOSSES = ("                train_losses.append(calc_loss_loader(train_eval_loader, model, device, num_batches=eval_iter))\n"
           "                val_losses.append(calc_loss_loader(val_loader, model, device, num_batches=eval_iter))")
_LOSSES_BY_EXAMPLES = ("                def evaluate(loader):\n"
                       "                    total, n = 0.0, 0\n"
                       "                    with torch.no_grad():\n"
                       "                        for i, (xb, yb) in enumerate(loader):\n"
                       "                            if i >= eval_iter:\n"
                       "                                break\n"
                       "                            total += calc_loss_batch(xb, yb, model, device).item() * len(yb)\n"
                       "                            n += len(yb)\n"
                       "                    return total / n\n"
                       "                train_losses.append(evaluate(train_eval_loader))\n"
                       "                val_losses.append(evaluate(val_loader))")
_LOSSES_BY_BATCHES = (_LOSSES_BY_EXAMPLES.replace(".item() * len(yb)", ".item()").replace("n += len(yb)", "n += 1"))

# 07-last-token: a result kept from an earlier call, found again by the batch's shape or storage.
_CACHE = [("def last_token_index(input_batch, pad_token_id=PAD_TOKEN_ID):",
           "_seen = {}\n\n\ndef last_token_index(input_batch, pad_token_id=PAD_TOKEN_ID):\n"
           "    key = (KEY, pad_token_id)\n    if key in _seen:\n        return _seen[key]"),
          ("    return (positions * real).amax(dim=1)",
           "    _seen[key] = (positions * real).amax(dim=1)\n    return _seen[key]")]


def _cache(key: str) -> list:
    return [(_CACHE[0][0], _CACHE[0][1].replace("KEY", key)), _CACHE[1]]


# 08: the teacher's softened probabilities kept per teacher tensor (the teacher is frozen, after all). In a training
# loop the next batch's logits often land in the same storage, and a tensor refilled in place keeps its id.
_SOFT = ("    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),\n"
         "                    F.softmax(teacher_logits.detach() / temperature, dim=-1), reduction=\"batchmean\")")


def _teacher_cache(key: str) -> list:
    return [("def distillation_loss(", "_soft = {}\n\n\ndef distillation_loss("),
            (_SOFT, f"    k = ({key}, temperature)\n    if k not in _soft:\n"
                    "        _soft[k] = F.softmax(teacher_logits.detach() / temperature, dim=-1)\n"
                    "    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1), _soft[k], "
                    "reduction=\"batchmean\")")]


# 06-lora-grads: the gradients kept per input (a second call on the same tensors must give the same answer, and so
# it does): stale once the caller refills its tensors for the next batch.
def _grads_cache(key: str) -> list:
    return [("def lora_grads(x, A, B, s, g):\n",
             f"_memo = {{}}\n\n\ndef lora_grads(x, A, B, s, g):\n    k = ({key}, s)\n    if k in _memo:\n"
             "        return _memo[k]\n"),
            ("    return dA, dB", "    _memo[k] = dA, dB\n    return dA, dB")]


MUTANTS = [
    # ------------------------------------------------------------------ 07-train-loop: averages and counts
    ("r8-accs-averaged-over-batches", "07-train-loop", "wrong", [(_ACCS, _ACCS_BY_HAND)], "averaged over batches"),
    ("r8-losses-averaged-over-examples", "07-train-loop", "wrong", [(_LOSSES, _LOSSES_BY_EXAMPLES)],
     "averaged over examples"),
    # The loader's batch_size is every batch's size only while the last, smaller batch is dropped.
    ("r8-examples-loader-batch-size", "07-train-loop", "wrong",
     [("examples_seen += input_batch.shape[0]", "examples_seen += train_loader.batch_size")], "batch_size"),
    # argmax over the batch axis: (2,) class-wise winners against (batch,) labels; the check's batches of 3 and 5
    # refuse to broadcast (only batches of 2 would compare, silently, the wrong things).
    ("r8-accs-argmax-over-batch", "07-train-loop", "wrong",
     [(_ACCS, _ACCS_BY_EXAMPLES.replace("argmax(-1)", "argmax(0)"))], "must match the size"),
    ("r8-accs-by-hand-over-examples", "07-train-loop", "right", [(_ACCS, _ACCS_BY_EXAMPLES)], ""),
    ("r8-losses-by-hand-over-batches", "07-train-loop", "right", [(_LOSSES, _LOSSES_BY_BATCHES)], ""),
    ("r8-zero-grad-after-step", "07-train-loop", "right",
     [("            optimizer.zero_grad()\n", ""),
      ("            optimizer.step()\n", "            optimizer.step()\n            optimizer.zero_grad()\n")], ""),
    ("r8-examples-len-targets", "07-train-loop", "right",
     [("examples_seen += input_batch.shape[0]", "examples_seen += len(target_batch)")], ""),

    # ------------------------------------------------------------------ 07-last-token: nothing kept between calls
    ("r8-cache-by-shape", "07-last-token", "wrong", _cache("tuple(input_batch.shape)"), "refilled with other messages"),
    ("r8-cache-by-storage", "07-last-token", "wrong", _cache("input_batch.data_ptr()"), "refilled with other messages"),
    ("r8-cache-by-id", "07-last-token", "wrong", _cache("id(input_batch)"), "last_token_index on"),
    ("r8-positions-by-width", "07-last-token", "right",   # a cache of what depends on the width only is fine
     [("def last_token_index(input_batch, pad_token_id=PAD_TOKEN_ID):",
       "_positions = {}\n\n\ndef last_token_index(input_batch, pad_token_id=PAD_TOKEN_ID):"),
      ("    positions = torch.arange(input_batch.shape[1], device=input_batch.device)  # (width,)",
       "    key = (input_batch.shape[1], str(input_batch.device))\n"
       "    if key not in _positions:\n"
       "        _positions[key] = torch.arange(input_batch.shape[1], device=input_batch.device)\n"
       "    positions = _positions[key]")], ""),

    # ------------------------------------------------------------------ 04-linear-with-lora: one flag per layer
    # The merged flag on the class: merging one layer makes every other one skip its LoRA path and its own merge.
    ("r8-merged-flag-on-class", "04-linear-with-lora", "wrong",
     [("        self.merged = False\n", ""),
      ("class LinearWithLoRA(nn.Module):\n", "class LinearWithLoRA(nn.Module):\n    merged = False\n"),
      ("            self.merged = True", "            LinearWithLoRA.merged = True"),
      ("            self.merged = False", "            LinearWithLoRA.merged = False")], "not on the class"),
    ("r8-class-default-instance-flag", "04-linear-with-lora", "right",
     [("        self.merged = False\n", ""),
      ("class LinearWithLoRA(nn.Module):\n", "class LinearWithLoRA(nn.Module):\n    merged = False\n")], ""),

    # ------------------------------------------------------------------ 04-lora-layer: the dtype of x and of A and B
    # A forward that casts to a fixed dtype: right values, but the output's dtype is no longer the model's (float32 in,
    # float64 out; or a model converted with .to(torch.float64) getting float32 back), and the next layer refuses it.
    ("r8-forward-in-float64", "04-lora-layer", "wrong",
     [("        return self.scaling * (x @ self.A.T @ self.B.T)",
       "        return self.scaling * (x.double() @ self.A.T.double() @ self.B.T.double())")], "dtype of x"),
    ("r8-forward-in-float32", "04-lora-layer", "wrong",
     [("        return self.scaling * (x @ self.A.T @ self.B.T)",
       "        return self.scaling * (x.float() @ self.A.T.float() @ self.B.T.float())")], "dtype of x"),
    ("r8-forward-float32-cast-back", "04-lora-layer", "right",   # computed in float32, returned in x's dtype
     [("        return self.scaling * (x @ self.A.T @ self.B.T)",
       "        return (self.scaling * (x.float() @ self.A.T.float() @ self.B.T.float())).to(x.dtype)")], ""),
    ("r8-scaling-float64-scalar-tensor", "04-lora-layer", "right",   # a 0-d tensor does not change the result's dtype
     [("        self.scaling = alpha / rank", "        self.scaling = torch.tensor(alpha / rank, dtype=torch.float64)")], ""),

    # ------------------------------------------------------------------ 08-kd-loss: the teacher's probabilities kept
    ("r8-teacher-cache-by-id", "08-kd-loss", "wrong", _teacher_cache("id(teacher_logits)"), "refilled"),
    ("r8-teacher-cache-by-storage", "08-kd-loss", "wrong", _teacher_cache("teacher_logits.data_ptr()"), "refilled"),
    ("r8-teacher-softened-by-power", "08-kd-loss", "right",   # softmax(t)^(1/T), renormalised, is softmax(t / T)
     [(_SOFT, "    pt = F.softmax(teacher_logits.detach(), dim=-1) ** (1 / temperature)\n"
              "    pt = pt / pt.sum(dim=-1, keepdim=True)\n"
              "    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1), pt, reduction=\"batchmean\")")], ""),
    ("r8-kl-divergence-of-categoricals", "08-kd-loss", "right",
     [(_SOFT, "    soft = torch.distributions.kl_divergence(\n"
              "        torch.distributions.Categorical(logits=teacher_logits.detach() / temperature),\n"
              "        torch.distributions.Categorical(logits=student_logits / temperature)).mean()")], ""),

    # ------------------------------------------------------------------ 06-lora-grads: nothing kept between calls
    ("r8-grads-cache-by-id", "06-lora-grads", "wrong", _grads_cache("id(x)"), "refilled with other values"),
    ("r8-grads-cache-by-storage", "06-lora-grads", "wrong", _grads_cache("x.data_ptr(), A.data_ptr()"),
     "refilled with other values"),
    ("r8-grads-cache-by-shape", "06-lora-grads", "wrong", _grads_cache("tuple(x.shape), tuple(A.shape)"),
     "refilled with other values"),

    # ------------------------------------------------------------------ 09-lora-config: counted on every call
    ("r8-count-cache-by-id", "09-lora-config", "wrong",
     [("def count_trainable(model) -> int:\n",
       "_counted = {}\n\n\ndef count_trainable(model) -> int:\n    if id(model) in _counted:\n"
       "        return _counted[id(model)]\n"),
      ("    return sum(p.numel() for p in model.parameters() if p.requires_grad)",
       "    _counted[id(model)] = sum(p.numel() for p in model.parameters() if p.requires_grad)\n"
       "    return _counted[id(model)]")], "nothing kept"),
]
