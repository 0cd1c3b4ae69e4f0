"""The `cnnlab` command: one module per command group (`data_cmds`, `run_cmds`, `model_cmds`, `study_cmds`,
`optim_cmds`), each a thin layer that parses and calls the Python API; `main` is the group and `entry` the console
script. Heavy imports happen inside commands, so `cnnlab --help` stays fast."""

from cnnlab.cli.main import entry, main

__all__ = ["entry", "main"]
