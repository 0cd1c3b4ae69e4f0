"""`python -m cnnlab.cli`: the `cnnlab` command."""

from cnnlab.cli.main import entry

if __name__ == "__main__":
    entry()
