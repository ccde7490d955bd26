"""`python -m services …` is `intentflow …`."""

from services.entry import main

main()
