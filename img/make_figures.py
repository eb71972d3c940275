"""Draw the course's diagrams: `python img/make_figures.py` rewrites the PNGs beside it.

Everything is drawn from constants (no data, no network, no randomness) and saved without a
software-version stamp, so the same matplotlib gives byte-identical files on every run.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle  # noqa: E402

HERE = Path(__file__).resolve().parent
LINEAR = "#f4a261"   # the layers LoRA can wrap
OTHER = "#e9ecef"
STREAM = "#2a9d8f"   # the residual stream
TEACHER = "#cfe8ff"
STUDENT = "#d8f3dc"
PNG_METADATA = {"Software": None}  # no version stamp: the file depends only on the drawing


def save(fig: plt.Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` reproducibly and close it."""
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)


def box(ax, x, y, w, h, text, color=OTHER, size=10):
    """A rounded box with centred text; (x, y) is its lower-left corner."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="#333"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax, x0, y0, x1, y1, color="#333", lw=1.2):
    """An arrow from (x0, y0) to (x1, y1)."""
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                arrowprops=dict(arrowstyle="-|>", color=color, lw=lw, shrinkA=0, shrinkB=0))


def line(ax, xs, ys, color="#333", lw=1.2):
    """A plain polyline."""
    ax.plot(xs, ys, color=color, lw=lw, solid_capstyle="butt")


def gpt2_block(out: Path = HERE) -> None:
    """GPT-2 with one pre-LayerNorm block opened up: the residual stream, its two branches, the Linears."""
    fig, ax = plt.subplots(figsize=(9, 10))
    ax.set_xlim(0, 13.5)
    ax.set_ylim(0, 15.6)
    ax.axis("off")
    s = 2.2  # x of the residual stream
    box(ax, 0.5, 0.3, 3.4, 0.8, "tok_emb + pos_emb")
    ax.add_patch(FancyBboxPatch((0.3, 1.6), 9.0, 10.6, boxstyle="round,pad=0.05", fc="white", ec="#888", ls="--"))
    ax.text(9.2, 11.95, "trf_blocks[i]  (x 12 in gpt2-small)", fontsize=9, color="#555", ha="right")

    def add(y):
        ax.add_patch(Circle((s, y), 0.28, fc="white", ec=STREAM, lw=2, zorder=3))
        ax.text(s, y, "+", ha="center", va="center", fontsize=14, color=STREAM, zorder=4)

    # the stream: embeddings -> (+) -> (+) -> final_norm, drawn thick
    add1, add2 = 6.7, 11.5
    arrow(ax, s, 1.1, s, add1 - 0.28, STREAM, 2.5)
    arrow(ax, s, add1 + 0.28, s, add2 - 0.28, STREAM, 2.5)
    arrow(ax, s, add2 + 0.28, s, 12.7, STREAM, 2.5)
    add(add1)
    add(add2)
    ax.text(s - 0.45, 4.2, "residual stream  x", rotation=90, ha="center", va="center", color=STREAM, fontsize=10)
    ax.text(s - 0.45, 9.1, "residual stream  x", rotation=90, ha="center", va="center", color=STREAM, fontsize=10)

    # branch 1: norm1 -> W_query / W_key / W_value -> attention -> out_proj -> back into the stream
    line(ax, [s, 4.2], [2.2, 2.2], STREAM, 1.5)
    arrow(ax, 4.2, 2.2, 4.3, 2.2, STREAM, 1.5)
    box(ax, 4.3, 1.9, 4.6, 0.6, "norm1 (LayerNorm)")
    xs = (4.1, 5.85, 7.6)
    for x, name in zip(xs, ("W_query", "W_key", "W_value")):
        box(ax, x, 3.0, 1.5, 0.7, f"att.{name}", LINEAR, 9)
        arrow(ax, 6.6, 2.5, x + 0.75, 3.0)
        arrow(ax, x + 0.75, 3.7, 6.6, 4.2)
    box(ax, 4.3, 4.2, 4.6, 0.7, "causal softmax attention", OTHER, 9)
    arrow(ax, 6.6, 4.9, 6.6, 5.35)
    box(ax, 4.3, 5.35, 4.6, 0.7, "att.out_proj", LINEAR)
    line(ax, [6.6, 6.6], [6.05, add1])
    arrow(ax, 6.6, add1, s + 0.28, add1)

    # branch 2: norm2 -> ff.layers[0] -> GELU -> ff.layers[2] -> back into the stream
    line(ax, [s, 4.2], [7.3, 7.3], STREAM, 1.5)
    arrow(ax, 4.2, 7.3, 4.3, 7.3, STREAM, 1.5)
    box(ax, 4.3, 7.0, 4.6, 0.6, "norm2 (LayerNorm)")
    arrow(ax, 6.6, 7.6, 6.6, 8.05)
    box(ax, 4.3, 8.05, 4.6, 0.7, "ff.layers[0]  768 -> 3072", LINEAR, 9)
    arrow(ax, 6.6, 8.75, 6.6, 9.15)
    box(ax, 4.3, 9.15, 4.6, 0.55, "GELU", OTHER, 9)
    arrow(ax, 6.6, 9.7, 6.6, 10.1)
    box(ax, 4.3, 10.1, 4.6, 0.7, "ff.layers[2]  3072 -> 768", LINEAR, 9)
    line(ax, [6.6, 6.6], [10.8, add2])
    arrow(ax, 6.6, add2, s + 0.28, add2)

    # what each (+) computes, and what pre-LayerNorm means
    ax.text(9.6, 4.2, "x = x + att(norm1(x))", fontsize=10, family="monospace")
    ax.text(9.6, 9.1, "x = x + ff(norm2(x))", fontsize=10, family="monospace")
    ax.text(9.6, 6.3, "pre-LayerNorm: each\nbranch normalises its\nown input; the stream\n"
            "itself is normalised\nonly once, by final_norm", fontsize=8.5, color="#555", va="center")

    box(ax, 0.5, 12.7, 3.4, 0.6, "final_norm")
    arrow(ax, s, 13.3, s, 13.7)
    box(ax, 0.2, 13.7, 4.0, 0.7, "out_head  768 -> 50257", "#adb5bd")
    ax.text(6.75, 15.1, "GPT-2: the residual stream (green) and one block's two branches;\n"
            "orange = nn.Linear layers inside the blocks (LoRA targets)", ha="center", fontsize=10)
    save(fig, out / "gpt2_block.png")


def lora_update(out: Path = HERE) -> None:
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
    save(fig, out / "lora_update.png")


def causal_mask_last_token(out: Path = HERE) -> None:
    """A right-padded batch, the causal mask of one row, and the position that is classified."""
    lengths = (5, 3, 7)   # real tokens per message; the batch is padded on the right to 7
    t = 7
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.15, 1]})

    left.set_xlim(-1.9, t + 0.2)
    left.set_ylim(len(lengths) + 0.9, -0.9)
    left.axis("off")
    for row, n in enumerate(lengths):
        left.text(-0.2, row + 0.5, f"message {row + 1}", ha="right", va="center", fontsize=9)
        for col in range(t):
            real = col < n
            left.add_patch(Rectangle((col, row), 1, 1, fc="#cfe8ff" if real else "#dee2e6", ec="white", lw=2))
            left.text(col + 0.5, row + 0.5, f"t{col}" if real else "pad", ha="center", va="center",
                      fontsize=8, color="#222" if real else "#777")
        left.add_patch(Rectangle((n - 1, row), 1, 1, fc="none", ec="#2a9d8f", lw=3))
        if n < t:
            left.text(t - 0.5, row + 0.5, "x", ha="center", va="center", fontsize=20, color="#d62828", alpha=0.7)
    left.text(-1.8, -0.45, "right-padded batch (pad = token 50256)", fontsize=10)
    left.text(-1.8, len(lengths) + 0.45, "green frame: the last REAL token, whose output is classified\n"
              "red x: the last padded position (index -1), which is not", fontsize=9, va="center")

    n = lengths[0]
    allowed = np.tril(np.ones((t, t)))
    colours = np.empty((t, t, 3))
    for q in range(t):
        for k in range(t):
            if not allowed[q, k]:
                colours[q, k] = (1, 1, 1)                     # masked: -inf before the softmax
            elif k < n:
                colours[q, k] = (0.81, 0.91, 1.0)             # attends to a real token
            else:
                colours[q, k] = (0.75, 0.75, 0.75)            # attends to padding
    right.imshow(colours, extent=(0, t, t, 0))
    for q in range(t + 1):
        right.plot([0, t], [q, q], color="white", lw=1.5)
        right.plot([q, q], [0, t], color="white", lw=1.5)
    right.add_patch(Rectangle((0, n - 1), t, 1, fc="none", ec="#2a9d8f", lw=3,
                                zorder=5, clip_on=False))
    right.add_patch(Rectangle((0, t - 1), t, 1, fc="none", ec="#d62828", lw=2, ls="--", zorder=5, clip_on=False))
    labels = [f"t{i}" if i < n else "pad" for i in range(t)]
    right.set_xticks(np.arange(t) + 0.5, labels, fontsize=8)
    right.set_yticks(np.arange(t) + 0.5, labels, fontsize=8)
    right.set_xlabel("key position (what is looked at)")
    right.set_ylabel("query position (who looks)")
    right.set_title(f"causal mask of message 1 ({n} real tokens)", fontsize=10)
    right.text(t + 0.3, n - 0.5, "sees every real token\nand no padding", fontsize=8.5, color="#2a9d8f", va="center")
    right.text(t + 0.3, t - 0.5, "has also attended\nto the padding", fontsize=8.5, color="#d62828", va="center")
    right.set_xlim(0, t)
    fig.text(0.5, -0.02, "blue: allowed, real token   grey: allowed, padding   white: masked (future)",
             ha="center", fontsize=9)
    save(fig, out / "causal_mask_last_token.png")


def softmax_temperature(out: Path = HERE) -> None:
    """softmax(z / T) of the same logits z at several temperatures T: five classes, and two (CoLA's case)."""
    temps = (0.5, 1.0, 2.0, 5.0)
    cmap = plt.get_cmap("viridis")
    fig, (many, two) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [5, 2.6]})

    def bars(ax, logits, names):
        width = 0.8 / len(temps)
        for i, temp in enumerate(temps):
            z = logits / temp
            p = np.exp(z - z.max())
            p /= p.sum()
            ax.bar(np.arange(len(logits)) + (i - (len(temps) - 1) / 2) * width, p, width,
                   label=f"T = {temp:g}", color=cmap(i / (len(temps) - 1) * 0.85))
        ax.set_xticks(range(len(logits)), [f"{name}\nz = {v:g}" for name, v in zip(names, logits)])
        ax.set_ylim(0, 1)
        ax.spines[["top", "right"]].set_visible(False)

    bars(many, np.array([3.0, 1.5, 0.5, 0.0, -1.0]), [f"class {i}" for i in range(5)])
    many.set_ylabel("probability")
    many.set_title("five classes: a higher T spreads the probability,\nand the ranking of the wrong classes shows")
    many.legend(frameon=False)
    bars(two, np.array([0.0, 2.0]), ["unacceptable", "acceptable"])
    two.set_title("two classes (CoLA): one number per sentence,\np(acceptable) = sigmoid((z1 - z0) / T)")
    two.axhline(0.5, color="#999", lw=0.8, ls="--")
    two.set_ylabel("probability")
    two.text(0.27, 0.9, "the other bar is 1 minus it;\nT > 1 moves it towards 0.5,\nT < 1 away, never across;\n"
             "no other classes to rank",
             transform=two.transAxes, ha="center", va="top", fontsize=8.5, color="#555")
    fig.tight_layout()
    save(fig, out / "softmax_temperature.png")


