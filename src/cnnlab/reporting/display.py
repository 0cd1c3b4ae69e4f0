"""What Jupyter shows inline: a report (`Report`, its HTML) and a figure file (`Image`, a PNG or an animated GIF)."""

from __future__ import annotations

from pathlib import Path


class Report:
    """A study's report.html, shown inline by Jupyter; `path` is the file, `markdown` the report.md text."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def markdown(self) -> str:
        return self.path.with_suffix(".md").read_text(encoding="utf-8")

    def _repr_html_(self) -> str:
        page = self.path.read_text(encoding="utf-8")  # the body only: the page's own style would restyle Jupyter
        return page[page.index("<body>") + len("<body>") : page.rindex("</body>")]

    def __repr__(self) -> str:
        return f"Report({str(self.path)!r})"


class Image:
    """A PNG or GIF file that Jupyter shows inline."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _repr_png_(self):
        return self.path.read_bytes() if self.path.suffix.lower() == ".png" else None

    def _repr_html_(self) -> str | None:  # an animated GIF (a PNG is shown by _repr_png_, and stored once)
        import base64

        if self.path.suffix.lower() != ".gif":
            return None
        return (
            f"<img src='data:image/gif;base64,{base64.b64encode(self.path.read_bytes()).decode()}' "
            f"alt='{self.path.name}'>"
        )

    def __repr__(self) -> str:
        return f"Image({str(self.path)!r})"
