"""``python -m p2pnode``: the command line."""

from p2pnode.cli import main

if __name__ == "__main__":
    main()
