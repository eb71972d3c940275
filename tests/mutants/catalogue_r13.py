"""Mutants for the thirteenth round (see catalogue_a for the format): answers whose forward values are right but
whose gradients or side effects are not. A forward that makes its parameters anew (the optimiser's are left without
gradients), a merged layer that cuts the gradient to the layers before it, flags switched on the caller's tensors,
parameters replaced instead of frozen, the caller's lists sorted in place, gradients cleared by a count, and answers
that work only on contiguous inputs (.view() on a transpose or a slice). Some of these were caught before the round;
they are kept so that they stay caught. The right ones are what a tightened check might reject by mistake."""

_LT_BODY = ("    positions = torch.arange(input_batch.shape[1], device=input_batch.device)  # (width,)\n"
            "    real = input_batch != pad_token_id                                            # (batch, width)\n"
            "    return (positions * real).amax(dim=1)                                         # (batch,)")
_LORA_FORWARD = "        return self.scaling * (x @ self.A.T @ self.B.T)"
_TENSOR_LEAF = "    if isinstance(tree, torch.Tensor):\n        return 1"
_MERGED = "        if self.merged:\n            return self.linear(x)"
_FREEZE = "    for p in model.parameters():\n        p.requires_grad_(False)"
_UNFREEZE = "    for p in module.parameters():\n        p.requires_grad_(True)"
_COUNT = "    return sum(p.numel() for p in model.parameters() if p.requires_grad)"


def _new_parameters(flag: str) -> str:
    """A body that 'freezes' by putting new parameters, detached copies, where the model's were."""
    return ("    for mod in {m}.modules():\n"
            "        for n, p in list(mod._parameters.items()):\n"
            "            if p is not None:\n"
            "                mod._parameters[n] = nn.Parameter(p.detach(), requires_grad={flag})")


