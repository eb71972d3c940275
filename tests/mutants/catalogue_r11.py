"""Mutants for the eleventh round (see catalogue_a for the format): answers the visible check and the probe judged
differently. First, how the answer is called: the probes pass some arguments by position or leave them at their
defaults where the checks passed them by keyword or always gave them, so a signature changed from the cell's (the
parameters reordered, made keyword-only, or a default dropped or changed) passed the check and lost the points
(02's drop_rate and qkv_bias, 03's fractions, 04's and 05's rank and alpha, 07's default pad id); the checks now call
as the probes and the notebooks do. 03's default seed went the other way (the check tried it, the probe did not).
Second, edge inputs: an empty dataset for 03's batch count (max(1, ...) passed both), and 07's positions made on the
CPU and moved to the batch's device with .to(), which works on a GPU but failed both sides (PyTorch's default device
was set to "meta", from which nothing can be copied; the check let the NotImplementedError out as a traceback): both
now stand for the GPU with a tensor subclass that refuses only what a GPU refuses. Last, right answers written from
the statements that must stay accepted."""

_LT_BODY = ("    positions = torch.arange(input_batch.shape[1], device=input_batch.device)  # (width,)\n"
            "    real = input_batch != pad_token_id                                            # (batch, width)\n"
            "    return (positions * real).amax(dim=1)                                         # (batch,)")
_LT_SIGNATURE = "def last_token_index(input_batch, pad_token_id=PAD_TOKEN_ID)"

# 05 by named_modules(): each nn.Linear replaced through its parent (skipping those already inside a wrapper).
_REPLACE_BY_NAMED_MODULES = '''def replace_linear_with_lora(module: nn.Module, rank: int, alpha: float, target_modules=None,
                             exclude=("out_head",), prefix: str = "") -> list:
    def matches(name, keys):
        return any(name == key or name.endswith("." + key) for key in keys)
    wrapped_parents = {n for n, m in module.named_modules() if isinstance(m, LinearWithLoRA)}
    replaced = []
    for name, child in list(module.named_modules()):
        if not isinstance(child, nn.Linear):
            continue
        parent_name, _, own = name.rpartition(".")
        if parent_name in wrapped_parents:
            continue
        full = prefix + name
        if matches(full, exclude) or (target_modules is not None and not matches(full, target_modules)):
            continue
        setattr(module.get_submodule(parent_name), own, LinearWithLoRA(child, rank, alpha))
        replaced.append(full)
    return replaced
'''

