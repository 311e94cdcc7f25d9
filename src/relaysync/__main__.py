"""python -m relaysync runs the CLI."""

from relaysync.cli import main

if __name__ == "__main__":
    main()
