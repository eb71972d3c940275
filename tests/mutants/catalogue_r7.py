"""Mutants for the seventh round of blind spots (see catalogue_a for the format): an answer built from the course
library's own table (02), NumPy's and Python's global generators reseeded or drawn from by exercises that may draw
from PyTorch's (04, 05, 07) or by any other; and the right answers that must stay accepted beside them."""

MUTANTS = [
    # ------------------------------------------------------------------ 02-settings-to-cfg: the library's answer
    # The mapping is what the exercise teaches: importing course_lib's table is importing the answer.
    ("r7-library-table", "02-settings-to-cfg", "wrong",
     [("    names = {\"n_vocab\": \"vocab_size\", \"n_ctx\": \"context_length\", \"n_embd\": \"emb_dim\",\n"
       "             \"n_head\": \"n_heads\", \"n_layer\": \"n_layers\"}",
       "    from course_lib.config import SETTINGS_TO_CFG as names")], "course_lib"),
    ("r7-library-module-table", "02-settings-to-cfg", "wrong",
     [("    names = {\"n_vocab\": \"vocab_size\", \"n_ctx\": \"context_length\", \"n_embd\": \"emb_dim\",\n"
       "             \"n_head\": \"n_heads\", \"n_layer\": \"n_layers\"}",
       "    import course_lib.config\n    names = dict(course_lib.config.SETTINGS_TO_CFG)")], "course_lib"),
    ("r7-own-table-global", "02-settings-to-cfg", "right",
     [("def settings_to_cfg(", "NAMES = {\"n_vocab\": \"vocab_size\", \"n_ctx\": \"context_length\", \"n_embd\": "
       "\"emb_dim\",\n         \"n_head\": \"n_heads\", \"n_layer\": \"n_layers\"}\n\n\ndef settings_to_cfg("),
      ("    names = {\"n_vocab\": \"vocab_size\", \"n_ctx\": \"context_length\", \"n_embd\": \"emb_dim\",\n"
       "             \"n_head\": \"n_heads\", \"n_layer\": \"n_layers\"}", "    names = NAMES")], ""),

    # ------------------------------------------------------------------ NumPy's and Python's global generators
    # "Seed everything" at the top of the loop, PyTorch left out (reseeding it is caught already): every NumPy and
    # Python random draw of the notebook after training repeats, whatever seed the caller chose.
    ("r7-seeds-host-rngs", "07-train-loop", "wrong",
     [("    for epoch in range(num_epochs):\n",
       "    import random\n    random.seed(123)\n    np.random.seed(123)\n    for epoch in range(num_epochs):\n")],
     "NumPy's global random"),
    # A drawn with NumPy: the right distribution, but from NumPy's global generator (torch.manual_seed no longer
    # fixes the initialisation, and NumPy's stream moves).
    ("r7-numpy-init", "04-lora-layer", "wrong",
     [("        self.A = nn.Parameter(torch.empty(rank, in_dim))\n        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))",
       "        bound = in_dim ** -0.5\n"
       "        self.A = nn.Parameter(torch.from_numpy(np.random.uniform(-bound, bound, (rank, in_dim))).float())")],
     "NumPy's global random"),
    ("r7-python-random-shuffle", "05-replace", "wrong",
     [("    for child_name, child in module.named_children():",
       "    import random\n    random.seed(0)\n    for child_name, child in module.named_children():")],
     "Python's global random"),
    ("r7-numpy-seed", "06-freeze", "wrong",
     [("    for p in model.parameters():\n        p.requires_grad_(False)",
       "    np.random.seed(0)\n    for p in model.parameters():\n        p.requires_grad_(False)")],
     "NumPy's global random"),
    ("r7-python-seed", "08-kd-loss", "wrong",
     [("    hard = F.cross_entropy(student_logits, labels)",
       "    import random\n    random.seed(0)\n    hard = F.cross_entropy(student_logits, labels)")],
     "Python's global random"),
    ("r7-numpy-seed", "01-count-tensors", "wrong",
     [("    if isinstance(tree, torch.Tensor):\n        return 1",
       "    np.random.seed(0)\n    if isinstance(tree, torch.Tensor):\n        return 1")], "NumPy's global random"),
    ("r7-own-generators", "07-train-loop", "right",
     [("    for epoch in range(num_epochs):\n",
       "    import random\n    local = random.Random(123)\n    noise = np.random.default_rng(123)\n"
       "    local.random()\n    noise.random()\n    for epoch in range(num_epochs):\n")], ""),

    # ------------------------------------------------------------------ 04-lora-layer: the caller's seed
    # A reseed with a counter in __init__: every layer gets its own A (two layers in a row differ), but the caller's
    # torch.manual_seed no longer decides A, and every random draw after building a layer is fixed by the counter.
    ("r7-counter-seed", "04-lora-layer", "wrong",
     [("        self.A = nn.Parameter(torch.empty(rank, in_dim))\n",
       "        LoRALayer.made = getattr(LoRALayer, 'made', 0) + 1\n        torch.manual_seed(LoRALayer.made)\n"
       "        self.A = nn.Parameter(torch.empty(rank, in_dim))\n")], "caller's torch.manual_seed"),
    ("r7-linear-weight", "04-lora-layer", "right",
     [("        self.A = nn.Parameter(torch.empty(rank, in_dim))\n        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))",
       "        self.A = nn.Parameter(nn.Linear(in_dim, rank, bias=False).weight.detach().clone())")], ""),

    # ------------------------------------------------------------------ 08-kd-loss: cached by temperature
    # The teacher's softened probabilities kept per temperature (the teacher is frozen, after all): right while the
    # check's one teacher is passed again, wrong on the next batch. The probe's second T = 2 case has another teacher.
    ("r7-cache-teacher-by-T", "08-kd-loss", "wrong",
     [("def distillation_loss(", "_soft = {}\n\n\ndef distillation_loss("),
      ("    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),\n"
       "                    F.softmax(teacher_logits.detach() / temperature, dim=-1), reduction=\"batchmean\")",
       "    if temperature not in _soft:\n        _soft[temperature] = F.softmax(teacher_logits.detach() / temperature, dim=-1)\n"
       "    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1), _soft[temperature], reduction=\"batchmean\")")],
     "another teacher"),
    ("r7-softmax-then-log", "08-kd-loss", "right",
     [("F.log_softmax(student_logits / temperature, dim=-1)", "F.softmax(student_logits / temperature, dim=-1).log()")], ""),
]
