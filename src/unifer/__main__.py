"""``python -m unifer`` runs the command-line interface."""

from unifer.cli import main

if __name__ == "__main__":  # importing this module (docs tools, test collectors) runs nothing
    main()
