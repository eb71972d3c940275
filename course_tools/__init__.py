"""The instructor's tools: the `course` command, the student-notebook generator, the asset registry
and the grader. They import the library (course_lib); the library never imports them."""
