"""``python -m gpt2reg`` runs the CLI (torchrun needs a module to run)."""

from gpt2reg.cli import main

if __name__ == "__main__":
    main()