MUTANTS = [
  # ------------------------------------------------------------------ signatures changed from the cell's
  ("r11-keyword-only-options", "02-settings-to-cfg", "wrong",
   [("def settings_to_cfg(settings: dict, drop_rate", "def settings_to_cfg(settings: dict, *, drop_rate")],
   "keep the signature settings_to_cfg(settings, drop_rate=0.0, qkv_bias=True)"),
  ("r11-options-swapped", "02-settings-to-cfg", "wrong",
   [("drop_rate: float = 0.0, qkv_bias: bool = True", "qkv_bias: bool = True, drop_rate: float = 0.0")],
   "these two in this order"),
  ("r11-fractions-swapped", "03-split", "wrong",
   [("train_frac: float = 0.7, validation_frac: float = 0.1", "validation_frac: float = 0.1, train_frac: float = 0.7")],
   "its parameters in this order"),
  ("r11-default-seed-42", "03-split", "wrong", [("seed: int = 123", "seed: int = 42")], "seed argument"),
  ("r11-fractions-keyword-only", "03-split", "wrong",
   [("df: pd.DataFrame, train_frac", "df: pd.DataFrame, *, train_frac")], "keep the signature random_split"),
  ("r11-alpha-before-rank", "04-linear-with-lora", "wrong",
   [("def __init__(self, linear: nn.Linear, rank: int, alpha: float)",
     "def __init__(self, linear: nn.Linear, alpha: float, rank: int)")], "LinearWithLoRA(linear, rank, alpha), in this order"),
  ("r11-rank-alpha-keyword-only", "04-linear-with-lora", "wrong",
   [("def __init__(self, linear: nn.Linear, rank: int, alpha: float)",
     "def __init__(self, linear: nn.Linear, *, rank: int, alpha: float)")], "keep the signature LinearWithLoRA(linear, rank, alpha)"),
  ("r11-alpha-before-rank", "05-replace", "wrong",
   [("module: nn.Module, rank: int, alpha: float,", "module: nn.Module, alpha: float, rank: int,"),
    ("replace_linear_with_lora(child, rank, alpha,", "replace_linear_with_lora(child, alpha, rank,")],
   "rank and alpha by position"),
  ("r11-pad-id-required", "07-last-token", "wrong",
   [(_LT_SIGNATURE, "def last_token_index(input_batch, pad_token_id)")], "keep the signature"),
  ("r11-pad-id-default-0", "07-last-token", "wrong",
   [(_LT_SIGNATURE, "def last_token_index(input_batch, pad_token_id=0)")], "keep the default"),

  # ------------------------------------------------------------------ edge inputs
  ("r11-at-least-one-batch", "03-num-batches", "wrong",
   [("return math.ceil(n_examples / batch_size)", "return max(1, math.ceil(n_examples / batch_size))")],
   "no examples make no batches"),
  # Made on the CPU, then moved to the batch's device: on a GPU that is a copy to cuda, and right.
  ("r11-arange-then-to-device", "07-last-token", "right",
   [(_LT_BODY, "    positions = torch.arange(input_batch.shape[1]).to(input_batch.device)\n"
               "    return (positions * (input_batch != pad_token_id)).amax(dim=1)")], ""),
  ("r11-arange-to-like-batch", "07-last-token", "right",
   [(_LT_BODY, "    positions = torch.arange(input_batch.shape[1]).to(input_batch)\n"
               "    return (positions * (input_batch != pad_token_id)).amax(dim=1)")], ""),
  # A 0-dimensional CPU tensor combines with cuda tensors (PyTorch treats it as a scalar).
  ("r11-pad-id-as-scalar-tensor", "07-last-token", "right",
   [(_LT_BODY, "    pad = torch.tensor(pad_token_id)\n"
               "    return (torch.arange(input_batch.shape[1], device=input_batch.device) * (input_batch != pad)).amax(dim=1)")], ""),
  # Still wrong: moved only to another dtype, the positions stay on the default device.
  ("r11-arange-to-dtype-only", "07-last-token", "wrong",
   [(_LT_BODY, "    positions = torch.arange(input_batch.shape[1]).to(torch.long)\n"
               "    return (positions * (input_batch != pad_token_id)).amax(dim=1)")], "device=input_batch.device"),
  ("r11-int32-positions", "07-last-token", "right",
   [(_LT_BODY, "    positions = torch.arange(input_batch.shape[1], device=input_batch.device, dtype=torch.int32)\n"
               "    return (positions * (input_batch != pad_token_id)).amax(dim=1)")], ""),
  ("r11-cumsum-argmax", "07-last-token", "right",
   [(_LT_BODY, "    return (input_batch != pad_token_id).long().cumsum(dim=1).argmax(dim=1)")], ""),

  # ------------------------------------------------------------------ right answers from the statements
  ("r11-range-lengths", "03-num-batches", "right",
   [("    if drop_last:\n        return n_examples // batch_size\n    return math.ceil(n_examples / batch_size)",
     "    if drop_last:\n        return len(range(0, n_examples - batch_size + 1, batch_size))\n"
     "    return len(range(0, n_examples, batch_size))")], ""),
  ("r11-pytree-leaves", "01-count-tensors", "right",
   "from torch.utils._pytree import tree_leaves\n\n\ndef count_tensors(tree) -> int:\n    return len(tree_leaves(tree))\n", ""),
  ("r11-by-named-modules", "05-replace", "right", _REPLACE_BY_NAMED_MODULES, ""),
  ("r11-targets-as-regex", "09-lora-config", "right",   # peft matches a single string against the whole name
   [('target_modules=["query", "value"]', 'target_modules=r".*\\.(query|value)"')], ""),
  ("r11-head-saved-explicitly", "09-lora-config", "right",
   [('task_type="SEQ_CLS")', 'task_type="SEQ_CLS", modules_to_save=["classifier"])')], ""),
  ("r11-a-from-a-linear", "04-lora-layer", "right",   # nn.Linear's own init draws the same numbers
   [("nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))",
     "self.A.data.copy_(nn.Linear(in_dim, rank, bias=False).weight.data)")], ""),
  ("r11-flattened-rows", "04-lora-layer", "right",
   [("        return self.scaling * (x @ self.A.T @ self.B.T)",
     "        flat = x.reshape(-1, x.shape[-1])\n"
     "        return (self.scaling * (flat @ self.A.T @ self.B.T)).reshape(*x.shape[:-1], -1)")], ""),
  ("r11-kl-sum-over-labels", "08-kd-loss", "right",
   [('reduction="batchmean")', 'reduction="sum") / labels.shape[0]')], ""),
]

# 03's create_balanced_dataset(df, seed) is called with the seed by position in the notebook; the check and the probe
# passed it by keyword, so a keyword-only seed passed both and failed in the notebook's next cell.
MUTANTS += [
  ("r11-seed-keyword-only", "03-balance", "wrong",
   [("def create_balanced_dataset(df: pd.DataFrame, seed", "def create_balanced_dataset(df: pd.DataFrame, *, seed")],
   "create_balanced_dataset(df, seed=123)"),
]

# 07's histories handed back as a tensor or an array: the check asked for lists of numbers, the probe took anything it
# could iterate (it now asks for lists too).
_RETURN = "    return train_losses, val_losses, train_accs, val_accs, examples_seen"
MUTANTS += [
  ("r11-histories-as-tensors", "07-train-loop", "wrong",
   [(_RETURN, "    return (torch.tensor(train_losses), torch.tensor(val_losses), torch.tensor(train_accs),\n"
              "            torch.tensor(val_accs), examples_seen)")], "list of numbers"),
  ("r11-histories-as-arrays", "07-train-loop", "wrong",
   [(_RETURN, "    return np.array(train_losses), np.array(val_losses), np.array(train_accs), np.array(val_accs), examples_seen")],
   "list of numbers"),
  ("r11-histories-as-tuples", "07-train-loop", "right",
   [(_RETURN, "    return tuple(train_losses), tuple(val_losses), tuple(train_accs), tuple(val_accs), examples_seen")], ""),
]

# Parameters renamed from the cell's signature: the checks call by keyword (in_dim=..., validation_frac=...) and
# rejected them; the probes called by position only and accepted them (they now also call by keyword).
MUTANTS += [
  ("r11-params-named-like-nn-linear", "04-lora-layer", "wrong",
   [("in_dim", "in_features"), ("out_dim", "out_features")], "unexpected keyword argument"),
  ("r11-val-frac", "03-split", "wrong", [("validation_frac", "val_frac")], "unexpected keyword argument"),
]
