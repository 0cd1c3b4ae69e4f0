"""User-facing errors: anything a user can cause ends as one clear line and exit code 2."""


class UserError(Exception):
    """A problem with the user's input (path, image, name, config). The CLI prints it on one line."""

    exit_code = 2


MAX_LISTED = 100  # more choices than this (timm's 1,300 models): only the closest are named


def nearest(name: str, choices, what: str) -> UserError:
    """An 'unknown NAME' error that suggests the closest valid choice (and lists the choices, or the closest few of
    a long list)."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=8 if len(choices) > MAX_LISTED else 1, cutoff=0.4)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    if len(choices) > MAX_LISTED:
        return UserError(f"unknown {what} '{name}'{hint} (closest of {len(choices)}: {', '.join(close) or 'none'})")
    return UserError(f"unknown {what} '{name}'{hint} (choose from: {', '.join(choices)})")