def distillation_flow(out: Path = HERE) -> None:
    """Teacher logits softened by T, student logits softened by T, KL between them, CE on the labels."""
    fig, ax = plt.subplots(figsize=(11, 5.2))
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 7.6)
    ax.axis("off")
    box(ax, 0.2, 3.3, 2.2, 1.0, "sentence\n(token ids)")
    box(ax, 3.3, 5.4, 3.2, 1.2, "teacher\nGPT-2 + LoRA\n(trained, frozen)", TEACHER)
    box(ax, 3.3, 1.2, 3.2, 1.2, "student\nDistilRNN\n(being trained)", STUDENT)
    arrow(ax, 2.4, 3.9, 3.3, 5.9)
    arrow(ax, 2.4, 3.7, 3.3, 1.8)
    box(ax, 7.3, 5.6, 1.8, 0.8, "logits z_t", TEACHER)
    box(ax, 7.3, 1.4, 1.8, 0.8, "logits z_s", STUDENT)
    arrow(ax, 6.5, 6.0, 7.3, 6.0)
    arrow(ax, 6.5, 1.8, 7.3, 1.8)
    box(ax, 9.9, 5.5, 2.6, 1.0, "soft targets\nsoftmax(z_t / T)", TEACHER)
    box(ax, 9.9, 3.0, 2.6, 1.0, "softmax(z_s / T)", STUDENT)
    arrow(ax, 9.1, 6.0, 9.9, 6.0)
    arrow(ax, 9.1, 1.9, 9.9, 3.3)
    box(ax, 13.0, 4.3, 2.9, 1.0, "T² · KL(\nteacher ‖ student)", "#fff3bf", 9)
    arrow(ax, 12.5, 5.9, 13.0, 5.1)
    arrow(ax, 12.5, 3.5, 13.0, 4.5)
    box(ax, 9.9, 0.3, 2.6, 1.0, "hard label y\n(0 or 1)", OTHER)
    box(ax, 13.0, 1.3, 2.9, 1.0, "cross-entropy(z_s, y)", "#fff3bf", 9)
    arrow(ax, 9.1, 1.6, 13.0, 1.7)
    arrow(ax, 12.5, 0.8, 13.0, 1.4)
    ax.text(8.0, 7.25, "loss = alpha · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − alpha) · CE(z_s, y)",
            ha="center", fontsize=10.5)
    ax.text(14.45, 3.3, "only the student's\nweights get gradients", ha="center", fontsize=8.5, color="#555")
    ax.text(4.9, 4.55, "teacher logits computed once\nand cached (no gradient)", ha="center", fontsize=8.5,
            color="#555")
    save(fig, out / "distillation_flow.png")


FIGURES = (gpt2_block, lora_update, causal_mask_last_token, softmax_temperature, distillation_flow)


def main(out: Path = HERE) -> list[Path]:
    """Draw every figure into ``out`` (img/ by default) and return the files written."""
    for draw in FIGURES:
        draw(out)
    return [out / f"{draw.__name__}.png" for draw in FIGURES]


if __name__ == "__main__":
    print("wrote", ", ".join(p.name for p in main()))
