"""Mutants of exercises 01-03: (id, exercise, kind, change, fragment).

``change`` is either a list of (old, new) replacements applied to the solution notebook's exercise
cell (each ``old`` must occur in it), or a full source string. ``kind`` is "wrong" (the visible check
must fail with a message containing ``fragment``, and the hidden test must reject it on every seed)
or "right" (both must accept it)."""

MUTANTS = [
    # ------------------------------------------------------------------ 01-count-tensors
    ("float-leaf", "01-count-tensors", "wrong", [("return 1\n", "return 1.0\n")], "plain int"),
    ("float-sum", "01-count-tensors", "wrong",
     [("return sum(count_tensors(v) for v in tree.values())", "return float(sum(count_tensors(v) for v in tree.values()))")],
     "plain int"),
    ("bool-leaf", "01-count-tensors", "wrong", [("return 1\n", "return True\n")], "plain int"),
    ("numel", "01-count-tensors", "wrong", [("return 1\n", "return tree.numel()\n")], "numel"),
    ("no-lists", "01-count-tensors", "wrong", [("if isinstance(tree, list):", "if False:")], "list"),
    ("tuples-not-lists", "01-count-tensors", "wrong", [("if isinstance(tree, list):", "if isinstance(tree, tuple):")],
     "list"),
    ("dict-len", "01-count-tensors", "wrong",
     [("return sum(count_tensors(v) for v in tree.values())", "return len(tree)")], "recursively"),
    ("list-flat", "01-count-tensors", "wrong",
     [("return sum(count_tensors(v) for v in tree)\n", "return sum(1 for v in tree if isinstance(v, torch.Tensor))\n")],
     "recursively"),
    ("count-containers", "01-count-tensors", "wrong",
     [("return sum(count_tensors(v) for v in tree.values())", "return 1 + sum(count_tensors(v) for v in tree.values())")],
     "sum over its values"),
    ("empty-is-one", "01-count-tensors", "wrong",
     [("    if isinstance(tree, dict):", "    if not tree:\n        return 1\n    if isinstance(tree, dict):")], "empty"),
    ("dict-top-level", "01-count-tensors", "wrong",
     [("return sum(count_tensors(v) for v in tree.values())",
       "return sum(1 if isinstance(v, torch.Tensor) else 0 for v in tree.values())")], "recursively"),
    ("is-tensor", "01-count-tensors", "right", [("isinstance(tree, torch.Tensor)", "torch.is_tensor(tree)")], ""),
    ("list-or-tuple", "01-count-tensors", "right", [("isinstance(tree, list)", "isinstance(tree, (list, tuple))")], ""),
    ("map-sum", "01-count-tensors", "right",
     [("sum(count_tensors(v) for v in tree.values())", "sum(map(count_tensors, tree.values()))")], ""),
    ("stack", "01-count-tensors", "right", '''
def count_tensors(tree) -> int:
    stack, n = [tree], 0
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            n += 1
        elif isinstance(item, dict):
            stack.extend(item.values())
        else:
            stack.extend(item)
    return n
''', ""),

    # ------------------------------------------------------------------ 02-settings-to-cfg
    ("swap-heads-layers", "02-settings-to-cfg", "wrong",
     [('"n_head": "n_heads", "n_layer": "n_layers"', '"n_head": "n_layers", "n_layer": "n_heads"')],
     "which settings key maps"),
    ("swap-vocab-ctx", "02-settings-to-cfg", "wrong",
     [('"n_vocab": "vocab_size", "n_ctx": "context_length"', '"n_vocab": "context_length", "n_ctx": "vocab_size"')],
     "which settings key maps"),
    ("fixed-drop-rate", "02-settings-to-cfg", "wrong",
     [("cfg.update(drop_rate=drop_rate, qkv_bias=qkv_bias)", "cfg.update(drop_rate=0.0, qkv_bias=qkv_bias)")],
     "drop_rate argument"),
    ("fixed-qkv-bias", "02-settings-to-cfg", "wrong",
     [("cfg.update(drop_rate=drop_rate, qkv_bias=qkv_bias)", "cfg.update(drop_rate=drop_rate, qkv_bias=True)")],
     "qkv_bias argument"),
    ("no-drop-rate-key", "02-settings-to-cfg", "wrong",
     [("cfg.update(drop_rate=drop_rate, qkv_bias=qkv_bias)", "cfg.update(qkv_bias=qkv_bias)")], "'drop_rate'"),
    ("unknown-accepted", "02-settings-to-cfg", "wrong",
     [("raise KeyError(f\"settings has an unknown key {key!r}\")", "pass"),
      ("cfg = {names[key]: value for key, value in settings.items()}",
       "cfg = {names[key]: value for key, value in settings.items() if key in names}")], "unknown key"),
    ("missing-accepted", "02-settings-to-cfg", "wrong",
     [("raise KeyError(f\"settings is missing {key!r}\")", "pass")], "missing key"),
    ("keyerror-unnamed", "02-settings-to-cfg", "wrong",
     [("raise KeyError(f\"settings is missing {key!r}\")", "raise KeyError(\"bad settings\")"),
      ("raise KeyError(f\"settings has an unknown key {key!r}\")", "raise KeyError(\"bad settings\")")], "should name it"),
    ("valueerror", "02-settings-to-cfg", "wrong",
     [("raise KeyError(f\"settings is missing {key!r}\")", "raise ValueError(f\"settings is missing {key!r}\")"),
      ("raise KeyError(f\"settings has an unknown key {key!r}\")", "raise ValueError(f\"unknown {key!r}\")")],
     "should raise KeyError"),
    ("mutates-input", "02-settings-to-cfg", "wrong",
     [("cfg = {names[key]: value for key, value in settings.items()}",
       "cfg = settings\n    for key in list(cfg):\n        cfg[names[key]] = cfg.pop(key)")], "changed the settings dict"),
    ("wrong-key-name", "02-settings-to-cfg", "wrong", [('"n_embd": "emb_dim"', '"n_embd": "embed_dim"')], "'emb_dim'"),
    ("keeps-old-keys", "02-settings-to-cfg", "wrong",
     [("cfg = {names[key]: value for key, value in settings.items()}",
       "cfg = {**settings, **{names[key]: value for key, value in settings.items()}}")], "does not use"),
    ("hard-coded-small", "02-settings-to-cfg", "wrong", '''
def settings_to_cfg(settings: dict, drop_rate: float = 0.0, qkv_bias: bool = True) -> dict:
    for key in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"):
        if key not in settings:
            raise KeyError(key)
    for key in settings:
        if key not in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"):
            raise KeyError(key)
    return {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
            "drop_rate": drop_rate, "qkv_bias": qkv_bias}
''', "should be"),
    ("explicit", "02-settings-to-cfg", "right", '''
def settings_to_cfg(settings: dict, drop_rate: float = 0.0, qkv_bias: bool = True) -> dict:
    unknown = set(settings) - {"n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"}
    if unknown:
        raise KeyError(f"unknown settings key {sorted(unknown)[0]!r}")
    return {"vocab_size": settings["n_vocab"], "context_length": settings["n_ctx"], "emb_dim": settings["n_embd"],
            "n_heads": settings["n_head"], "n_layers": settings["n_layer"], "drop_rate": drop_rate, "qkv_bias": qkv_bias}
''', ""),
    ("copy-then-rename", "02-settings-to-cfg", "right",
     [("cfg = {names[key]: value for key, value in settings.items()}",
       "cfg = dict(settings)\n    for key in list(cfg):\n        cfg[names[key]] = cfg.pop(key)")], ""),

    # ------------------------------------------------------------------ 02-split-c-attn
    ("no-transpose", "02-split-c-attn", "wrong", [("return (q_w.T, k_w.T, v_w.T)", "return (q_w, k_w, v_w)")],
     "not transposed"),
    ("rows", "02-split-c-attn", "wrong", [("torch.chunk(w, 3, dim=-1)", "torch.chunk(w, 3, dim=0)")], "dim"),
    ("order-kqv", "02-split-c-attn", "wrong", [("return (q_w.T, k_w.T, v_w.T)", "return (k_w.T, q_w.T, v_w.T)")],
     "query, then key, then value"),
    ("bias-order", "02-split-c-attn", "wrong", [("q_b, k_b, v_b = torch.chunk", "k_b, q_b, v_b = torch.chunk")],
     "bias is the wrong slice"),
    ("hard-coded-768", "02-split-c-attn", "wrong", [("torch.chunk(w, 3, dim=-1)", "torch.split(w, 768, dim=-1)")],
     "raised"),
    ("value-is-key", "02-split-c-attn", "wrong", [("return (q_w.T, k_w.T, v_w.T)", "return (q_w.T, k_w.T, k_w.T)")],
     "holds the key columns"),
    ("weights-only", "02-split-c-attn", "wrong",
     [("return (q_w.T, k_w.T, v_w.T), (q_b, k_b, v_b)", "return (q_w.T, k_w.T, v_w.T)")], "two tuples"),
    ("reshape-not-transpose", "02-split-c-attn", "wrong",
     [("return (q_w.T, k_w.T, v_w.T)", "return tuple(t.reshape(t.shape[1], t.shape[0]) for t in (q_w, k_w, v_w))")],
     "transposed"),
    ("bias-from-weight", "02-split-c-attn", "wrong",
     [("torch.chunk(b, 3, dim=-1)", "torch.chunk(w[0], 3, dim=-1)")], "bias is the wrong slice"),
    ("transpose-first", "02-split-c-attn", "right",
     [("q_w, k_w, v_w = torch.chunk(w, 3, dim=-1)", "q_w, k_w, v_w = (t.T for t in torch.chunk(w.T, 3, dim=0))")], ""),
    ("slices", "02-split-c-attn", "right", '''
def split_c_attn(w: torch.Tensor, b: torch.Tensor):
    e = w.shape[0]
    return ([w[:, i * e:(i + 1) * e].T for i in range(3)], [b[i * e:(i + 1) * e] for i in range(3)])
''', ""),
    ("split-contiguous", "02-split-c-attn", "right", '''
def split_c_attn(w: torch.Tensor, b: torch.Tensor):
    ws = torch.split(w, w.shape[-1] // 3, dim=1)
    return tuple(t.t().contiguous() for t in ws), tuple(torch.split(b, b.shape[0] // 3))
''', ""),

    # ------------------------------------------------------------------ 03-balance
    ("labels-reversed", "03-balance", "wrong", [('{"ham": 0, "spam": 1}', '{"ham": 1, "spam": 0}')], "direction"),
    ("labels-eq-ham", "03-balance", "wrong",
     [('balanced["Label"].map({"ham": 0, "spam": 1})', '(balanced["Label"] == "ham").astype(int)')], "direction"),
    ("no-mapping", "03-balance", "wrong", [('balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})', "pass")],
     "integers 0 and 1"),
    ("string-labels", "03-balance", "wrong", [('{"ham": 0, "spam": 1}', '{"ham": "0", "spam": "1"}')], "integers"),
    ("float-labels", "03-balance", "wrong", [('{"ham": 0, "spam": 1}', '{"ham": 0.0, "spam": 1.0}')], "integers"),
    ("seed-ignored", "03-balance", "wrong", [("random_state=seed", "random_state=123")], "seed argument"),
    ("no-random-state", "03-balance", "wrong", [(", random_state=seed", "")], "seed argument"),
    ("spam-first", "03-balance", "wrong", [("pd.concat([ham, spam])", "pd.concat([spam, ham])")], "ham rows first"),
    ("oversample-spam", "03-balance", "wrong",
     [('    spam = df[df["Label"] == "spam"]\n', ''),
      ('ham = df[df["Label"] == "ham"].sample(len(spam), random_state=seed)',
       'ham = df[df["Label"] == "ham"]\n    spam = df[df["Label"] == "spam"].sample(len(ham), replace=True, random_state=seed)')],
     "keep every spam"),
    ("hard-coded-747", "03-balance", "wrong", [(".sample(len(spam),", ".sample(747,")], "as many ham"),
    ("shuffled-result", "03-balance", "wrong",
     [("pd.concat([ham, spam]).reset_index(drop=True)", "pd.concat([ham, spam]).sample(frac=1, random_state=seed).reset_index(drop=True)")],
     "ham rows first"),
    ("query-replace", "03-balance", "right", '''
def create_balanced_dataset(df: pd.DataFrame, seed: int = 123) -> pd.DataFrame:
    spam = df.query("Label == 'spam'")
    ham = df.query("Label == 'ham'").sample(n=len(spam), random_state=seed)
    out = pd.concat([ham, spam], ignore_index=True)
    out["Label"] = out["Label"].replace({"ham": 0, "spam": 1}).astype(int)
    return out
''', ""),
    ("labels-by-position", "03-balance", "right",
     [('balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})',
       'balanced["Label"] = [0] * len(ham) + [1] * len(spam)')], ""),
    ("eq-spam", "03-balance", "right",
     [('balanced["Label"].map({"ham": 0, "spam": 1})', '(balanced["Label"] == "spam").astype(int)')], ""),
    ("no-reset-index", "03-balance", "right", [("pd.concat([ham, spam]).reset_index(drop=True)", "pd.concat([ham, spam])")], ""),

    # ------------------------------------------------------------------ 03-split
    ("no-shuffle", "03-split", "wrong",
     [("shuffled = df.sample(frac=1, random_state=seed).reset_index(drop=True)", "shuffled = df.reset_index(drop=True)")],
     "shuffle"),
    ("seed-ignored", "03-split", "wrong", [("random_state=seed", "random_state=123")], "seed argument"),
    ("no-random-state", "03-split", "wrong", [("df.sample(frac=1, random_state=seed)", "df.sample(frac=1)")], "seed"),
    ("fixed-fractions", "03-split", "wrong",
     [("int(len(shuffled) * train_frac)", "int(len(shuffled) * 0.7)"),
      ("int(len(shuffled) * validation_frac)", "int(len(shuffled) * 0.1)")], "function's arguments"),
    ("round", "03-split", "wrong", [("int(len(shuffled) * train_frac)", "round(len(shuffled) * train_frac)")], "sizes"),
    ("ceil", "03-split", "wrong", [("int(len(shuffled) * train_frac)", "math.ceil(len(shuffled) * train_frac)")], "sizes"),
    ("cumulative-cut", "03-split", "wrong",
     [("validation_end = train_end + int(len(shuffled) * validation_frac)",
       "validation_end = int(len(shuffled) * (train_frac + validation_frac))")], "sizes"),
    ("test-overlaps", "03-split", "wrong", [("shuffled[validation_end:]", "shuffled[train_end:]")], "exactly once"),
    ("off-by-one", "03-split", "wrong", [("shuffled[:train_end]", "shuffled[:train_end + 1]")], "exactly once"),
    ("val-test-swapped", "03-split", "wrong",
     [("return (shuffled[:train_end].reset_index(drop=True),\n            shuffled[train_end:validation_end].reset_index(drop=True),\n            shuffled[validation_end:].reset_index(drop=True))",
       "return (shuffled[:train_end], shuffled[validation_end:], shuffled[train_end:validation_end])")], "sizes"),
    ("iloc", "03-split", "right", '''
def random_split(df: pd.DataFrame, train_frac: float = 0.7, validation_frac: float = 0.1, seed: int = 123):
    shuffled = df.sample(frac=1, random_state=seed)
    a = int(len(df) * train_frac)
    b = a + int(len(df) * validation_frac)
    return shuffled.iloc[:a], shuffled.iloc[a:b], shuffled.iloc[b:]
''', ""),
    ("list-return", "03-split", "right",
     [("return (shuffled[:train_end].reset_index(drop=True),", "return [shuffled[:train_end].reset_index(drop=True),"),
      ("shuffled[validation_end:].reset_index(drop=True))", "shuffled[validation_end:].reset_index(drop=True)]")], ""),

    # ------------------------------------------------------------------ 03-num-batches
    ("always-floor", "03-num-batches", "wrong", [("return math.ceil(n_examples / batch_size)", "return n_examples // batch_size")],
     "ceil"),
    ("always-ceil", "03-num-batches", "wrong", [("return n_examples // batch_size", "return math.ceil(n_examples / batch_size)")],
     "floor"),
    ("true-division", "03-num-batches", "wrong", [("return n_examples // batch_size", "return n_examples / batch_size")],
     "int"),
    ("plus-b", "03-num-batches", "wrong",
     [("return math.ceil(n_examples / batch_size)", "return (n_examples + batch_size) // batch_size")], "ceil"),
    ("int-plus-one", "03-num-batches", "wrong",
     [("return math.ceil(n_examples / batch_size)", "return int(n_examples / batch_size) + 1")], "ceil"),
    ("round", "03-num-batches", "wrong", [("return math.ceil(n_examples / batch_size)", "return round(n_examples / batch_size)")],
     "ceil"),
    ("drop-reversed", "03-num-batches", "wrong", [("if drop_last:", "if not drop_last:")], "drop_last"),
    ("float-ceil", "03-num-batches", "wrong",
     [("return math.ceil(n_examples / batch_size)", "return float(math.ceil(n_examples / batch_size))")], "int"),
    ("numpy-ceil", "03-num-batches", "wrong",
     [("return math.ceil(n_examples / batch_size)", "return np.ceil(n_examples / batch_size)")], "int"),
    ("neg-floor", "03-num-batches", "right", [("math.ceil(n_examples / batch_size)", "-(-n_examples // batch_size)")], ""),
    ("add-minus-one", "03-num-batches", "right",
     [("math.ceil(n_examples / batch_size)", "(n_examples + batch_size - 1) // batch_size")], ""),
    ("range", "03-num-batches", "right", [("math.ceil(n_examples / batch_size)", "len(range(0, n_examples, batch_size))")], ""),
    ("divmod", "03-num-batches", "right", '''
def num_batches(n_examples: int, batch_size: int, drop_last: bool = False) -> int:
    full, rest = divmod(n_examples, batch_size)
    return full if drop_last or rest == 0 else full + 1
''', ""),
]
