"""User-facing errors: anything a user can cause ends as one clear line and exit code 2."""


class UserError(Exception):
    """A problem with the user's input (path, image, name, config). The CLI prints it on one line."""

    exit_code = 2


def nearest(name: str, choices, what: str) -> UserError:
    """An 'unknown NAME' error that suggests the closest valid choice."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.4)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown {what} '{name}'{hint} (choose from: {', '.join(choices)})")
