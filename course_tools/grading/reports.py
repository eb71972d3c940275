"""What the grader writes, after every sandbox is gone: the CSV gradebook (and the instructor's flags), one
feedback file per student, the executed notebooks, and the console's totals. Everything a submission controls
(folder names, messages, written answers) is made safe for each: printable, one line, no spreadsheet formulas, no
HTML, file names without ``/`` or a leading dot."""
from __future__ import annotations

import csv
import hashlib
import html
import io
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat

from course_lib.paths import repo_root

from .probe import printable

if TYPE_CHECKING:
    from .job import Result

FIELDS = ["student", "notebook", "exercise", "points", "max_points", "status", "message"]
FLAG_FIELDS = ["student", "notebook", "exercise", "reason"]


def _sorted_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["student"], r["notebook"], r["exercise"]))


def with_totals(rows: list[dict]) -> list[dict]:
    """The exercise rows, each student's followed by a TOTAL row."""
    rows = _sorted_rows([r for r in rows if r["exercise"] != "TOTAL"])
    out: list[dict] = []
    for student in sorted({r["student"] for r in rows}):
        mine = [r for r in rows if r["student"] == student]
        out += mine
        out.append({"student": student, "notebook": "ALL", "exercise": "TOTAL",
                    "points": sum(int(r["points"]) for r in mine), "max_points": sum(int(r["max_points"]) for r in mine),
                    "status": "total", "message": ""})
    return out


CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "|", "%")


