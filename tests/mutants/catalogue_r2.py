"""Mutants for the second round of blind spots (see catalogue_a for the format): gradients that never
flow, inputs changed in place, inputs that lack what the notebook teaches (padding, names that end in
a key without its dot, modules several levels deep), configs compared by the model they build, answers
of the wrong kind (which must produce a sentence, never a traceback from inside a check), and the
equivalent-but-literal right answers."""

MUTANTS = [
    # ------------------------------------------------------------------ 01-count-tensors
    ("dedupe-by-id", "01-count-tensors", "wrong", '''
def count_tensors(tree) -> int:
    seen = set()
    def walk(t):
        if isinstance(t, torch.Tensor):
            seen.add(id(t))
        elif isinstance(t, dict):
            for v in t.values():
                walk(v)
        else:
            for v in t:
                walk(v)
    walk(tree)
    return len(seen)
''', "de-duplicate"),
    ("pops-caller-lists", "01-count-tensors", "wrong", '''
def count_tensors(tree) -> int:
    if isinstance(tree, torch.Tensor):
        return 1
    items = list(tree.values()) if isinstance(tree, dict) else tree
    n = 0
    while items:
        n += count_tensors(items.pop())
    return n
''', "in place"),
    ("numpy-count", "01-count-tensors", "wrong", [("return 1\n", "return np.int64(1)\n")], "plain int"),
    ("forgets-return", "01-count-tensors", "wrong", '''
def count_tensors(tree) -> int:
    total, stack = 0, [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += 1
        else:
            stack.extend(item.values() if isinstance(item, dict) else item)
    print(total)
''', "plain int"),
    ("copy-stack", "01-count-tensors", "right", '''
def count_tensors(tree) -> int:
    stack, n = [tree], 0
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            n += 1
        else:
            stack.extend(item.values() if isinstance(item, dict) else item)
    return n
''', ""),

    # ------------------------------------------------------------------ 02-settings-to-cfg
    ("n-heads-from-embd", "02-settings-to-cfg", "wrong",
     [("cfg.update(drop_rate=drop_rate, qkv_bias=qkv_bias)",
       "cfg.update(drop_rate=drop_rate, qkv_bias=qkv_bias, n_heads=settings[\"n_embd\"] // 64)")],
     "settings['n_head']"),
    ("returns-list", "02-settings-to-cfg", "wrong", [("    return cfg", "    return list(cfg.items())")], "dict"),

    # ------------------------------------------------------------------ 02-split-c-attn
    ("transposes-caller", "02-split-c-attn", "wrong",
     [("q_w, k_w, v_w = torch.chunk(w, 3, dim=-1)", "q_w, k_w, v_w = torch.chunk(w.t_(), 3, dim=0)"),
      ("return (q_w.T, k_w.T, v_w.T)", "return (q_w, k_w, v_w)")], "in place"),
    ("returns-none", "02-split-c-attn", "wrong", [("return (q_w.T, k_w.T, v_w.T), (q_b, k_b, v_b)", "pass")],
     "two tuples"),

    # ------------------------------------------------------------------ 03-balance
    ("maps-caller-frame", "03-balance", "wrong", '''
def create_balanced_dataset(df: pd.DataFrame, seed: int = 123) -> pd.DataFrame:
    df["Label"] = df["Label"].map({"ham": 0, "spam": 1})
    spam = df[df["Label"] == 1]
    ham = df[df["Label"] == 0].sample(len(spam), random_state=seed)
    return pd.concat([ham, spam]).reset_index(drop=True)
''', "changed the DataFrame"),
    ("ham-sorted", "03-balance", "wrong",
     [(".sample(len(spam), random_state=seed)", ".sample(len(spam), random_state=seed).sort_index()")],
     "order `.sample` returns"),
    ("returns-series", "03-balance", "wrong", [("    return balanced", "    return balanced[\"Label\"]")], "DataFrame"),
    ("copy-then-map", "03-balance", "right", '''
def create_balanced_dataset(df: pd.DataFrame, seed: int = 123) -> pd.DataFrame:
    df = df.copy()
    df["Label"] = df["Label"].map({"ham": 0, "spam": 1})
    spam = df[df["Label"] == 1]
    ham = df[df["Label"] == 0].sample(len(spam), random_state=seed)
    return pd.concat([ham, spam], ignore_index=True)
''', ""),

    # ------------------------------------------------------------------ 03-split
    ("marks-caller-frame", "03-split", "wrong", '''
def random_split(df: pd.DataFrame, train_frac: float = 0.7, validation_frac: float = 0.1, seed: int = 123):
    df["order"] = np.random.RandomState(seed).permutation(len(df))
    shuffled = df.sample(frac=1, random_state=seed).drop(columns="order").reset_index(drop=True)
    a = int(len(shuffled) * train_frac)
    b = a + int(len(shuffled) * validation_frac)
    return shuffled[:a], shuffled[a:b], shuffled[b:]
''', "changed the DataFrame"),
    ("numpy-parts", "03-split", "wrong", '''
def random_split(df: pd.DataFrame, train_frac: float = 0.7, validation_frac: float = 0.1, seed: int = 123):
    shuffled = df.sample(frac=1, random_state=seed).to_numpy()
    a = int(len(shuffled) * train_frac)
    b = a + int(len(shuffled) * validation_frac)
    return np.split(shuffled, [a, b])
''', "three DataFrames"),
    ("one-frame", "03-split", "wrong", [("return (shuffled[:train_end].reset_index(drop=True),", "return shuffled\n    (shuffled,")],
     "three DataFrames"),
    ("inplace-on-copy", "03-split", "right", '''
def random_split(df: pd.DataFrame, train_frac: float = 0.7, validation_frac: float = 0.1, seed: int = 123):
    df = df.sample(frac=1, random_state=seed)
    df.reset_index(drop=True, inplace=True)
    a = int(len(df) * train_frac)
    b = a + int(len(df) * validation_frac)
    return df.iloc[:a], df.iloc[a:b], df.iloc[b:]
''', ""),

    # ------------------------------------------------------------------ 03-num-batches
    ("numpy-int", "03-num-batches", "wrong",
     [("return math.ceil(n_examples / batch_size)", "return np.int64(math.ceil(n_examples / batch_size))")], "int"),
    ("none", "03-num-batches", "wrong", [("return math.ceil(n_examples / batch_size)", "pass")], "int"),

    # ------------------------------------------------------------------ 04-lora-layer
    ("forward-data", "04-lora-layer", "wrong",
     [("return self.scaling * (x @ self.A.T @ self.B.T)", "return self.scaling * (x @ self.A.data.T @ self.B.data.T)")],
     "torch.no_grad()"),
    ("forward-no-grad", "04-lora-layer", "wrong",
     [("return self.scaling * (x @ self.A.T @ self.B.T)",
       "with torch.no_grad():\n            out = x @ self.A.T @ self.B.T\n        return self.scaling * out")],
     "torch.no_grad()"),
    ("forward-detach-B", "04-lora-layer", "wrong",
     [("return self.scaling * (x @ self.A.T @ self.B.T)", "return self.scaling * (x @ self.A.T @ self.B.detach().T)")],
     "B has no gradient"),
    ("x-in-place", "04-lora-layer", "wrong",
     [("return self.scaling * (x @ self.A.T @ self.B.T)", "x *= self.scaling\n        return x @ self.A.T @ self.B.T")],
     "in place"),
    ("forward-none", "04-lora-layer", "wrong", [("return self.scaling * (x @ self.A.T @ self.B.T)", "pass")],
     "output should have shape"),
    ("scale-x-first", "04-lora-layer", "right",
     [("return self.scaling * (x @ self.A.T @ self.B.T)", "return (x * self.scaling) @ self.A.T @ self.B.T")], ""),
    ("mul-method", "04-lora-layer", "right",
     [("return self.scaling * (x @ self.A.T @ self.B.T)", "return (x @ self.A.T @ self.B.T).mul(self.scaling)")], ""),

    # ------------------------------------------------------------------ 04-linear-with-lora
    ("lora-under-no-grad", "04-linear-with-lora", "wrong",
     [("return self.linear(x) + self.lora(x)",
       "with torch.no_grad():\n            delta = self.lora(x)\n        return self.linear(x) + delta")], "no_grad"),
    ("merged-weight-data", "04-linear-with-lora", "wrong",
     [("return self.linear(x) + self.lora(x)",
       "w = self.linear.weight + self.lora.scaling * self.lora.B.data @ self.lora.A.data\n"
       "        return nn.functional.linear(x, w, self.linear.bias)")], ".data"),
    ("lora-detached", "04-linear-with-lora", "wrong",
     [("return self.linear(x) + self.lora(x)", "return self.linear(x) + self.lora(x).detach()")], ".detach()"),
    ("forward-merged-weight", "04-linear-with-lora", "right",
     [("return self.linear(x) + self.lora(x)",
       "w = self.linear.weight + self.lora.scaling * self.lora.B @ self.lora.A\n"
       "        return nn.functional.linear(x, w, self.linear.bias)")], ""),

    # ------------------------------------------------------------------ 05-replace
    ("endswith-no-dot", "05-replace", "wrong",
     [('return any(name == key or name.endswith("." + key) for key in keys)',
       "return any(name.endswith(key) for key in keys)")], "whole names"),
    ("exclude-child-name", "05-replace", "wrong", [("if matches(name, exclude):", "if matches(child_name, exclude):")],
     "head.out_head"),
    ("last-part-only", "05-replace", "wrong",
     [('return any(name == key or name.endswith("." + key) for key in keys)',
       'return any(name.split(".")[-1] == key.split(".")[-1] for key in keys)')], "whole names"),
    ("returns-none", "05-replace", "wrong", [("    return replaced", "    return None")], "list"),
    ("regex", "05-replace", "right",
     [('return any(name == key or name.endswith("." + key) for key in keys)',
       'import re\n    return any(re.fullmatch(r"(.*\\.)?" + re.escape(key), name) for key in keys)')], ""),
    ("split-suffix", "05-replace", "right",
     [('return any(name == key or name.endswith("." + key) for key in keys)',
       'parts = name.split(".")\n    return any(parts[len(parts) - len(k.split(".")):] == k.split(".") for k in keys)')],
     ""),

    # ------------------------------------------------------------------ 06-freeze
    ("unfreeze-two-levels", "06-freeze", "wrong",
     [("for p in module.parameters():\n        p.requires_grad_(True)",
       "for p in module.parameters(recurse=False):\n        p.requires_grad_(True)\n"
       "    for child in module.children():\n        for p in child.parameters(recurse=False):\n"
       "            p.requires_grad_(True)")], "every depth"),
    ("unfreeze-children-only", "06-freeze", "wrong",
     [("for p in module.parameters():\n        p.requires_grad_(True)",
       "for child in module.children():\n        child.requires_grad_(True)")], "every parameter of the module"),
    ("freeze-three-levels", "06-freeze", "wrong",
     [("for p in model.parameters():\n        p.requires_grad_(False)",
       "for a in [model, *model.children()]:\n        for b in [a, *a.children()]:\n"
       "            for c in [b, *b.children()]:\n                for p in c.parameters(recurse=False):\n"
       "                    p.requires_grad_(False)")], "every depth"),
    ("unfreeze-recursive", "06-freeze", "right",
     [("for p in module.parameters():\n        p.requires_grad_(True)",
       "for p in module.parameters(recurse=False):\n        p.requires_grad_(True)\n"
       "    for child in module.children():\n        unfreeze(child)")], ""),

    # ------------------------------------------------------------------ 06-lora-grads
    ("scales-g-in-place", "06-lora-grads", "wrong",
     [("    h = x @ A.T\n", "    g *= s\n    s = 1\n    h = x @ A.T\n")], "in place"),
    ("returns-dict", "06-lora-grads", "wrong", [("return dA, dB", "return {'dA': dA, 'dB': dB}")], "(dA, dB)"),
    ("g-scaled-copy", "06-lora-grads", "right",
     [("    h = x @ A.T\n", "    g = g * s\n    s = 1\n    h = x @ A.T\n")], ""),

    # ------------------------------------------------------------------ 07-train-loop
    ("last-position-loss", "07-train-loop", "wrong",
     [("loss = calc_loss_batch(input_batch, target_batch, model, device)",
       "loss = F.cross_entropy(model(input_batch)[:, -1, :], target_batch)")], "last real token"),
    ("loss-on-train-loader", "07-train-loop", "wrong",
     [("calc_loss_loader(train_eval_loader", "calc_loss_loader(train_loader")], "train_eval_loader"),
    ("acc-on-train-loader", "07-train-loop", "wrong",
     [("calc_accuracy_loader(train_eval_loader", "calc_accuracy_loader(train_loader")], "train_eval_loader"),
    ("returns-dict", "07-train-loop", "wrong",
     [("    return train_losses, val_losses, train_accs, val_accs, examples_seen",
       "    return {'train_losses': train_losses, 'val_losses': val_losses}")], "(train_losses"),
    ("sequential-each-time", "07-train-loop", "right",
     [("calc_loss_loader(train_eval_loader", "calc_loss_loader(sequential_loader(train_loader)"),
      ("calc_accuracy_loader(train_eval_loader", "calc_accuracy_loader(sequential_loader(train_loader)")], ""),
    ("pooled-by-hand", "07-train-loop", "right",
     [("loss = calc_loss_batch(input_batch, target_batch, model, device)",
       "input_batch, target_batch = input_batch.to(device), target_batch.to(device)\n"
       "            last = (input_batch != 50256).long().cumsum(dim=1).argmax(dim=1)\n"
       "            logits = model(input_batch)[torch.arange(input_batch.shape[0]), last]\n"
       "            loss = F.cross_entropy(logits, target_batch)")], ""),

    # ------------------------------------------------------------------ 08-kd-loss
    ("soft-no-grad", "08-kd-loss", "wrong",
     [("    soft = F.kl_div(", "    with torch.no_grad():\n        soft = F.kl_div(")], "gradient"),
    ("student-detached-in-kl", "08-kd-loss", "wrong",
     [("F.log_softmax(student_logits / temperature", "F.log_softmax(student_logits.detach() / temperature")],
     "gradient"),
    ("teacher-scaled-in-place", "08-kd-loss", "wrong",
     [("    soft = F.kl_div(", "    teacher = teacher_logits.detach()\n    teacher /= temperature\n    soft = F.kl_div("),
      ("F.softmax(teacher_logits.detach() / temperature, dim=-1)", "F.softmax(teacher, dim=-1)")], "in place"),
    ("xor", "08-kd-loss", "wrong", [("temperature ** 2", "temperature ^ 2")], "XOR"),
    ("returns-float", "08-kd-loss", "wrong", [("return alpha * temperature ** 2 * soft + (1 - alpha) * hard",
                                               "return float(alpha * temperature ** 2 * soft + (1 - alpha) * hard)")],
     "0-dimensional tensor"),
    ("teacher-no-grad-block", "08-kd-loss", "right",
     [("    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),\n"
       "                    F.softmax(teacher_logits.detach() / temperature, dim=-1), reduction=\"batchmean\")",
       "    with torch.no_grad():\n        target = F.softmax(teacher_logits / temperature, dim=-1)\n"
       "    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1), target, reduction=\"batchmean\")")], ""),

    # ------------------------------------------------------------------ 09-lora-config
    ("inference-mode", "09-lora-config", "wrong", [('bias="none",', 'bias="none", inference_mode=True,')], "inference_mode"),
    ("rslora", "09-lora-config", "wrong", [('bias="none",', 'bias="none", use_rslora=True,')], "use_rslora"),
    ("dora", "09-lora-config", "wrong", [('bias="none",', 'bias="none", use_dora=True,')], "use_dora"),
    ("lora-only-bias", "09-lora-config", "wrong", [('bias="none"', 'bias="lora_only"')], "bias should be"),
    ("no-task-type", "09-lora-config", "wrong", [(',\n                         bias="none", task_type="SEQ_CLS")',
                                                  ',\n                         bias="none")')], "task_type"),
    ("config-dict", "09-lora-config", "wrong",
     [("lora_config = LoraConfig(", "lora_config = dict(")], "LoraConfig"),
    ("count-state-dict", "09-lora-config", "wrong",
     [("sum(p.numel() for p in model.parameters() if p.requires_grad)",
       "sum(v.numel() for v in model.state_dict().values() if v.requires_grad)")], "count_trainable"),
    ("dotted-targets", "09-lora-config", "right",
     [('target_modules=["query", "value"]', 'target_modules=["attention.self.query", "attention.self.value"]')], ""),
    ("regex-targets", "09-lora-config", "right",
     [('target_modules=["query", "value"]', r'target_modules=r".*\.(query|value)"')], ""),
    ("head-by-modules-to-save", "09-lora-config", "right",
     [('task_type="SEQ_CLS"', 'modules_to_save=["classifier"]')], ""),
]
