"""Mutants of 07's pooling exercise, last_token_index (see catalogue_a for the format).

Each wrong one is a mistake seen in practice or in published code: reading the last position, an
off-by-one, counting the non-pad tokens (right only while the pad id never occurs inside a message),
stopping at the first pad token, argmax tricks that break on a row that fills the width, a hard-coded
pad id, and writing into the batch. The right ones are unusual but equivalent implementations."""

RETURN = "    return (positions * real).amax(dim=1)"

MUTANTS = [
    # ------------------------------------------------------------------ 07-last-token
    ("last-position", "07-last-token", "wrong",
     [(RETURN, "    return torch.full((input_batch.shape[0],), input_batch.shape[1] - 1)")], "last position of the padded row"),
    ("length-not-index", "07-last-token", "wrong", [(RETURN, RETURN + " + 1")], "off by one"),
    ("one-short", "07-last-token", "wrong", [(RETURN, RETURN + " - 1")], "off by one"),
    ("count-real-tokens", "07-last-token", "wrong", [(RETURN, "    return real.sum(dim=1) - 1")],
     "counted the non-pad tokens"),
    ("count-clamped", "07-last-token", "wrong", [(RETURN, "    return (real.long().sum(dim=1) - 1).clamp(min=0)")],
     "counted the non-pad tokens"),
    ("first-pad-argmax", "07-last-token", "wrong",
     [(RETURN, "    return (input_batch == pad_token_id).long().argmax(dim=1) - 1")], "fills the width"),
    ("first-pad-argmax-no-minus", "07-last-token", "wrong",
     [(RETURN, "    return (input_batch == pad_token_id).long().argmax(dim=1)")], "should be"),
    ("first-pad-full-rows-fixed", "07-last-token", "wrong",
     [(RETURN, "    first = (input_batch == pad_token_id).long().argmax(dim=1) - 1\n"
               "    return torch.where((~real).any(dim=1), first, input_batch.shape[1] - 1)")], "first pad token"),
    ("first-pad-loop", "07-last-token", "wrong",
     [(RETURN, "    out = []\n    for row in input_batch.tolist():\n"
               "        out.append(row.index(pad_token_id) - 1 if pad_token_id in row else len(row) - 1)\n"
               "    return torch.tensor(out)")], "first pad token"),
    ("hard-coded-pad", "07-last-token", "wrong", [("real = input_batch != pad_token_id", "real = input_batch != 50256")],
     "pad_token_id argument"),
    ("writes-into-batch", "07-last-token", "wrong",
     [(RETURN, "    input_batch[~real] = 0\n" + RETURN)], "changed the batch"),
    ("float-index", "07-last-token", "wrong", [(RETURN, RETURN + ".float()")], "integers"),
    ("python-list", "07-last-token", "wrong", [(RETURN, RETURN + ".tolist()")], "tensor of indices"),
    ("wrong-dim", "07-last-token", "wrong", [(RETURN, "    return (positions * real).amax(dim=0)")], "one index per row"),
    ("first-real-token", "07-last-token", "wrong", [(RETURN, "    return real.long().argmax(dim=1)")], "first token"),
    # right: equivalent, if unusual
    ("flip-argmax", "07-last-token", "right",
     [(RETURN, "    return input_batch.shape[1] - 1 - real.flip(dims=[1]).long().argmax(dim=1)")], ""),
    ("where-max", "07-last-token", "right",
     [(RETURN, "    return torch.where(real, positions, torch.zeros_like(positions)).max(dim=1).values")], ""),
    ("python-loop", "07-last-token", "right",
     [(RETURN, "    out = []\n    for row in input_batch.tolist():\n"
               "        out.append(max([i for i, t in enumerate(row) if t != pad_token_id], default=0))\n"
               "    return torch.tensor(out, dtype=torch.long)")], ""),
    ("nonzero-per-row", "07-last-token", "right",
     [(RETURN, "    return torch.stack([torch.nonzero(r)[-1, 0] if r.any() else torch.tensor(0) for r in real])")], ""),
    ("cumsum-argmax", "07-last-token", "right",
     [(RETURN, "    count = real.long().cumsum(dim=1)\n"
               "    return (count == count[:, -1:]).long().argmax(dim=1)")], ""),
    ("int32-result", "07-last-token", "right", [(RETURN, RETURN + ".int()")], ""),
]