def csv_cell(value):
    """``value`` safe for a spreadsheet: text that a spreadsheet would read as a formula (starting
    with ``=``, ``+``, ``-``, ``@``, a tab, ...) gets a leading apostrophe (OWASP's advice on CSV
    injection); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_START):
        return "'" + value
    return value


def display_name(folder: str) -> str:
    """A student's folder name as every output shows it: printable, on one line, at most 80
    characters. A name that had to change gets ``~`` and 8 hex digits of its hash, so two folders
    never share a name in the gradebook; a folder whose own name already ends that way is renamed
    too, or it could be the one another folder's name was changed to. The name's bytes are read as UTF-8 whatever the
    locale (under ``LC_ALL=C PYTHONUTF8=0`` a folder ``Zoë`` was shown as ``Zo\\udcc3\\udcab~...``)."""
    try:
        folder = os.fsencode(folder).decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:   # not a name read from the disk in this locale: taken as it is
        pass
    shown = " ".join(printable(folder, 1000).split())
    if (shown == folder and 0 < len(shown) <= 80 and not shown.startswith(("'", "~"))
            and not re.search(r"~[0-9a-f]{8}$", shown)):
        return shown
    return f"{shown[:70]}~{hashlib.sha256(folder.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def file_name(name: str) -> str:
    """``name`` (a display name) as a file name: no ``/``, no leading dot or dash, at most 120 bytes. (A leading dash
    becomes ``_``, with ``~`` and the name's hash after it, which no display name ends with.)"""
    safe = name.replace("/", "_").replace("\0", "_")
    if safe.startswith("."):
        safe = "_" + safe
    if safe.startswith("-"):   # else an option to the instructor's `rm *`, `zip feedback.zip *`, `tar cf x *`
        safe = f"_{safe}~{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    if len(safe.encode("utf-8", "surrogateescape")) > 120:
        digest = hashlib.sha256(safe.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        safe = safe.encode("utf-8", "surrogateescape")[:100].decode("utf-8", "ignore") + "~" + digest
    return os.fsdecode(safe.encode("utf-8", "surrogateescape"))   # written as UTF-8 bytes whatever the locale


def write_atomically(path: Path, text: str) -> None:
    """``path`` holds ``text`` in full or is left as it was: written to a new file beside it, flushed to disk, then
    renamed over it. A full or read-only disk raises OSError without leaving a half-written file (and without
    truncating the file of an earlier run)."""
    data = text.encode("utf-8", "backslashreplace")
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name[:60]}.", suffix=".part", dir=path.parent)
    try:
        _keep_group_share(fd, path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp's 0600, whatever the umask: grades, feedback and executed notebooks (the students' code) are not for
        # other users of a shared machine (chmod g+r them to share with teaching assistants)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _group_share(path: Path) -> tuple[int, int] | None:
    """``path``'s group and its group bits when it is this user's and shared with its group only (no bit for others),
    else None."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid() or mode & 0o007 or not mode & 0o040:
        return None
    return st.st_gid, mode & 0o070


def share_like(target: int | Path, source: Path, bits: int) -> None:
    """Give ``target`` (an open descriptor or a path) ``source``'s group and the part of its group bits in ``bits`` when
    ``source`` is shared with its group only (see :func:`_group_share`); otherwise leave it as made (0600 or 0700). The
    instructor's ``chmod -R g+rX`` for teaching assistants (docs/instructors.md) would otherwise be undone by every
    regrade and merge (each file written 0600 again) and miss every student graded later."""
    share = _group_share(source)
    if share is None:
        return
    group, mode = share
    try:
        if isinstance(target, int):
            os.fchown(target, -1, group)   # first the group: its bits must never reach another group
            os.fchmod(target, 0o600 | mode & bits)
        else:
            os.chown(target, -1, group, follow_symlinks=False)
            os.chmod(target, 0o700 | mode & bits)
    except OSError:
        return


def _keep_group_share(fd: int, path: Path) -> None:
    """The new file behind ``fd`` shared as the regular file ``path`` it replaces was (group read and write), or, for a
    file new to its folder, as the folder is (group read): a file readable by others (written before outputs were
    private) gives nothing."""
    if os.path.lexists(path):
        if path.is_file() and not path.is_symlink():
            share_like(fd, path, 0o060)
        return
    share_like(fd, path.parent, 0o040)


def gradebook_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_cell(r[k]) for k in FIELDS} for r in with_totals(rows))
    return buffer.getvalue()


def write_gradebook(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)   # --merge's --out folder: the grading user's alone
    write_atomically(out, gradebook_text(rows))


def written_answers(nb: nbformat.NotebookNode) -> dict[str, str]:
    """Each written-answer cell's text, by exercise id (markdown cells carrying ``course`` metadata)."""
    from ..notebooks import BEGIN, END

    out: dict[str, str] = {}
    for cell in nb.cells:
        course = cell.get("metadata", {}).get("course")   # the metadata editor lets a student type anything there
        exercise = course.get("exercise") if isinstance(course, dict) else None
        if cell.get("cell_type") != "markdown" or not isinstance(exercise, str):
            continue
        lines = cell.source.split("\n")
        marked = [i for i, line in enumerate(lines) if BEGIN.match(line) or END.match(line)]
        body = lines[marked[0] + 1:marked[1]] if len(marked) >= 2 else lines
        out[exercise] = "\n".join(body).strip()
    return out


def model_answers(notebook: str) -> dict[str, str]:
    """The model answers of ``notebook``'s written questions, from the instructor's solution copy."""
    path = repo_root() / "solutions" / f"{notebook}.ipynb"
    try:
        return written_answers(nbformat.read(path, as_version=4))
    except Exception:
        return {}


def inert_markdown(text: str) -> str:
    """Student ``text`` that renders as itself in Markdown: no HTML (escaped), and no link or image (``[``, ``]`` and
    the backslash that could undo that escape are escaped). An image in a feedback file would otherwise be fetched
    from the student's server whenever the instructor or student opens it, and a link could say anything."""
    text = html.escape(text, quote=False)
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _answer_block(student_answer: str, model: str) -> list[str]:
    from ..notebooks import ANSWER_PROMPT

    mine = student_answer.strip()
    if not mine or ANSWER_PROMPT in mine:
        mine = "(no answer)"
    quote = lambda text: ["> " + html.escape(line, quote=False) for line in text.split("\n")]  # noqa: E731
    # each line printable too: a written answer is the one student text kept on several lines, and its control codes
    # (ESC c, a C1 CSI, a carriage return that overwrites the line before it) acted on the terminal of whoever ran
    # `cat feedback/*.md`
    return ["  Your answer:", "", *["  > " + inert_markdown(printable(line, 2000)) for line in mine[:2000].split("\n")],
            "",
            "  Model answer:", "", *["  " + q for q in quote(model)], ""]


def write_feedback(student: str, results: list[Result], folder: Path) -> None:
    """``folder/<student>.md``: points and messages per exercise, notes, and the written answers
    beside the model answers (students see those only here, after grading)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    rows = [r for res in results for r in res.rows]
    got, total = sum(r["points"] for r in rows), sum(r["max_points"] for r in rows)
    text = lambda value: inert_markdown(printable(str(value), 2000))  # noqa: E731  one line, no HTML, no links
    lines = [f"# Feedback for {text(student)}", "", f"**{got} of {total} points.**", ""]
    for res in sorted(results, key=lambda r: r.notebook):
        lines += [f"## {res.notebook}", ""]
        for r in res.rows:
            mark = "✓" if r["status"] == "passed" else "✗"
            lines.append(f"- {mark} **{r['exercise']}** ({r['points']}/{r['max_points']}): {text(r['message'])}")
        for event in res.events:
            lines.append(f"- Note: {text(event)}")
        models = model_answers(res.notebook)
        for exercise, model in models.items():
            lines += [f"- Written answer **{exercise}** (not scored):", ""]
            lines += _answer_block(res.written.get(exercise, ""), model)
        lines.append("")
    write_atomically(folder / f"{file_name(student)}.md", "\n".join(lines))


def flags_text(flags: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FLAG_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_cell(f[k]) for k in FLAG_FIELDS}
                     for f in sorted(flags, key=lambda f: (f["student"], f["notebook"], f["exercise"])))
    return buffer.getvalue()


def write_flags(flags: list[dict], out: Path) -> None:
    """``out``: one row per flagged exercise, for the instructor's eyes only (students never see it)."""
    write_atomically(out, flags_text(flags))


def utf8(text: str) -> str:
    """``text`` that can be written as UTF-8 (a lone surrogate from a notebook becomes ``\\udXXX``)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def write_results(results: list[Result], out: Path, feedback_dir: Path, executed_dir: Path) -> list[dict]:
    """The gradebook at ``out``, the flags beside it, each student's feedback and the executed notebooks; one
    student's file that cannot be written costs only that file. Returns the gradebook's rows with totals."""
    rows = [{"student": r.student, "notebook": r.notebook, **row} for r in results for row in r.rows]
    books = [(out, gradebook_text(rows)),
             (out.parent / f"{out.stem}-flags.csv", flags_text([f for r in results for f in r.flags]))]
    lost: list[str] = []   # hours of grading must not be lost to a full or read-only disk: kept elsewhere, said
    for path, text in books:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, text)
        except OSError as err:
            lost.append(f"could not write {path} ({err.strerror or type(err).__name__}); {_rescue(path, text)}")
    for student in sorted({r.student for r in results}):
        try:
            write_feedback(student, [r for r in results if r.student == student], feedback_dir)
        except (Exception, MemoryError) as err:
            print(f"warning: could not write the feedback of {student}: {type(err).__name__}", file=sys.stderr)
    for r in results:
        if r.executed:
            target = executed_dir / file_name(r.student) / f"{r.notebook}.ipynb"
            try:
                executed_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                if not target.parent.exists():   # a student new to a shared folder is shared alike
                    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    share_like(target.parent, executed_dir, 0o050)
                write_atomically(target, r.executed)
            except (Exception, MemoryError) as err:
                print(f"warning: could not write the executed notebook of {r.student}: {type(err).__name__}",
                      file=sys.stderr)
    if lost:   # after the feedback and the executed notebooks, which may live on another disk
        raise RuntimeError(" ".join(lost))
    return with_totals(rows)


def _rescue(path: Path, text: str) -> str:
    """Keep ``text`` (a gradebook the grader could not write at ``path``) where it can: a file in the temporary
    folder, else the console. Returns the sentence that says where it went."""
    try:
        fd, kept = tempfile.mkstemp(prefix=f"{path.stem[:60]}-", suffix=path.suffix or ".csv")
        with open(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
            f.flush()
        return f"it was saved as {kept} instead: copy it where it belongs (no submission needs grading again)."
    except OSError:
        sys.stdout.write(text)
        sys.stdout.flush()
        return "the temporary folder refused it too, so it was printed above: keep that output."


def print_totals(rows: list[dict], out: str | Path) -> None:
    """Each student's total on the console (names as :func:`display_name` made them), and where the gradebook is."""
    totals = [r for r in rows if r["exercise"] == "TOTAL"]
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"   # ASCII under LC_ALL=C PYTHONUTF8=0: names escaped
    for r in totals:
        line = f"{r['student']:<24} {r['points']:>4} / {r['max_points']}"
        print(line.encode(encoding, "backslashreplace").decode(encoding))
    print(f"wrote {out} ({len(totals)} students)".encode(encoding, "backslashreplace").decode(encoding))
