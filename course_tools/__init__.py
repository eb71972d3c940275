"""The instructor's tools: the `course` command, the student-notebook generator, the asset registry
and the grader. They import the library (course_lib); the library never imports them."""
import sys

# nbformat validates notebooks with jsonschema, whose format checkers import rfc3987_syntax when it is installed
# (jupyterlab's dependencies install it); that module builds its IRI grammar's parsers at import, about 1.7 s of
# CPU on the development machine, for the "iri" format no notebook schema uses. Marked missing before nbformat
# loads, jsonschema skips that one checker (jsonschema issue #1428): each grader worker, which imports nbformat
# afresh, starts that much sooner. A process that already imported it keeps it.
sys.modules.setdefault("rfc3987_syntax", None)
