"""Mutants for the fourth round of blind spots (see catalogue_a for the format): answers that change what
they were not asked to change (PyTorch's global settings, the global random generator, the model's training
mode, the requires_grad of parameters they do not wrap), a loss that runs backward itself, the pretrained layer
swapped for a fresh one, parameters registered or counted twice, a forward that spoils its previous input;
and the right answers that must stay accepted beside them."""

MUTANTS = [
    # ------------------------------------------------------------------ 04-lora-layer
    ("reseeds-in-init", "04-lora-layer", "wrong",
     [("        self.A = nn.Parameter(torch.empty(rank, in_dim))",
       "        torch.manual_seed(0)\n        self.A = nn.Parameter(torch.empty(rank, in_dim))")], "same A"),
    ("registers-twice", "04-lora-layer", "wrong",
     [("        self.scaling = alpha / rank", "        self.scaling = alpha / rank\n"
                                           "        self.ab = nn.ParameterList([self.A, self.B])")],
     "exactly two parameters"),
    ("zeroes-previous-input", "04-lora-layer", "wrong",
     [("        return self.scaling * (x @ self.A.T @ self.B.T)",
       "        old = getattr(self, '_last', None)\n        if old is not None:\n            old.zero_()\n"
       "        self._last = x\n        return self.scaling * (x @ self.A.T @ self.B.T)")], "previous forward pass"),
    ("float64-default", "04-lora-layer", "wrong",
     [("        self.A = nn.Parameter(torch.empty(rank, in_dim))",
       "        torch.set_default_dtype(torch.float64)\n        self.A = nn.Parameter(torch.empty(rank, in_dim))")],
     "default dtype"),
    ("uniform-by-hand", "04-lora-layer", "right",
     [("        self.A = nn.Parameter(torch.empty(rank, in_dim))\n        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))",
       "        bound = 1 / math.sqrt(in_dim)\n        self.A = nn.Parameter(torch.rand(rank, in_dim) * 2 * bound - bound)")],
     ""),

    # ------------------------------------------------------------------ 04-linear-with-lora
    ("registers-lora-twice", "04-linear-with-lora", "wrong",
     [("        self.merged = False\n\n    def forward",
       "        self.merged = False\n        self.again = nn.ParameterList([self.lora.A, self.lora.B])\n\n    def forward")],
     "registered once"),

    # ------------------------------------------------------------------ 05-replace
    ("fresh-linear", "05-replace", "wrong",
     [("LinearWithLoRA(child, rank, alpha)",
       "LinearWithLoRA(nn.Linear(child.in_features, child.out_features), rank, alpha)")], "wraps a new layer"),
    ("freezes-everything-after", "05-replace", "wrong",
     [("    return replaced", "    for p in module.parameters():\n        p.requires_grad_(False)\n    return replaced")],
     "LoRA matrices"),
    ("freezes-the-rest", "05-replace", "wrong",
     [("    replaced = []\n", "    replaced = []\n    for p in module.parameters():\n        p.requires_grad_(False)\n")],
     "changed requires_grad"),
    ("unfreezes-the-rest", "05-replace", "wrong",
     [("    replaced = []\n", "    replaced = []\n    for p in module.parameters():\n        p.requires_grad_(True)\n")],
     "changed requires_grad"),
    ("add-module", "05-replace", "right",
     [("setattr(module, child_name, LinearWithLoRA(child, rank, alpha))",
       "module.add_module(child_name, LinearWithLoRA(child, rank, alpha))")], ""),

    # ------------------------------------------------------------------ 06-freeze
    ("grad-off-globally", "06-freeze", "wrong",
     [("        p.requires_grad_(False)\n\n\ndef unfreeze", "        p.requires_grad_(False)\n    torch.set_grad_enabled(False)"
                                                         "\n\n\ndef unfreeze")], "autograd off"),
    ("calls-eval", "06-freeze", "wrong",
     [("    for p in model.parameters():\n        p.requires_grad_(False)",
       "    model.eval()\n    for p in model.parameters():\n        p.requires_grad_(False)")], "training mode"),
    ("reseeds", "06-freeze", "wrong",
     [("    for p in model.parameters():\n        p.requires_grad_(False)",
       "    torch.manual_seed(0)\n    for p in model.parameters():\n        p.requires_grad_(False)")],
     "random generator"),
    ("under-no-grad-block", "06-freeze", "right",
     [("    for p in model.parameters():\n        p.requires_grad_(False)",
       "    with torch.no_grad():\n        for p in model.parameters():\n            p.requires_grad_(False)")], ""),
    ("module-requires-grad", "06-freeze", "right",
     [("    for p in model.parameters():\n        p.requires_grad_(False)", "    model.requires_grad_(False)")], ""),

    # ------------------------------------------------------------------ 06-lora-grads
    ("float64-default", "06-lora-grads", "wrong",
     [("    h = x @ A.T", "    torch.set_default_dtype(torch.float64)\n    h = x @ A.T")], "default dtype"),

    ("reseeds", "06-lora-grads", "wrong",
     [("    h = x @ A.T", "    torch.manual_seed(0)\n    h = x @ A.T")], "random generator"),

    # ------------------------------------------------------------------ 07-last-token
    ("reseeds", "07-last-token", "wrong",
     [("    real = input_batch != pad_token_id", "    torch.manual_seed(0)\n    real = input_batch != pad_token_id")],
     "random generator"),
    ("grad-off", "07-last-token", "wrong",
     [("    real = input_batch != pad_token_id", "    torch.set_grad_enabled(False)\n    real = input_batch != pad_token_id")],
     "autograd off"),

    # ------------------------------------------------------------------ 08-kd-loss
    ("backward-inside", "08-kd-loss", "wrong",
     [("    return alpha * temperature ** 2 * soft + (1 - alpha) * hard",
       "    loss = alpha * temperature ** 2 * soft + (1 - alpha) * hard\n    loss.backward()\n    return loss.detach()")],
     "leave backward() to the caller"),
    ("grad-off-after", "08-kd-loss", "wrong",
     [("    return alpha * temperature ** 2 * soft + (1 - alpha) * hard",
       "    loss = alpha * temperature ** 2 * soft + (1 - alpha) * hard\n    torch.set_grad_enabled(False)\n"
       "    return loss")], "autograd off"),
    ("enable-grad-block", "08-kd-loss", "right",
     [("    soft = F.kl_div(", "    with torch.enable_grad():\n        pass\n    soft = F.kl_div(")], ""),

    # ------------------------------------------------------------------ 09-lora-config
    ("counts-tied-twice", "09-lora-config", "wrong",
     [("    return sum(p.numel() for p in model.parameters() if p.requires_grad)",
       "    return sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False) if p.requires_grad)")],
     "tied"),
    ("unique-by-id", "09-lora-config", "right",
     [("    return sum(p.numel() for p in model.parameters() if p.requires_grad)",
       "    unique = {id(p): p for p in model.parameters()}\n"
       "    return sum(p.numel() for p in unique.values() if p.requires_grad)")], ""),
]
