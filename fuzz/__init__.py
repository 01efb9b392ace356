"""Fuzzing harnesses (issue 9); see README.md.  A package so that tests can replay the corpus through them."""
