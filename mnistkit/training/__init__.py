"""Training: the one loop (``loop``), checkpoints (``checkpoint``) and the device set-up."""
