"""``python -m simnet``: see :mod:`simnet.cli`."""

from simnet.cli import main

if __name__ == "__main__":
    main()
