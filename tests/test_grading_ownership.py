"""The object a graded name is bound to, not only the syntax that defines it, must be the notebook's.

The grader's static check finds ``class LoRALayer`` in the submitted source; a decorator, a
``globals()`` write or a class built elsewhere can still bind another implementation to that name.
The probe process therefore inspects what the definitions left bound (without running any of its
code): functions compiled from the notebook's cells, classes whose methods are, and bases and
metaclasses only from the packages in ``probe.BASES`` (found where their module says they are).
"""
from __future__ import annotations

import json

import pytest

from course_tools.grading import probe

HONEST = '''
import torch
from torch import nn
class LoRALayer(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
    @property
    def double(self):
        return 2 * self.scale
    @staticmethod
    def helper(x):
        return x
    def forward(self, x):
        return self.helper(x) * self.scale
'''
CARRIED = ('import torch\\nclass L(torch.nn.Module):\\n    def __init__(self, scale):\\n        super().__init__()\\n'
           '    def forward(self, x):\\n        return x * 2.0\\n')
CARRY = f'''
def carried():
    ns = {{}}
    exec("{CARRIED}", ns)
    return ns["L"]
'''
ATTACKS = {
    "a decorator returning a class built from carried code": HONEST + CARRY + '''
@lambda cls: carried()
class LoRALayer(nn.Module):
    pass
''',
    "a globals() write after the class": HONEST + CARRY + '''
globals()["LoRALayer"] = carried()
''',
    "a method taken from carried code": HONEST + CARRY + '''
class LoRALayer(nn.Module):
    def __init__(self, scale):
        super().__init__()
    forward = carried().forward
''',
    "a base class built from carried code": HONEST + CARRY + '''
class LoRALayer(carried()):
    def __init__(self, scale):
        super().__init__(scale)
''',
    "a class swapped in through __class__ of a module-level object": HONEST + CARRY + '''
LoRALayer = type(carried()(1.0))
''',
    "a library function bound by a decorator": HONEST + '''
import json
def swap(fn):
    return json.loads
@swap
def LoRALayer(scale):
    pass
''',
    # the red team's round three: the check's own tools patched, a base relabelled as PyTorch's, carried code
    # compiled (or renamed) under the notebook's own file name
    "builtins the check uses patched after the class": HONEST + CARRY + '''
import builtins
builtins.vars = lambda *a: {}
globals()["LoRALayer"] = carried()
''',
    "a carried base relabelled as a PyTorch class": HONEST + CARRY + '''
import torch
impl = carried()
impl.__module__, impl.__qualname__ = "torch.nn", "LoRAImpl"
torch.nn.LoRAImpl = impl
class LoRALayer(torch.nn.LoRAImpl):
    pass
''',
    "carried code compiled under the notebook's file name": f'''
def carried():
    ns = {{}}
    exec(compile("{CARRIED}", "<notebook>", "exec"), ns)
    return ns["L"]
globals()["LoRALayer"] = carried()
''',
    "a carried function's code renamed to the notebook's": CARRY + '''
def renamed():
    L = carried()
    L.forward.__code__ = L.forward.__code__.replace(co_filename="<notebook>")
    return L
globals()["LoRALayer"] = renamed()
''',
}
# Honest code that wraps its own functions with the standard library's or PyTorch's decorators.
WRAPPED = {
    "functools.lru_cache on a method": "import functools\nfunctools.lru_cache(maxsize=None)",
    "functools.cache on a method": "import functools\nfunctools.cache",
    "torch.no_grad on a method": "import torch\ntorch.no_grad()",
}
BODY = "import torch\nreturn LoRALayer(3.0)(torch.ones(2)).tolist()"
BODY_FOR_FUNCTIONS = "return LoRALayer('[3.0, 3.0]')"


def _probe(definitions: str, check: bool = True) -> dict:
    body = BODY_FOR_FUNCTIONS if "swap" in definitions else BODY
    job = {"definitions": probe.definitions([definitions]), "probes": [["04-lora-layer", probe.probe_source(body), 1]],
           "owned": {"04-lora-layer": ["LoRALayer"]} if check else {}, "bases": list(probe.BASES)}
    state, raw = probe.run_probe_process(probe.probe_command(isolated=False), job, timeout=120)
    assert state == "ok", raw[-500:]
    return json.loads(raw)["04-lora-layer"]


def test_an_honest_class_with_properties_and_static_methods_is_the_notebooks_own():
    reply = _probe(HONEST)
    assert reply == {"ok": True, "result": [3.0, 3.0]}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_each_attack_binds_another_implementation_when_the_object_is_not_checked(attack):
    if "file name" in attack or "renamed" in attack:
        pytest.skip("refused when the code is made, whether or not the bound object is checked")
    reply = _probe(ATTACKS[attack], check=False)
    assert reply["ok"] and reply["result"] in ([2.0, 2.0], [3.0, 3.0]), reply
    assert reply["result"] == [2.0, 2.0] or "swap" in ATTACKS[attack]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_another_implementation_bound_to_the_graded_name_is_refused(attack):
    reply = _probe(ATTACKS[attack])
    assert reply["ok"] is False and reply["error"] == "not your own", reply
    assert reply["message"].startswith("`LoRALayer` as the notebook's cells left it is not code they define")
    assert ("own file name" in reply["message"]) == ("file name" in attack or "renamed" in attack)


@pytest.mark.parametrize("wrapper", sorted(WRAPPED))
def test_the_notebooks_own_code_under_a_standard_decorator_is_its_own(wrapper):
    imports, decorator = WRAPPED[wrapper].split("\n")
    source = HONEST.replace("    @staticmethod\n    def helper", f"    @staticmethod\n    @{decorator}\n    def helper")
    assert source != HONEST
    assert _probe(imports + "\n" + source) == {"ok": True, "result": [3.0, 3.0]}


def test_an_exercise_function_under_lru_cache_is_its_own():
    source = "import functools\n@functools.lru_cache(maxsize=None)\ndef LoRALayer(text):\n    return [3.0, 3.0]\n"
    job = {"definitions": probe.definitions([source]), "probes": [["x", probe.probe_source("return LoRALayer('a')"), 1]],
           "owned": {"x": ["LoRALayer"]}, "bases": list(probe.BASES)}
    state, raw = probe.run_probe_process(probe.probe_command(isolated=False), job, timeout=120)
    assert json.loads(raw)["x"] == {"ok": True, "result": [3.0, 3.0]}
