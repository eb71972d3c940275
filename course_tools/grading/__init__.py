"""Batch grading of student notebooks: each submission in its own kernel, hidden tests run
against the student's own definitions on inputs chosen per run, results compared in the grader."""
