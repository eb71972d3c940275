"""Mutants for the sixth round of blind spots (see catalogue_a for the format): a forward right in value but wrong
in gradient (the input detached in one branch), a forward that caches B @ A on its first call, a function whose
mutable default argument makes every returned dict one shared object, tables that keep the old index as a column,
a replacement that deletes and re-adds children (reordering an nn.Sequential), unfreeze switching a module to
training mode, a training loop that unfreezes the model, a LoraConfig that initialises LoRA otherwise; and the
right answers that must stay accepted beside them."""

MUTANTS = [
    # ------------------------------------------------------------------ 04-lora-layer
    # Right in value, A and B get the right gradients, but nothing flows back into x: the layers before it lose
    # this branch's share of their gradient.
    ("x-detached", "04-lora-layer", "wrong",
     [("        return self.scaling * (x @ self.A.T @ self.B.T)",
       "        return self.scaling * (x.detach() @ self.A.T @ self.B.T)")], "flows back into the input"),
    # B @ A computed once, on the first forward pass: right until an optimiser step changes A and B.
    ("caches-delta", "04-lora-layer", "wrong",
     [("        return self.scaling * (x @ self.A.T @ self.B.T)",
       "        if not hasattr(self, '_delta'):\n            self._delta = self.scaling * (self.B @ self.A)\n"
       "        return x @ self._delta.T")], "did not follow"),
    ("delta-each-call", "04-lora-layer", "right",
     [("        return self.scaling * (x @ self.A.T @ self.B.T)",
       "        delta = self.scaling * (self.B @ self.A)\n        return x @ delta.T")], ""),

    # ------------------------------------------------------------------ 04-linear-with-lora
    ("lora-x-detached", "04-linear-with-lora", "wrong",
     [("        return self.linear(x) + self.lora(x)", "        return self.linear(x) + self.lora(x.detach())")],
     "flows back into the input"),
    ("base-x-detached", "04-linear-with-lora", "wrong",
     [("        return self.linear(x) + self.lora(x)", "        return self.linear(x.detach()) + self.lora(x)")],
     "flows back into the input"),
    ("base-under-no-grad-input-kept", "04-linear-with-lora", "right",
     [("        return self.linear(x) + self.lora(x)",
       "        base = F.linear(x, self.linear.weight.detach(), self.linear.bias.detach())\n"
       "        return base + self.lora(x)")], ""),
]

MUTANTS += [
    # ------------------------------------------------------------------ 02-settings-to-cfg
    # The classic mutable default: every call fills and returns the same dict, so building GPT-2 medium's cfg
    # changes the small model's cfg the notebook still holds.
    ("mutable-default", "02-settings-to-cfg", "wrong",
     [("qkv_bias: bool = True) -> dict:", "qkv_bias: bool = True, cfg={}) -> dict:"),
      ("    cfg = {names[key]: value for key, value in settings.items()}",
       "    cfg.update({names[key]: value for key, value in settings.items()})")], "new dict on every call"),
    ("copies-default", "02-settings-to-cfg", "right",
     [("qkv_bias: bool = True) -> dict:", "qkv_bias: bool = True, base={}) -> dict:"),
      ("    cfg = {names[key]: value for key, value in settings.items()}",
       "    cfg = dict(base)\n    cfg.update({names[key]: value for key, value in settings.items()})")], ""),

    # ------------------------------------------------------------------ 03: reset_index() without drop=True
    ("index-column", "03-balance", "wrong",
     [("    balanced = pd.concat([ham, spam]).reset_index(drop=True)", "    balanced = pd.concat([ham, spam]).reset_index()")],
     "drop=True"),
    ("index-column-dropped", "03-balance", "right",
     [("    balanced = pd.concat([ham, spam]).reset_index(drop=True)",
       "    balanced = pd.concat([ham, spam]).reset_index().drop(columns='index')")], ""),
    ("index-column", "03-split", "wrong",
     [("    shuffled = df.sample(frac=1, random_state=seed).reset_index(drop=True)",
       "    shuffled = df.sample(frac=1, random_state=seed).reset_index()")], "drop=True"),
    ("index-column-dropped", "03-split", "right",
     [("    shuffled = df.sample(frac=1, random_state=seed).reset_index(drop=True)",
       "    shuffled = df.sample(frac=1, random_state=seed).reset_index().drop(columns=['index'])")], ""),
]

