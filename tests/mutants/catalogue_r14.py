"""Mutants for the fourteenth round (see catalogue_a for the format): answers that are right on the inputs a check
happens to use and wrong elsewhere: a fixed seed, an index that is the rows' positions, two columns only, a size that
divides, alpha equal to rank, rank 1, square weights, one epoch or step, no dropout, alpha at 0.5, a batch as wide as
the classes, a Linear layer that is exactly nn.Linear. Most were caught before the round; they are kept so that they
stay caught. The right ones are what a tightened check might reject by mistake (docs/testing.md, round fourteen)."""

_BAL_HAM = '    ham = df[df["Label"] == "ham"].sample(len(spam), random_state=seed)'
_SPLIT_VAL = "    validation_end = train_end + int(len(shuffled) * validation_frac)"
_LORA_SCALING = "        self.scaling = alpha / rank"
_LORA_FORWARD = "        return self.scaling * (x @ self.A.T @ self.B.T)"
_MERGE = "            self.linear.weight += self.lora.scaling * (self.lora.B @ self.lora.A)"
_UNMERGE = "            self.linear.weight -= self.lora.scaling * (self.lora.B @ self.lora.A)"
_LT_RET = "    return (positions * real).amax(dim=1)                                         # (batch,)"
_KD_RET = "    return alpha * temperature ** 2 * soft + (1 - alpha) * hard"
_KD_SOFT = ('    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),\n'
            '                    F.softmax(teacher_logits.detach() / temperature, dim=-1), reduction="batchmean")')
_COUNT = "    return sum(p.numel() for p in model.parameters() if p.requires_grad)"

