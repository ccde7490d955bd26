"""`python -m services …` is `intentflow …`."""

from services.cli import main

main()
