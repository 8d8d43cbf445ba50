"""`python -m vmctl`: the same as the `vmctl` command."""

from vmctl.cli import main

if __name__ == "__main__":
    main()
