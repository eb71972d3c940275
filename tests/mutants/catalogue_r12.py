"""Mutants for the twelfth round (see catalogue_a for the format): right answers that round eleven's tightened checks
and probes might reject. Round eleven calls the answers by position, by keyword and with their defaults, asks 07 for
its histories as lists or tuples, and tags what a factory makes without ``device=`` in 07's last-token check as living
on another device than the batch. Each variant here is what a student could write from the statements."""

_LT_BODY = ("    positions = torch.arange(input_batch.shape[1], device=input_batch.device)  # (width,)\n"
            "    real = input_batch != pad_token_id                                            # (batch, width)\n"
            "    return (positions * real).amax(dim=1)                                         # (batch,)")
_LT_SIGNATURE = "def last_token_index(input_batch, pad_token_id=PAD_TOKEN_ID)"
_RETURN = "    return train_losses, val_losses, train_accs, val_accs, examples_seen"


def _lt(body: str) -> list:
    return [(_LT_BODY, body)]


MUTANTS = [
  # ------------------------------------------------------------------ 07's last token: where tensors are made
  ("r12-new-tensor", "07-last-token", "right",
   _lt("    positions = input_batch.new_tensor(list(range(input_batch.shape[1])))\n"
       "    return (positions * (input_batch != pad_token_id)).amax(dim=1)"), ""),
  ("r12-ones-like-cumsum", "07-last-token", "right",
   _lt("    positions = torch.ones_like(input_batch).cumsum(dim=1) - 1\n"
       "    return (positions * (input_batch != pad_token_id)).amax(dim=1)"), ""),
  ("r12-flip-argmax", "07-last-token", "right",
   _lt("    trailing = (input_batch != pad_token_id).long().flip(dims=[1]).argmax(dim=1)\n"
       "    return input_batch.shape[1] - 1 - trailing"), ""),
  ("r12-where-arange-to", "07-last-token", "right",
   _lt("    mask = input_batch != pad_token_id\n"
       "    positions = torch.where(mask, torch.arange(input_batch.shape[1]).to(input_batch), -1)\n"
       "    return positions.amax(dim=1).clamp(min=0)"), ""),
  ("r12-zeros-on-device-loop", "07-last-token", "right",
   _lt("    out = torch.zeros(input_batch.shape[0], dtype=torch.long, device=input_batch.device)\n"
       "    for i in range(input_batch.shape[0]):\n"
       "        for j in range(input_batch.shape[1] - 1, -1, -1):\n"
       "            if input_batch[i, j] != pad_token_id:\n"
       "                out[i] = j\n"
       "                break\n"
       "    return out"), ""),
  ("r12-list-to-tensor-on-device", "07-last-token", "right",
   _lt("    last = []\n"
       "    for row in input_batch.tolist():\n"
       "        real = [j for j, t in enumerate(row) if t != pad_token_id]\n"
       "        last.append(real[-1] if real else 0)\n"
       "    return torch.tensor(last, device=input_batch.device)"), ""),
  ("r12-arange-device-keyword-to", "07-last-token", "right",
   _lt("    positions = torch.arange(input_batch.shape[1]).to(device=input_batch.device)\n"
       "    return (positions * (input_batch != pad_token_id)).amax(dim=1)"), ""),
  # on a GPU, type_as(a cuda tensor) moves to cuda, as .to(input_batch) does
  ("r12-arange-type-as", "07-last-token", "right",
   _lt("    positions = torch.arange(input_batch.shape[1]).type_as(input_batch)\n"
       "    return (positions * (input_batch != pad_token_id)).amax(dim=1)"), ""),
  # a cuda tensor indexed with CPU indices works on a GPU (the indices are moved)
  ("r12-reverse-by-cpu-index", "07-last-token", "right",
   _lt("    width = input_batch.shape[1]\n"
       "    reverse = torch.arange(width - 1, -1, -1)\n"
       "    trailing = (input_batch[:, reverse] != pad_token_id).int().argmax(dim=1)\n"
       "    return width - 1 - trailing"), ""),
  ("r12-reverse-by-list-index", "07-last-token", "right",
   _lt("    width = input_batch.shape[1]\n"
       "    trailing = (input_batch[:, list(range(width - 1, -1, -1))] != pad_token_id).int().argmax(dim=1)\n"
       "    return width - 1 - trailing"), ""),
  # everything on the CPU, the batch moved there first: right on a GPU (the indices come back on the CPU)
  ("r12-all-on-cpu", "07-last-token", "right",
   _lt("    batch = input_batch.cpu()\n"
       "    positions = torch.arange(batch.shape[1])\n"
       "    return (positions * (batch != pad_token_id)).amax(dim=1)"), ""),
  ("r12-python-int-index", "07-last-token", "right",
   _lt("    out = []\n"
       "    for i in range(len(input_batch)):\n"
       "        j = input_batch.shape[1] - 1\n"
       "        while j > 0 and int(input_batch[i][j]) == pad_token_id:\n"
       "            j -= 1\n"
       "        out.append(j)\n"
       "    return torch.as_tensor(out, device=input_batch.device)"), ""),
  ("r12-type-hints", "07-last-token", "right",
   [(_LT_SIGNATURE, "def last_token_index(input_batch: torch.Tensor, pad_token_id: int = PAD_TOKEN_ID) -> torch.Tensor")], ""),
  ("r12-extra-keyword", "07-last-token", "right",
   [(_LT_SIGNATURE, "def last_token_index(input_batch, pad_token_id=PAD_TOKEN_ID, *, dim=1)"),
    ("amax(dim=1)", "amax(dim=dim)")], ""),

  # ------------------------------------------------------------------ 07's histories
  ("r12-histories-float-item", "07-train-loop", "right",
   [("train_losses.append(calc_loss_loader(train_eval_loader, model, device, num_batches=eval_iter))",
     "train_losses.append(float(calc_loss_loader(train_eval_loader, model, device, num_batches=eval_iter)))"),
    ("val_accs.append(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter))",
     "val_accs.append(torch.tensor(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter)).item())")], ""),
  ("r12-histories-tuple-returned", "07-train-loop", "right",
   [(_RETURN, "    return tuple([train_losses, val_losses, train_accs, val_accs, examples_seen])")], ""),
  ("r12-histories-list-returned", "07-train-loop", "right",
   [(_RETURN, "    return [train_losses, val_losses, train_accs, val_accs, examples_seen]")], ""),
  ("r12-loop-keyword-defaults", "07-train-loop", "right",
   [("device, num_epochs, eval_freq, eval_iter):", "device, num_epochs=5, eval_freq=50, eval_iter=5, **kwargs):")], ""),

  # ------------------------------------------------------------------ 02, 03: extra keywords, hints, **kwargs
  ("r12-options-extra-keyword", "02-settings-to-cfg", "right",
   [("qkv_bias: bool = True) -> dict:", "qkv_bias: bool = True, *, strict: bool = True) -> dict:")], ""),
  ("r12-options-kwargs", "02-settings-to-cfg", "right",
   [("qkv_bias: bool = True) -> dict:", "qkv_bias: bool = True, **extra) -> dict:"),
    ("    return cfg", "    cfg.update(extra)\n    return cfg")], ""),
  ("r12-split-shuffle-keyword", "03-split", "right",
   [("seed: int = 123):", "seed: int = 123, *, shuffle: bool = True):"),
    ("    shuffled = df.sample(frac=1, random_state=seed).reset_index(drop=True)",
     "    shuffled = (df.sample(frac=1, random_state=seed) if shuffle else df).reset_index(drop=True)")], ""),
  ("r12-split-kwargs", "03-split", "right",
   [("seed: int = 123):", "seed: int = 123, **kwargs):")], ""),
  ("r12-split-no-hints", "03-split", "right",
   [("def random_split(df: pd.DataFrame, train_frac: float = 0.7, validation_frac: float = 0.1, seed: int = 123):",
     "def random_split(df, train_frac=0.7, validation_frac=0.1, seed=123):")], ""),
  ("r12-balance-extra-keyword", "03-balance", "right",
   [("seed: int = 123) -> pd.DataFrame:", "seed: int = 123, label_column: str = \"Label\") -> pd.DataFrame:")], ""),
  ("r12-num-batches-kwargs", "03-num-batches", "right",
   [("drop_last: bool = False) -> int:", "drop_last: bool = False, **kwargs) -> int:")], ""),

  # ------------------------------------------------------------------ 04, 05: extra optional keywords
  ("r12-lora-layer-dropout", "04-lora-layer", "right",
   [("def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float):",
     "def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float, dropout: float = 0.0):"),
    ("        self.scaling = alpha / rank", "        self.scaling = alpha / rank\n        self.dropout = nn.Dropout(dropout)"),
    ("(x @ self.A.T @ self.B.T)", "(self.dropout(x) @ self.A.T @ self.B.T)")], ""),
  ("r12-lora-layer-defaults", "04-lora-layer", "right",
   [("rank: int, alpha: float):", "rank: int = 8, alpha: float = 16.0):")], ""),
  ("r12-linear-with-lora-extra-keyword", "04-linear-with-lora", "right",
   [("def __init__(self, linear: nn.Linear, rank: int, alpha: float):",
     "def __init__(self, linear: nn.Linear, rank: int, alpha: float, *, freeze: bool = True):"),
    ("        for p in self.linear.parameters():\n            p.requires_grad_(False)",
     "        for p in self.linear.parameters():\n            p.requires_grad_(not freeze)")], ""),
  ("r12-linear-with-lora-defaults", "04-linear-with-lora", "right",
   [("rank: int, alpha: float):", "rank: int = 8, alpha: float = 16, **kwargs):")], ""),
  ("r12-replace-extra-keyword", "05-replace", "right",
   [('exclude=("out_head",), prefix: str = "") -> list:', 'exclude=("out_head",), prefix: str = "", verbose: bool = False) -> list:'),
    ("            replaced.append(name)", "            replaced.append(name)\n            if verbose:\n                print(name)")], ""),
  ("r12-replace-kwargs", "05-replace", "right",
   [('exclude=("out_head",), prefix: str = "") -> list:', 'exclude=("out_head",), prefix: str = "", **kwargs) -> list:')], ""),
]

