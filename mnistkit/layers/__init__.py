"""Model layers: torch-free shape arithmetic (``shapes``) and the torch modules (``modules``)."""