MUTANTS = [
  # ------------------------------------------------------------------ 03-balance
  ("r14-balance-fixed-seed", "03-balance", "wrong",
   [(_BAL_HAM, _BAL_HAM.replace("random_state=seed", "random_state=123"))], "seed"),
  ("r14-balance-positions-as-labels", "03-balance", "wrong",
   [('    spam = df[df["Label"] == "spam"]',
     '    spam = df.loc[[i for i in range(len(df)) if df["Label"].iloc[i] == "spam"]]')], "index 17, 16"),
  ("r14-balance-drop-duplicates", "03-balance", "wrong",
   [('    spam = df[df["Label"] == "spam"]', '    df = df.drop_duplicates()\n    spam = df[df["Label"] == "spam"]')], "keep every spam message"),
  ("r14-balance-only-two-columns", "03-balance", "wrong",
   [('    balanced = pd.concat([ham, spam]).reset_index(drop=True)',
     '    balanced = pd.concat([ham, spam])[["Label", "Text"]].reset_index(drop=True)')], "keep every column"),
  ("r14-balance-spam-shuffled", "03-balance", "wrong",
   [('    spam = df[df["Label"] == "spam"]', '    spam = df[df["Label"] == "spam"].sample(frac=1, random_state=seed)')],
   "order"),
  ("r14-balance-frac", "03-balance", "right",
   [(_BAL_HAM, '    ham = df[df["Label"] == "ham"]\n    ham = ham.sample(frac=len(spam) / len(ham), random_state=seed)')], ""),
  ("r14-balance-min-count", "03-balance", "right",
   [(_BAL_HAM, '    n = int((df["Label"] == "spam").sum())\n    ham = df[df["Label"] == "ham"].sample(n, random_state=seed)')], ""),

  # ------------------------------------------------------------------ 03-split
  ("r14-split-int-of-sum", "03-split", "wrong",
   [(_SPLIT_VAL, "    validation_end = int(len(shuffled) * (train_frac + validation_frac))")], "validation"),
  ("r14-split-round", "03-split", "wrong",
   [("    train_end = int(len(shuffled) * train_frac)", "    train_end = round(len(shuffled) * train_frac)")], "train"),
  # slicing a DataFrame with [a:b] is by position, whatever its index: the shuffled table need not be reset first
  ("r14-split-slice-without-reset", "03-split", "right",
   [("    shuffled = df.sample(frac=1, random_state=seed).reset_index(drop=True)",
     "    shuffled = df.sample(frac=1, random_state=seed)")], ""),
  ("r14-split-fixed-seed", "03-split", "wrong",
   [("random_state=seed)", "random_state=123)")], "seed"),
  ("r14-split-iloc", "03-split", "right",
   [("    return (shuffled[:train_end].reset_index(drop=True),",
     "    return (shuffled.iloc[:train_end].reset_index(drop=True),")], ""),

  # ------------------------------------------------------------------ 03-num-batches
  ("r14-nb-floor-plus-one", "03-num-batches", "wrong",
   [("    return math.ceil(n_examples / batch_size)", "    return n_examples // batch_size + 1")], "ceil"),
  ("r14-nb-droplast-minus-one", "03-num-batches", "wrong",
   [("        return n_examples // batch_size", "        return math.ceil(n_examples / batch_size) - 1")], "drop_last"),
  ("r14-nb-droplast-pred", "03-num-batches", "wrong",
   [("        return n_examples // batch_size", "        return (n_examples - 1) // batch_size")], "drop_last"),
  ("r14-nb-at-least-one", "03-num-batches", "wrong",
   [("    return math.ceil(n_examples / batch_size)", "    return max(1, math.ceil(n_examples / batch_size))")], "no example"),
  ("r14-nb-negative-floor", "03-num-batches", "right",
   [("    return math.ceil(n_examples / batch_size)", "    return -(-n_examples // batch_size)")], ""),
  ("r14-nb-divmod", "03-num-batches", "right",
   [("    return math.ceil(n_examples / batch_size)",
     "    full, rest = divmod(n_examples, batch_size)\n    return full + (rest > 0)")], ""),

  # ------------------------------------------------------------------ 04-lora-layer
  ("r14-lora-scaling-int-div", "04-lora-layer", "wrong", [(_LORA_SCALING, "        self.scaling = alpha // rank")],
   "scaling"),
  ("r14-lora-scaling-over-in-dim", "04-lora-layer", "wrong",
   [(_LORA_SCALING, "        self.scaling = alpha / self.A.shape[1]")], "alpha / rank"),
  ("r14-lora-scaling-over-out-dim", "04-lora-layer", "wrong",
   [(_LORA_SCALING, "        self.scaling = alpha / self.B.shape[0]")], "alpha / rank"),
  ("r14-lora-scaling-alpha", "04-lora-layer", "wrong", [(_LORA_SCALING, "        self.scaling = alpha")], "divide by the rank"),
  ("r14-lora-rank1-outer", "04-lora-layer", "wrong",
   [(_LORA_FORWARD, "        return self.scaling * (x @ self.A[:1].T @ self.B[:, :1].T)")], "rank"),
  ("r14-lora-scaling-in-forward", "04-lora-layer", "right",
   [(_LORA_SCALING, "        self.alpha, self.rank = alpha, rank"),
    (_LORA_FORWARD, "        return (self.alpha / self.rank) * (x @ self.A.T @ self.B.T)")], ""),

  # ------------------------------------------------------------------ 04-linear-with-lora
  ("r14-merge-no-scaling", "04-linear-with-lora", "wrong",
   [(_MERGE, "            self.linear.weight += self.lora.B @ self.lora.A"),
    (_UNMERGE, "            self.linear.weight -= self.lora.B @ self.lora.A")], "merge"),
  ("r14-merge-transposed", "04-linear-with-lora", "wrong",
   [(_MERGE, "            self.linear.weight += self.lora.scaling * (self.lora.B @ self.lora.A).T"),
    (_UNMERGE, "            self.linear.weight -= self.lora.scaling * (self.lora.B @ self.lora.A).T")], "merge"),
  ("r14-merge-rank1-outer", "04-linear-with-lora", "wrong",
   [(_MERGE, "            self.linear.weight += self.lora.scaling * torch.outer(self.lora.B[:, 0], self.lora.A[0])"),
    (_UNMERGE, "            self.linear.weight -= self.lora.scaling * torch.outer(self.lora.B[:, 0], self.lora.A[0])")],
   "merge"),
  ("r14-freeze-weight-only", "04-linear-with-lora", "wrong",
   [("        for p in self.linear.parameters():\n            p.requires_grad_(False)",
     "        self.linear.weight.requires_grad_(False)")], "bias"),
  ("r14-lora-dims-swapped", "04-linear-with-lora", "wrong",
   [("LoRALayer(linear.in_features, linear.out_features, rank, alpha)",
     "LoRALayer(linear.weight.shape[1], linear.weight.shape[1], rank, alpha)")], "LoRALayer(linear.in_features, linear.out_features"),
  ("r14-merge-delta-from-forward", "04-linear-with-lora", "right",
   [(_MERGE, "            eye = torch.eye(self.linear.in_features, dtype=self.linear.weight.dtype)\n"
             "            self.linear.weight += self.lora(eye).T"),
    (_UNMERGE, "            eye = torch.eye(self.linear.in_features, dtype=self.linear.weight.dtype)\n"
               "            self.linear.weight -= self.lora(eye).T")], ""),

  # ------------------------------------------------------------------ 05-replace
  ("r14-replace-target-substring", "05-replace", "wrong",
   [('    return any(name == key or name.endswith("." + key) for key in keys)',
     '    return any(name.endswith(key) for key in keys)')], "compare whole names"),
  ("r14-replace-last-part-only", "05-replace", "wrong",
   [('    return any(name == key or name.endswith("." + key) for key in keys)',
     '    return any(name.split(".")[-1] == key.split(".")[-1] for key in keys)')], "compare whole names"),
  ("r14-replace-modules-dict", "05-replace", "right",
   [("    for child_name, child in module.named_children():",
     "    for child_name, child in list(module.named_children()):")], ""),

  # ------------------------------------------------------------------ 06
  ("r14-freeze-linear-only", "06-freeze", "wrong",
   [("    for p in model.parameters():\n        p.requires_grad_(False)",
     "    for m in model.modules():\n        if isinstance(m, nn.Linear):\n            m.requires_grad_(False)")],
   "freeze"),
  ("r14-unfreeze-direct-only", "06-freeze", "wrong",
   [("    for p in module.parameters():\n        p.requires_grad_(True)",
     "    for p in module.parameters(recurse=False):\n        p.requires_grad_(True)")], "at every depth"),
  ("r14-freeze-requires-grad-module", "06-freeze", "right",
   [("    for p in model.parameters():\n        p.requires_grad_(False)", "    model.requires_grad_(False)")], ""),
  ("r14-grads-batch-mean", "06-lora-grads", "wrong",
   [("    return dA, dB", "    return dA / x.shape[0], dB / x.shape[0]")], "divided by the batch size"),
  ("r14-grads-first-row", "06-lora-grads", "wrong",
   [("    dB = s * g.T @ h", "    dB = s * torch.outer(g[0], h[0])")], "dB"),
  ("r14-grads-no-s", "06-lora-grads", "wrong",
   [("    dA = s * (g @ B).T @ x", "    dA = (g @ B).T @ x")], "dA"),
  ("r14-grads-einsum", "06-lora-grads", "right",
   [("    dA = s * (g @ B).T @ x", "    dA = s * torch.einsum('bo,or,bi->ri', g, B, x)")], ""),

  # ------------------------------------------------------------------ 07-last-token
  ("r14-lt-count-minus-one", "07-last-token", "wrong",
   [(_LT_RET, "    return real.sum(dim=1) - 1")], "pad"),
  ("r14-lt-first-pad-minus-one", "07-last-token", "wrong",
   [(_LT_RET, "    return (~real).int().argmax(dim=1) - 1")], "pad"),
  ("r14-lt-longest-row", "07-last-token", "wrong",
   [(_LT_RET, "    return (positions * real).amax().repeat(input_batch.shape[0])")], "row"),
  ("r14-lt-first-row", "07-last-token", "wrong",
   [(_LT_RET, "    return (positions * real[0]).amax().repeat(input_batch.shape[0])")], "row"),
  ("r14-lt-flip-argmax", "07-last-token", "right",
   [(_LT_RET, "    w = input_batch.shape[1]\n    last = w - 1 - real.flip(1).int().argmax(dim=1)\n"
              "    return torch.where(real.any(dim=1), last, torch.zeros_like(last))")], ""),

  # ------------------------------------------------------------------ 07-train-loop
  ("r14-loop-no-zero-grad", "07-train-loop", "wrong", [("            optimizer.zero_grad()\n", "")], "zero_grad"),
  ("r14-loop-zero-grad-per-epoch", "07-train-loop", "wrong",
   [("            optimizer.zero_grad()\n", ""), ("        model.train()\n        for input_batch",
                                                 "        model.train()\n        optimizer.zero_grad()\n        for input_batch")],
   "zero_grad"),
  ("r14-loop-eval-in-train-mode", "07-train-loop", "wrong",
   [("                model.eval()\n", "")], "eval"),
  ("r14-loop-stays-in-eval", "07-train-loop", "wrong",
   [("                model.train()\n", "")], "train"),
  ("r14-loop-ignores-eval-iter", "07-train-loop", "wrong",
   [("calc_loss_loader(train_eval_loader, model, device, num_batches=eval_iter)",
     "calc_loss_loader(train_eval_loader, model, device)"),
    ("calc_loss_loader(val_loader, model, device, num_batches=eval_iter)", "calc_loss_loader(val_loader, model, device)")],
   "eval_iter"),
  ("r14-loop-examples-by-batch-size", "07-train-loop", "wrong",
   [("            examples_seen += input_batch.shape[0]", "            examples_seen += train_loader.batch_size")],
   "examples"),
  ("r14-loop-step-per-epoch", "07-train-loop", "wrong",
   [("        model.train()\n        for input_batch", "        model.train()\n        step = -1\n        for input_batch")],
   "eval_freq"),
  ("r14-loop-one-epoch", "07-train-loop", "wrong",
   [("    for epoch in range(num_epochs):", "    for epoch in range(min(num_epochs, 1)):")], "epoch"),

  # ------------------------------------------------------------------ 08-kd-loss
  ("r14-kd-alpha-swapped", "08-kd-loss", "wrong",
   [(_KD_RET, "    return (1 - alpha) * temperature ** 2 * soft + alpha * hard")], "alpha"),
  ("r14-kd-over-classes", "08-kd-loss", "wrong",
   [('reduction="batchmean")', 'reduction="sum") / student_logits.shape[-1]')], "number of classes"),
  ("r14-kd-teacher-not-softened", "08-kd-loss", "wrong",
   [("F.softmax(teacher_logits.detach() / temperature, dim=-1)", "F.softmax(teacher_logits.detach(), dim=-1)")],
   "temperature"),
  ("r14-kd-hard-softened", "08-kd-loss", "wrong",
   [("    hard = F.cross_entropy(student_logits, labels)",
     "    hard = F.cross_entropy(student_logits / temperature, labels)")], "hard"),
  ("r14-kd-reverse-kl", "08-kd-loss", "wrong",
   [(_KD_SOFT, '    soft = F.kl_div(F.log_softmax(teacher_logits.detach() / temperature, dim=-1),\n'
               '                    F.softmax(student_logits / temperature, dim=-1), reduction="batchmean")')], "arguments are swapped"),
  ("r14-kd-sum-over-batch", "08-kd-loss", "right",
   [('reduction="batchmean")', 'reduction="sum") / student_logits.shape[0]')], ""),

  # ------------------------------------------------------------------ 09-lora-config
  ("r14-config-regex-string", "09-lora-config", "wrong",
   [('target_modules=["query", "value"]', 'target_modules="query|value"')], "target_modules"),
  ("r14-config-names-with-lora", "09-lora-config", "wrong",
   [(_COUNT, '    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)')], "trainable"),
  ("r14-config-count-duplicates", "09-lora-config", "wrong",
   [(_COUNT, "    return sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False) if p.requires_grad)")], "share one weight"),
  ("r14-config-regex-suffix", "09-lora-config", "right",
   [('target_modules=["query", "value"]', r'target_modules=r".*\.(query|value)"')], ""),
]