MUTANTS += [
    # ------------------------------------------------------------------ 05-replace
    # delattr, then setattr: the wrapper is appended after its siblings, so an nn.Sequential (GPT-2's FeedForward:
    # Linear, GELU, Linear) runs its layers in another order.
    ("reorders-children", "05-replace", "wrong",
     [("    for child_name, child in module.named_children():", "    for child_name, child in list(module.named_children()):"),
      ("            setattr(module, child_name, LinearWithLoRA(child, rank, alpha))",
       "            delattr(module, child_name)\n            setattr(module, child_name, LinearWithLoRA(child, rank, alpha))")],
     "changed the order"),
    # A key matched against any component of the name: 'encoder' then excludes (or targets) every layer inside it.
    ("component-match", "05-replace", "wrong",
     [("    return any(name == key or name.endswith(\".\" + key) for key in keys)",
       "    return any(name == key or name.endswith(\".\" + key) or key in name.split(\".\") for key in keys)")],
     "names a container"),
    # Exclusion tested before the Linear test: an excluded container is not recursed into.
    ("exclude-containers", "05-replace", "wrong",
     [("        if isinstance(child, LinearWithLoRA):\n            continue\n",
       "        if isinstance(child, LinearWithLoRA) or matches(name, exclude):\n            continue\n")],
     "names a container"),
    ("modules-dict-in-place", "05-replace", "right",
     [("            setattr(module, child_name, LinearWithLoRA(child, rank, alpha))",
       "            module._modules[child_name] = LinearWithLoRA(child, rank, alpha)")], ""),
]

MUTANTS += [
    # ------------------------------------------------------------------ 09-lora-config
    # Same layers, ranks, scalings and dropouts, but LoRA starts otherwise: with B random the model no longer starts
    # as the pretrained one; 'gaussian' draws A from another distribution than the original experiment's.
    ("init-false", "09-lora-config", "wrong",
     [('bias="none", task_type="SEQ_CLS")', 'bias="none", task_type="SEQ_CLS", init_lora_weights=False)')],
     "init_lora_weights"),
    ("init-gaussian", "09-lora-config", "wrong",
     [('bias="none", task_type="SEQ_CLS")', 'bias="none", task_type="SEQ_CLS", init_lora_weights="gaussian")')],
     "init_lora_weights"),
    ("init-true-explicit", "09-lora-config", "right",
     [('bias="none", task_type="SEQ_CLS")', 'bias="none", task_type="SEQ_CLS", init_lora_weights=True)')], ""),
]

MUTANTS += [
    # ------------------------------------------------------------------ 06-freeze
    # "Make it trainable" read as train mode too: invisible on a model already in training mode.
    ("unfreeze-calls-train", "06-freeze", "wrong",
     [("    for p in module.parameters():\n        p.requires_grad_(True)",
       "    module.train()\n    for p in module.parameters():\n        p.requires_grad_(True)")], "eval mode"),
    ("freeze-calls-train", "06-freeze", "wrong",
     [("    for p in model.parameters():\n        p.requires_grad_(False)",
       "    model.train()\n    for p in model.parameters():\n        p.requires_grad_(False)")], "eval mode"),
    ("unfreeze-keeps-mode", "06-freeze", "right",
     [("    for p in module.parameters():\n        p.requires_grad_(True)",
       "    mode = module.training\n    module.train()\n    module.train(mode)\n"
       "    for p in module.parameters():\n        p.requires_grad_(True)")], ""),

    # ------------------------------------------------------------------ 07-train-loop
    # "Make sure everything trains": the pretrained model the caller froze is fine-tuned in full.
    ("unfreezes-model", "07-train-loop", "wrong",
     [("    for epoch in range(num_epochs):\n",
       "    for p in model.parameters():\n        p.requires_grad_(True)\n    for epoch in range(num_epochs):\n")],
     "froze trainable again"),
    ("model-zero-grad", "07-train-loop", "right",
     [("            optimizer.zero_grad()\n", "            model.zero_grad()\n")], ""),
]

MUTANTS += [
    # ------------------------------------------------------------------ 04: buffers
    # A buffer is saved in the state_dict (a checkpoint of the reference layout no longer loads strictly) and cast
    # by .to(dtype) (in bf16, alpha / rank = 8 / 3 becomes 2.671875).
    ("scaling-buffer", "04-lora-layer", "wrong",
     [("        self.scaling = alpha / rank", "        self.register_buffer('scaling', torch.tensor(alpha / rank))")],
     "state_dict"),
    ("scaling-property", "04-lora-layer", "right",
     [("        self.scaling = alpha / rank\n",
       "        self.alpha, self.rank = alpha, rank\n\n    @property\n    def scaling(self):\n"
       "        return self.alpha / self.rank\n")], ""),
    ("merged-buffer", "04-linear-with-lora", "wrong",
     [("        self.merged = False\n\n    def forward",
       "        self.register_buffer('merged', torch.tensor(False))\n\n    def forward"),
      ("            self.merged = True", "            self.merged.fill_(True)"),
      ("            self.merged = False", "            self.merged.fill_(False)")], "state_dict"),
]

