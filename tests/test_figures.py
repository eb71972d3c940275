"""img/make_figures.py draws every figure the notebooks show, reproducibly and offline."""
import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "img"


def _make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", IMG / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _referenced_images() -> dict[str, str]:
    """Every img/*.png a solution or student notebook's markdown points at, with the notebook naming it."""
    found = {}
    for folder in ("solutions", "notebooks"):
        for nb in sorted((ROOT / folder).glob("*.ipynb")):
            for cell in json.loads(nb.read_text())["cells"]:
                text = "".join(cell["source"])
                for name in re.findall(r"\.\./img/([\w.-]+\.png)", text):
                    found.setdefault(name, f"{folder}/{nb.name}")
    return found


def test_every_figure_a_notebook_shows_is_committed_and_drawn_by_the_script(tmp_path):
    drawn = {p.name for p in _make_figures().main(tmp_path)}
    referenced = _referenced_images()
    assert "gpt2_block.png" in referenced and "lora_update.png" in referenced
    for name, notebook in referenced.items():
        assert (IMG / name).is_file(), f"{notebook} shows img/{name}, which is not committed"
        assert name in drawn, f"{notebook} shows img/{name}, which img/make_figures.py does not draw"
    committed = {p.name for p in IMG.glob("*.png")}
    assert committed == drawn, "img/ should hold exactly the PNGs that make_figures.py draws"


def test_make_figures_is_byte_reproducible_and_unstamped(tmp_path):
    make_figures = _make_figures()
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    files = make_figures.main(first)
    make_figures.main(second)
    assert len(files) == 5
    for path in files:
        data = path.read_bytes()
        assert data == (second / path.name).read_bytes(), f"{path.name} differs between two runs"
        assert b"Software" not in data[:4096], f"{path.name} carries a version stamp"
