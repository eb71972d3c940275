"""Draw the course's diagrams: `python img/make_figures.py` rewrites the PNGs beside it."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent
LINEAR = "#f4a261"   # the layers LoRA can wrap
OTHER = "#e9ecef"


def box(ax, x, y, w, h, text, color=OTHER, size=10):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="#333"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax, x0, y0, x1, y1):
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="#333"))


def gpt2_block() -> None:
    """GPT-2 with one transformer block opened up; the nn.Linear layers are highlighted."""
    fig, ax = plt.subplots(figsize=(7, 8))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 14)
    ax.axis("off")
    box(ax, 3, 0.3, 4, 0.8, "tok_emb + pos_emb")
    ax.add_patch(FancyBboxPatch((0.5, 1.7), 9, 8.9, boxstyle="round,pad=0.05", fc="white", ec="#888", ls="--"))
    ax.text(0.7, 10.3, "trf_blocks[i]  (x 12 in gpt2-small)", fontsize=10, color="#555")
    box(ax, 3, 2.0, 4, 0.7, "norm1 (LayerNorm)")
    for i, name in enumerate(("W_query", "W_key", "W_value")):
        box(ax, 1 + i * 2.8, 3.2, 2.4, 0.8, f"att.{name}", LINEAR)
    box(ax, 3, 4.5, 4, 0.7, "causal softmax attention")
    box(ax, 3, 5.6, 4, 0.8, "att.out_proj", LINEAR)
    box(ax, 3, 6.8, 4, 0.7, "norm2 (LayerNorm)")
    box(ax, 3, 7.8, 4, 0.8, "ff.layers[0]  768 -> 3072", LINEAR)
    box(ax, 3, 8.9, 4, 0.8, "GELU, ff.layers[2]  3072 -> 768", LINEAR)
    box(ax, 3, 11.0, 4, 0.7, "final_norm")
    box(ax, 3, 12.1, 4, 0.8, "out_head  768 -> 50257", "#adb5bd")
    for y0, y1 in ((1.1, 2.0), (9.7, 11.0), (11.7, 12.1)):
        arrow(ax, 5, y0, 5, y1)
    ax.text(5, 13.4, "GPT-2: orange = nn.Linear layers inside the blocks (LoRA targets)",
            ha="center", fontsize=10)
    fig.savefig(HERE / "gpt2_block.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def lora_update() -> None:
    """h = W x + (alpha / r) B A x: the frozen path and the low-rank path side by side."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 7)
    ax.axis("off")
    box(ax, 4.5, 0.2, 3, 0.8, "input x  (in_dim)")
    box(ax, 1, 2.3, 3.5, 2.4, "W\n(out_dim x in_dim)\nfrozen", OTHER, 11)
    box(ax, 7, 1.8, 3.5, 0.9, "A  (rank x in_dim)\nKaiming-uniform", LINEAR)
    box(ax, 7, 3.6, 3.5, 0.9, "B  (out_dim x rank)\nzeros at init", LINEAR)
    box(ax, 4, 5.6, 4, 0.9, "h = W x + (alpha / r) B A x", "#cfe8ff", 11)
    arrow(ax, 6, 1.0, 2.75, 2.3)
    arrow(ax, 6, 1.0, 8.75, 1.8)
    arrow(ax, 8.75, 2.7, 8.75, 3.6)
    arrow(ax, 2.75, 4.7, 5.2, 5.6)
    arrow(ax, 8.75, 4.5, 6.8, 5.6)
    ax.text(8.9, 3.05, "rank r << in_dim, out_dim", fontsize=9, color="#555")
    fig.savefig(HERE / "lora_update.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    gpt2_block()
    lora_update()
    print("wrote", ", ".join(p.name for p in sorted(HERE.glob("*.png"))))
