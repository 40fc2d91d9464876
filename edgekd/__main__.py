"""`python -m edgekd ...` (also what `torchrun -m edgekd` runs)."""

from edgekd.cli import main

if __name__ == "__main__":
    main()