MUTANTS += [
    # ------------------------------------------------------------------ 07-last-token
    # torch.arange without device=: right on a CPU, fails on a GPU (the batch on cuda, the positions on the CPU).
    ("arange-no-device", "07-last-token", "wrong",
     [("    positions = torch.arange(input_batch.shape[1], device=input_batch.device)",
       "    positions = torch.arange(input_batch.shape[1])")], "device=input_batch.device"),
    ("arange-like-batch", "07-last-token", "right",
     [("    positions = torch.arange(input_batch.shape[1], device=input_batch.device)",
       "    positions = torch.ones_like(input_batch[0]).cumsum(dim=0) - 1")], ""),
]

MUTANTS += [
    # ------------------------------------------------------------------ 03: NumPy's global generator
    # np.random.seed(seed), then sample() without random_state: the same rows (pandas then draws from NumPy's global
    # generator), but every NumPy random draw of the notebook after it changes.
    ("np-seed", "03-balance", "wrong",
     [("    ham = df[df[\"Label\"] == \"ham\"].sample(len(spam), random_state=seed)",
       "    np.random.seed(seed)\n    ham = df[df[\"Label\"] == \"ham\"].sample(len(spam))")], "NumPy's global random"),
    ("own-random-state", "03-balance", "right",
     [("    ham = df[df[\"Label\"] == \"ham\"].sample(len(spam), random_state=seed)",
       "    ham = df[df[\"Label\"] == \"ham\"].sample(len(spam), random_state=np.random.RandomState(seed))")], ""),
    ("np-seed", "03-split", "wrong",
     [("    shuffled = df.sample(frac=1, random_state=seed)", "    np.random.seed(seed)\n    shuffled = df.sample(frac=1)")],
     "NumPy's global random"),
    ("own-random-state", "03-split", "right",
     [("    shuffled = df.sample(frac=1, random_state=seed)",
       "    shuffled = df.sample(frac=1, random_state=np.random.RandomState(seed))")], ""),
]

MUTANTS += [
    # ------------------------------------------------------------------ 08-kd-loss
    # detach_() for detach(): the value and the gradients are right, but the caller's teacher logits no longer
    # require grad (a teacher trained beside the student would stop learning).
    ("detach-in-place", "08-kd-loss", "wrong",
     [("F.softmax(teacher_logits.detach() / temperature", "F.softmax(teacher_logits.detach_() / temperature")],
     "in place"),
    ("detach-clone", "08-kd-loss", "right",
     [("F.softmax(teacher_logits.detach() / temperature", "F.softmax(teacher_logits.clone().detach_() / temperature")], ""),
]

MUTANTS += [
    # ------------------------------------------------------------------ 01-count-tensors
    # Counts remembered by id(): right on every tree seen once, stale on a tree that grew since.
    ("memo-by-id", "01-count-tensors", "wrong", '''
_seen = {}
def count_tensors(tree) -> int:
    if id(tree) in _seen:
        return _seen[id(tree)]
    if isinstance(tree, torch.Tensor):
        n = 1
    elif isinstance(tree, dict):
        n = sum(count_tensors(v) for v in tree.values())
    else:
        n = sum(count_tensors(v) for v in tree)
    _seen[id(tree)] = n
    return n
''', "remember nothing between calls"),
    ("memo-within-call", "01-count-tensors", "right", '''
def count_tensors(tree, _seen=None) -> int:
    seen = {} if _seen is None else _seen
    if isinstance(tree, torch.Tensor):
        return 1
    items = tree.values() if isinstance(tree, dict) else tree
    return sum(count_tensors(v, seen) for v in items)
''', ""),

    # ------------------------------------------------------------------ 06-lora-grads
    # Autograd on the caller's own A and B: right once, but they now require grad and keep .grad, which the
    # next call adds to.
    ("autograd-on-caller", "06-lora-grads", "wrong", '''
def lora_grads(x, A, B, s, g):
    A.requires_grad_(True)
    B.requires_grad_(True)
    (s * x @ A.T @ B.T).backward(g)
    return A.grad, B.grad
''', "requires_grad"),
    ("autograd-functional", "06-lora-grads", "right", '''
def lora_grads(x, A, B, s, g):
    _, vjp = torch.autograd.functional.vjp(lambda a, b: s * x @ a.T @ b.T, (A, B), g)
    return vjp
''', ""),
]

MUTANTS += [
    # ------------------------------------------------------------------ in-place steps autograd allows
    ("scales-hidden-in-place", "04-lora-layer", "right",
     [("        return self.scaling * (x @ self.A.T @ self.B.T)",
       "        h = x @ self.A.T\n        h.mul_(self.scaling)\n        return h @ self.B.T")], ""),
    ("adds-in-place", "04-linear-with-lora", "right",
     [("        return self.linear(x) + self.lora(x)", "        out = self.linear(x)\n        out += self.lora(x)\n        return out")],
     ""),
]
