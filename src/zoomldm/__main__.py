"""``python -m zoomldm`` = the ``zoomldm`` command."""

from .cli import main

main()
