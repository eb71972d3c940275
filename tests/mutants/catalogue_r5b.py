"""Mutants for round five, the grader's side (see catalogue_a for the format): a replace_linear_with_lora that
reseeds before each wrapper or in every recursive call (layers get the same A) or switches the model between train
and eval mode; and a right answer that gives each wrapper its layer's mode."""

MUTANTS = [
    # ------------------------------------------------------------------ 05-replace
    ("reseeds-before-each-wrapper", "05-replace", "wrong",
     [("            setattr(module, child_name, LinearWithLoRA(child, rank, alpha))",
       "            torch.manual_seed(0)\n            setattr(module, child_name, LinearWithLoRA(child, rank, alpha))")],
     "same LoRA matrix A"),
    ("reseeds-in-every-call", "05-replace", "wrong",
     [("    replaced = []\n", "    replaced = []\n    torch.manual_seed(123)   # reproducible adapters\n")],
     "same LoRA matrix A"),
    ("calls-eval", "05-replace", "wrong",
     [("    replaced = []\n", "    replaced = []\n    module.eval()\n")], "train and eval mode"),
    ("calls-train", "05-replace", "wrong",
     [("    replaced = []\n", "    replaced = []\n    module.train()\n")], "train and eval mode"),
    ("eval-at-the-end", "05-replace", "wrong",
     [("    return replaced", "    module.eval()\n    return replaced")], "train and eval mode"),
    ("wrapper-takes-its-layers-mode", "05-replace", "right",
     [("setattr(module, child_name, LinearWithLoRA(child, rank, alpha))",
       "setattr(module, child_name, LinearWithLoRA(child, rank, alpha).train(child.training))")], ""),
]
