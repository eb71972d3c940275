"""Mutants for the fifth round of blind spots (see catalogue_a for the format): a training loop that reseeds the
global random generator, hands the model back in eval mode, or ignores ``device`` (its batches never moved, or
moved to a device of its own choosing), a LoRA merge or unmerge that changes the layer's training mode or reseeds
the global generator, and answers of 01, 02, 03 and 09 that reseed it; and the right answers that must stay accepted beside them."""

MUTANTS = [
    # ------------------------------------------------------------------ 07-train-loop
    ("reseeds", "07-train-loop", "wrong",
     [("    for epoch in range(num_epochs):\n", "    torch.manual_seed(123)\n    for epoch in range(num_epochs):\n")],
     "random generator"),
    ("reseeds-at-the-end", "07-train-loop", "wrong",
     [("    return train_losses, val_losses", "    torch.manual_seed(0)\n    return train_losses, val_losses")],
     "random generator"),
    # The exercise's text: evaluate in model.eval() mode, then back to model.train(); the reference hands the model
    # back in training mode.
    ("ends-in-eval", "07-train-loop", "wrong",
     [("        train_accs.append(", "        model.eval()\n        train_accs.append(")], "eval mode"),
    ("ignores-device", "07-train-loop", "wrong",
     [("loss = calc_loss_batch(input_batch, target_batch, model, device)",
       "last = (input_batch != 50256).long().cumsum(dim=1).argmax(dim=1)\n"
       "            logits = model(input_batch)[torch.arange(input_batch.shape[0]), last]\n"
       "            loss = F.cross_entropy(logits, target_batch)")], "to(device)"),
    ("hard-coded-cpu", "07-train-loop", "wrong",
     [("loss = calc_loss_batch(input_batch, target_batch, model, device)",
       "loss = calc_loss_batch(input_batch, target_batch, model, 'cpu')")], "to(device)"),
    ("moves-inputs-only", "07-train-loop", "wrong",
     [("loss = calc_loss_batch(input_batch, target_batch, model, device)",
       "input_batch = input_batch.to(device)\n"
       "            last = (input_batch != 50256).long().cumsum(dim=1).argmax(dim=1)\n"
       "            logits = model(input_batch)[torch.arange(input_batch.shape[0]), last]\n"
       "            loss = F.cross_entropy(logits, target_batch)")], "target_batch.to(device)"),
    ("eval-and-back-for-accs", "07-train-loop", "right",
     [("        train_accs.append(", "        model.eval()\n        train_accs.append("),
      ("        val_accs.append(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter))\n",
       "        val_accs.append(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter))\n"
       "        model.train()\n")], ""),
    ("moves-batch-first", "07-train-loop", "right",
     [("            optimizer.zero_grad()\n",
       "            input_batch, target_batch = input_batch.to(device), target_batch.to(device)\n"
       "            optimizer.zero_grad()\n")], ""),
    ("seeds-own-generator", "07-train-loop", "right",
     [("    for epoch in range(num_epochs):\n",
       "    unused = torch.Generator().manual_seed(123)\n    for epoch in range(num_epochs):\n")], ""),

    # ------------------------------------------------------------------ 04-linear-with-lora (merge and unmerge)
    ("merge-calls-eval", "04-linear-with-lora", "wrong",
     [("        if not self.merged:\n", "        self.eval()\n        if not self.merged:\n")], "eval mode"),
    ("unmerge-calls-train", "04-linear-with-lora", "wrong",
     [("        if self.merged:\n", "        self.train()\n        if self.merged:\n")], "training mode"),
    ("merge-reseeds", "04-linear-with-lora", "wrong",
     [("        if not self.merged:\n", "        torch.manual_seed(0)\n        if not self.merged:\n")],
     "random generator"),
    ("merge-keeps-mode", "04-linear-with-lora", "right",
     [("        if not self.merged:\n",
       "        was_training = self.training\n        self.eval()\n        self.train(was_training)\n"
       "        if not self.merged:\n")], ""),
    ("merge-through-data", "04-linear-with-lora", "right",
     [("            self.linear.weight += self.lora.scaling * (self.lora.B @ self.lora.A)",
       "            self.linear.weight.data.add_(self.lora.scaling * (self.lora.B @ self.lora.A))")], ""),

    # ------------------------------------------------------------------ the global random generator, in the probes too
    # Exercises that draw no random numbers: the visible checks already failed an answer that reseeds or draws from
    # PyTorch's global generator; their probes now do as well.
    ("reseeds", "01-count-tensors", "wrong",
     [("    if isinstance(tree, torch.Tensor):\n        return 1\n",
       "    torch.manual_seed(0)\n    if isinstance(tree, torch.Tensor):\n        return 1\n")], "random generator"),
    ("reseeds", "02-settings-to-cfg", "wrong",
     [("    cfg.update(drop_rate=drop_rate, qkv_bias=qkv_bias)\n",
       "    cfg.update(drop_rate=drop_rate, qkv_bias=qkv_bias)\n    torch.manual_seed(123)\n")], "random generator"),
    ("reseeds", "02-split-c-attn", "wrong",
     [("    q_w, k_w, v_w = torch.chunk(w, 3, dim=-1)\n",
       "    torch.manual_seed(0)\n    q_w, k_w, v_w = torch.chunk(w, 3, dim=-1)\n")], "random generator"),
    ("torch-seed-too", "03-balance", "wrong",
     [("    spam = df[df[\"Label\"] == \"spam\"]\n", "    torch.manual_seed(seed)\n    spam = df[df[\"Label\"] == \"spam\"]\n")],
     "random generator"),
    ("torch-seed-too", "03-split", "wrong",
     [("    shuffled = df.sample(", "    torch.manual_seed(seed)\n    shuffled = df.sample(")], "random generator"),
    ("reseeds", "03-num-batches", "wrong",
     [("    if drop_last:\n", "    torch.manual_seed(0)\n    if drop_last:\n")], "random generator"),
    ("reseeds", "09-lora-config", "wrong",
     [("    return sum(p.numel() for p in model.parameters() if p.requires_grad)",
       "    torch.manual_seed(0)\n    return sum(p.numel() for p in model.parameters() if p.requires_grad)")],
     "random generator"),
    ("own-generator", "03-split", "right",
     [("    shuffled = df.sample(frac=1, random_state=seed)",
       "    unused = torch.Generator().manual_seed(seed)\n    shuffled = df.sample(frac=1, random_state=seed)")], ""),
]
