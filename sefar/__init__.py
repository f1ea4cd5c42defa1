"""The ``sefar`` console command: argument parsing only; every subcommand calls into a package."""