# Wrong on a GPU, accepted by round eleven's check and probe: a CPU tensor kept on the CPU with .cpu() (it was counted
# as moved) and combined with the cuda batch, and the batch handed to NumPy without .cpu() (a cuda tensor cannot be).
MUTANTS += [
  ("r12-arange-cpu-beside-batch", "07-last-token", "wrong",
   _lt("    positions = torch.arange(input_batch.shape[1]).cpu()\n"
       "    return (positions * (input_batch != pad_token_id)).amax(dim=1)"), "device=input_batch.device"),
  ("r12-batch-to-numpy", "07-last-token", "wrong",
   _lt("    real = (input_batch.numpy() != pad_token_id)\n"
       "    width = real.shape[1]\n"
       "    return torch.from_numpy(width - 1 - real[:, ::-1].argmax(axis=1)).to(input_batch.device)"), "numpy"),
]

# 07's default pad id written otherwise: the number itself, or None resolved inside.
MUTANTS += [
  ("r12-pad-id-literal", "07-last-token", "right",
   [(_LT_SIGNATURE, "def last_token_index(input_batch, pad_token_id: int = 50256)")], ""),
  ("r12-pad-id-none-resolved", "07-last-token", "right",
   [(_LT_SIGNATURE, "def last_token_index(input_batch, pad_token_id=None)"),
    ("    real = input_batch != pad_token_id ",
     "    pad_token_id = PAD_TOKEN_ID if pad_token_id is None else pad_token_id\n    real = input_batch != pad_token_id ")], ""),
  ("r12-arange-unsqueeze-then-to", "07-last-token", "right",
   _lt("    positions = torch.arange(input_batch.shape[1]).unsqueeze(0).expand(input_batch.shape[0], -1)\n"
       "    return (positions.to(input_batch.device) * (input_batch != pad_token_id)).amax(dim=1)"), ""),
]
