"""The `cnnlab` group (`main`), which turns every UserError into one line and exit code 2, the registration of every
command, and the console script (`entry`), which ends the process with `os._exit` once a command has returned."""

from __future__ import annotations

import os
import sys
import warnings

import click

from cnnlab.errors import UserError

_show_warning = warnings.showwarning


def _say(line: str) -> None:
    """One line to stderr, from rank 0 only when torchrun started several ranks (they would all say it)."""
    if os.environ.get("RANK", "0") == "0":
        click.echo(line, err=True)


def _echo_warning(message, category, filename, lineno, file=None, line=None):
    if "cnnlab" in str(filename):
        _say(f"warning: {message}")
    else:
        _show_warning(message, category, filename, lineno, file, line)


class _Group(click.Group):
    """A click group that turns UserError (and a few OS errors) into one line and exit code 2."""

    def invoke(self, ctx):
        try:
            with warnings.catch_warnings():
                # Library warnings (skipped files, a reused test split) become one stderr line each.
                warnings.simplefilter("always", UserWarning)
                warnings.showwarning = _echo_warning
                return super().invoke(ctx)
        except UserError as e:
            _say(f"error: {e}")
            sys.exit(e.exit_code)
        except click.UsageError as e:  # a bad option value or a missing argument: one line, like any user error
            _say(f"error: {e.format_message()}" + (f" (see: {e.ctx.command_path} --help)" if e.ctx else ""))
            sys.exit(2)
        except KeyboardInterrupt:
            _say("interrupted")
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cnnlab")
def main():
    """cnnlab: train CNN image classifiers from scratch on folder-per-class data.

    \b
    Example, end to end on the built-in synthetic eclipse set:
      cnnlab data synth-eclipse /tmp/ecl
      cnnlab data inspect /tmp/ecl --out /tmp/ecl-look
      cnnlab train --data /tmp/ecl --model simple-bn-dropout --epochs 10 --out runs/r1
      cnnlab test runs/r1 --data /tmp/ecl
    """


def _register():
    """Every command and group, from the module of its group."""
    from cnnlab.cli.data_cmds import data
    from cnnlab.cli.model_cmds import explain_cmd, export_cmd, serve_cmd
    from cnnlab.cli.optim_cmds import optim
    from cnnlab.cli.run_cmds import predict, test_cmd, train
    from cnnlab.cli.search_cmds import lr_find_cmd, tune
    from cnnlab.cli.study_cmds import cv, study

    commands = (data, train, test_cmd, predict, explain_cmd, export_cmd, serve_cmd, lr_find_cmd, study, tune, cv, optim)
    for command in commands:
        main.add_command(command)


_register()


def entry():
    """The `cnnlab` console script: `main`, then an immediate exit. Unloading torch at interpreter exit takes about
    a second and nothing of cnnlab needs it: every file is written and closed, every worker stopped, by the time
    a command returns. An unexpected exception still unwinds normally, with its traceback."""
    import os

    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
