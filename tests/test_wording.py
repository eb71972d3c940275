"""Words a learner reads: no unexplained "the seed's" (the project the course is based on), which
a reader would confuse with the random `seed` parameter."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSSESSIVE_SEED = re.compile(r"\bseed(?:'s|s')", re.IGNORECASE)
CHECKED = ["01_loading_weights", "02_settings_to_cfg", "03_data_balancing", "04_lora_layers",
           "05_lora_injection", "06_gradient_checks", "07_classification_training", "08_distillation",
           "09_peft_and_tuning"]


def _texts():
    yield "README.md", (ROOT / "README.md").read_text(encoding="utf-8")
    for name in CHECKED:
        nb = json.loads((ROOT / "solutions" / f"{name}.ipynb").read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "markdown":
                yield f"solutions/{name}.ipynb cell {i}", "".join(cell["source"])
            for output in cell.get("outputs", []):   # what the checks print is read too
                yield f"solutions/{name}.ipynb cell {i} output", "".join(output.get("text", ""))


def test_no_unexplained_seed_possessive_in_readme_and_notebooks():
    found = [(where, m.group(0)) for where, text in _texts() for m in POSSESSIVE_SEED.finditer(text)]
    assert not found, f"say what is meant (e.g. 'the project this course is based on'): {found}"
