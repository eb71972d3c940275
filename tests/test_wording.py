"""Words a learner reads: no unexplained "the seed's" (the project the course is based on), which
a reader would confuse with the random `seed` parameter."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSSESSIVE_SEED = re.compile(r"\bseed(?:'s|s')", re.IGNORECASE)
CHECKED = ["01_loading_weights", "02_settings_to_cfg", "03_data_balancing", "04_lora_layers",
           "05_lora_injection", "06_gradient_checks"]


def _texts():
    yield "README.md", (ROOT / "README.md").read_text(encoding="utf-8")
    for name in CHECKED:
        nb = json.loads((ROOT / "solutions" / f"{name}.ipynb").read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "markdown":
                yield f"solutions/{name}.ipynb cell {i}", "".join(cell["source"])


def test_no_unexplained_seed_possessive_in_readme_and_notebooks_01_to_06():
    found = [(where, m.group(0)) for where, text in _texts() for m in POSSESSIVE_SEED.finditer(text)]
    assert not found, f"say what is meant (e.g. 'the project this course is based on'): {found}"
