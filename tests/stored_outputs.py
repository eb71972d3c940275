"""Compare a notebook executed elsewhere (by the grader, say) with the outputs stored in
``solutions/``, as strictly as ``pytest --nbval`` does: nbval's own stream merging and its list of
keys it never compares (metadata, execution counts, widget ids, images), no sanitising; cells
marked ``# NBVAL_IGNORE_OUTPUT`` or ``# NBVAL_SKIP`` are not compared, as nbval does not."""
from __future__ import annotations

import copy
from collections import defaultdict

import nbformat
from nbval.plugin import coalesce_streams, find_comment_markers, transform_streams_for_comparison

SKIP_KEYS = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
             "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")


def _flatten(outputs: list) -> dict[str, list]:
    """Every compared value of a cell's outputs, by key (MIME types flattened), in order."""
    values: dict[str, list] = defaultdict(list)
    for output in transform_streams_for_comparison(coalesce_streams(copy.deepcopy(outputs))):
        for key, value in output.items():
            if key in SKIP_KEYS:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in SKIP_KEYS:
                        values[mime].append(data)
            else:
                values[key].append(value)
    return dict(values)


def _compared(cell) -> bool:
    markers = dict(find_comment_markers(cell.source))
    return cell.cell_type == "code" and markers.get("check", True) and not markers.get("skip")


def differences(stored: nbformat.NotebookNode, executed: nbformat.NotebookNode) -> list[str]:
    """One line per code cell whose executed outputs differ from the stored ones (none: equal)."""
    stored_cells = [c for c in stored.cells if c.cell_type == "code"]
    executed_cells = [c for c in executed.cells if c.cell_type == "code"]
    if [c.source for c in stored_cells] != [c.source for c in executed_cells]:
        return ["the executed notebook does not have the stored notebook's code cells"]
    problems = []
    for i, (ref, run) in enumerate(zip(stored_cells, executed_cells)):
        if _compared(ref) and _flatten(ref.outputs) != _flatten(run.outputs):
            problems.append(f"code cell {i}: stored {_flatten(ref.outputs)!r:.300} != executed {_flatten(run.outputs)!r:.300}")
    return problems
