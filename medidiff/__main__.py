"""``python -m medidiff`` runs the command line."""

from medidiff.cli import main

if __name__ == "__main__":
    main()