MUTANTS = [
  # ------------------------------------------------------------------ 01: the caller's tensors changed, not counted
  ("r13-marks-leaves-trainable", "01-count-tensors", "wrong",
   [(_TENSOR_LEAF, "    if isinstance(tree, torch.Tensor):\n        tree.requires_grad_(True)\n        return 1")],
   "requires_grad"),
  ("r13-leaves-to-float64", "01-count-tensors", "wrong",
   [(_TENSOR_LEAF, "    if isinstance(tree, torch.Tensor):\n        tree.data = tree.data.double()\n        return 1")],
   "changed the tree"),
  ("r13-count-detached", "01-count-tensors", "right",
   [(_TENSOR_LEAF, "    if isinstance(tree, torch.Tensor):\n        return int(tree.detach().dim() >= 0)")], ""),

  # ------------------------------------------------------------------ 02's split: the checkpoint's tensors left as they came
  ("r13-split-marks-trainable", "02-split-c-attn", "wrong",
   [("    q_w, k_w, v_w = torch.chunk", "    w.requires_grad_(True)\n    b.requires_grad_(True)\n    q_w, k_w, v_w = torch.chunk")],
   "requires_grad"),
  # loading weights runs without autograd: detached (or NumPy-made, r10) halves are right
  ("r13-split-detached", "02-split-c-attn", "right",
   [("return (q_w.T, k_w.T, v_w.T), (q_b, k_b, v_b)",
     "return (q_w.T.detach(), k_w.T.detach(), v_w.T.detach()), (q_b.detach(), k_b.detach(), v_b.detach())")], ""),

  # ------------------------------------------------------------------ 04's LoRALayer: the optimiser's parameters, strides
  ("r13-A-recreated-in-forward", "04-lora-layer", "wrong",
   [(_LORA_FORWARD, "        self.A = nn.Parameter(self.A.detach().clone())\n" + _LORA_FORWARD)], "optimiser"),
  ("r13-B-recreated-in-forward", "04-lora-layer", "wrong",
   [(_LORA_FORWARD, "        self.B = nn.Parameter(self.B.data)\n" + _LORA_FORWARD)], "optimiser"),
  ("r13-straight-through-scaling", "04-lora-layer", "wrong",
   [(_LORA_FORWARD, "        y = x @ self.A.T @ self.B.T\n        return y + ((self.scaling - 1) * y).detach()")],
   "gradient differs"),
  ("r13-view-flatten", "04-lora-layer", "wrong",
   [(_LORA_FORWARD, "        flat = x.view(-1, x.shape[-1])\n"
                    "        return (self.scaling * (flat @ self.A.T @ self.B.T)).view(*x.shape[:-1], -1)")], "reshape"),
  ("r13-reshape-flatten", "04-lora-layer", "right",
   [(_LORA_FORWARD, "        flat = x.reshape(-1, x.shape[-1])\n"
                    "        return (self.scaling * (flat @ self.A.T @ self.B.T)).reshape(*x.shape[:-1], -1)")], ""),
  ("r13-contiguous-then-view", "04-lora-layer", "right",
   [(_LORA_FORWARD, "        flat = x.contiguous().view(-1, x.shape[-1])\n"
                    "        return (self.scaling * (flat @ self.A.T @ self.B.T)).view(*x.shape[:-1], -1)")], ""),

  # ------------------------------------------------------------------ 04's LinearWithLoRA: merged, the gradient still flows
  ("r13-merged-under-no-grad", "04-linear-with-lora", "wrong",
   [(_MERGED, "        if self.merged:\n            with torch.no_grad():\n                return self.linear(x)")],
   "after merge()"),
  ("r13-merged-input-detached", "04-linear-with-lora", "wrong",
   [(_MERGED, "        if self.merged:\n            return self.linear(x.detach())")], "after merge()"),
  ("r13-lora-recreated-in-forward", "04-linear-with-lora", "wrong",
   [("        return self.linear(x) + self.lora(x)",
     "        self.lora.A = nn.Parameter(self.lora.A.detach().clone())\n        return self.linear(x) + self.lora(x)")],
   "optimiser"),
  ("r13-merge-without-no-grad", "04-linear-with-lora", "wrong",
   [("    @torch.no_grad()\n    def merge(self) -> None:", "    def merge(self) -> None:")], "merge()"),
  ("r13-merged-functional", "04-linear-with-lora", "right",
   [(_MERGED, "        if self.merged:\n            return F.linear(x, self.linear.weight, self.linear.bias)")], ""),

  # ------------------------------------------------------------------ 05: the caller's list and the model's own weights
  ("r13-sorts-caller-targets", "05-replace", "wrong",
   [("    replaced = []\n",
     "    replaced = []\n    if isinstance(target_modules, list):\n        target_modules.sort()\n")],
   "target_modules list"),
  ("r13-wraps-then-new-params", "05-replace", "wrong",
   [("            setattr(module, child_name, LinearWithLoRA(child, rank, alpha))",
     "            child.weight = nn.Parameter(child.weight.detach().clone())\n"
     "            setattr(module, child_name, LinearWithLoRA(child, rank, alpha))")], "new ones"),
  ("r13-targets-sorted-copy", "05-replace", "right",
   [("    replaced = []\n",
     "    replaced = []\n    if target_modules is not None:\n        target_modules = sorted(target_modules)\n")], ""),

  # ------------------------------------------------------------------ 06: the parameters themselves, not copies
  ("r13-freeze-new-parameters", "06-freeze", "wrong",
   [(_FREEZE, _new_parameters("False").format(m="model", flag="False"))], "no longer the objects"),
  ("r13-unfreeze-new-parameters", "06-freeze", "wrong",
   [(_UNFREEZE, _new_parameters("True").format(m="module", flag="True"))], "no longer the objects"),
  ("r13-freeze-detach-in-place", "06-freeze", "right",
   [(_FREEZE, "    for p in model.parameters():\n        p.detach_()")], ""),
  ("r13-freeze-through-parameters-dict", "06-freeze", "right",
   [(_FREEZE, "    for mod in model.modules():\n        for p in mod._parameters.values():\n"
              "            if p is not None:\n                p.requires_grad = False")], ""),
  ("r13-grads-sets-grad", "06-lora-grads", "wrong",
   [("    return dA, dB", "    A.grad, B.grad = dA, dB\n    return dA, dB")], "requires_grad"),

  # ------------------------------------------------------------------ 07
  ("r13-last-token-view", "07-last-token", "wrong",
   [(_LT_BODY, "    positions = torch.arange(input_batch.shape[1], device=input_batch.device)\n"
               "    real = (input_batch.view(-1) != pad_token_id).view(input_batch.shape)\n"
               "    return (positions * real).amax(dim=1)")], "reshape"),
  ("r13-last-token-contiguous-view", "07-last-token", "right",
   [(_LT_BODY, "    positions = torch.arange(input_batch.shape[1], device=input_batch.device)\n"
               "    real = (input_batch.contiguous().view(-1) != pad_token_id).view(input_batch.shape)\n"
               "    return (positions * real).amax(dim=1)")], ""),
  ("r13-loop-grad-off-at-end", "07-train-loop", "wrong",
   [("        val_accs.append(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter))",
     "        torch.set_grad_enabled(False)\n"
     "        val_accs.append(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter))\n"
     "        torch.set_grad_enabled(True)\n    torch.set_grad_enabled(False)")], "autograd off"),

  # ------------------------------------------------------------------ 08, 09
  ("r13-kd-straight-through-T2", "08-kd-loss", "wrong",
   [("    return alpha * temperature ** 2 * soft + (1 - alpha) * hard",
     "    return alpha * (soft + ((temperature ** 2 - 1) * soft).detach()) + (1 - alpha) * hard")], "gradient"),
  ("r13-count-zero-grad", "09-lora-config", "wrong",
   [(_COUNT, "    model.zero_grad()\n" + _COUNT)], "gradients"),
  ("r13-count-detached-numel", "09-lora-config", "right",
   [(_COUNT, "    return sum(p.detach().numel() for p in model.parameters() if p.requires_grad)")], ""),
]
