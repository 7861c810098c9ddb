"""Errors a user can act on: each names the file, the row and the fix."""


class DataError(ValueError):
    """Bad input data. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[str] | str, *, limit: int = 20):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        shown = self.problems[:limit]
        more = len(self.problems) - len(shown)
        text = "\n  - ".join(shown)
        if more:
            text += f"\n  ... and {more} more"
        super().__init__(f"{len(self.problems)} problem(s) in the input data:\n  - {text}")


class StudyFailed(RuntimeError):
    """A trial of a study failed for good (its retries spent): the study stops rather than go on
    with part of its folds. The message names the trial, its MLflow run, its error and the fix."""
