"""What every figure of eval and report does alike: a grid of one panel per method, and saving as PNG + PDF."""

from __future__ import annotations


def pyplot():
    """matplotlib's pyplot on the file backend (stages have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panels(n: int, width: float, height: float, **subplots):
    """A grid of n panels, 3 to a row. -> (figure, the n axes in order); the grid's spare axes are hidden."""
    plt = pyplot()
    cols = min(3, max(1, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, **subplots)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def save(fig, path_stem, dpi: int) -> None:
    """<path_stem>.png and .pdf, then free the figure."""
    fig.tight_layout()
    fig.savefig(f"{path_stem}.png", dpi=dpi)
    fig.savefig(f"{path_stem}.pdf")
    pyplot().close(fig)
