"""Coverage-guided fuzzing (atheris) of every parser of outside input; see docs/reliability.md."""
