"""Recipe -> torch objects: ``components`` asks the registries for model, loss, optimizer and schedule."""
