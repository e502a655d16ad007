"""Run directories: the files a run leaves (``directory``) and runs as a list / side by side (``listing``)."""
