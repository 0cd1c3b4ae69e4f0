"""`python -m cnnlab`: the `cnnlab` command (also how `torchrun -m cnnlab` starts it)."""

from cnnlab.cli.main import entry

if __name__ == "__main__":
    entry()
