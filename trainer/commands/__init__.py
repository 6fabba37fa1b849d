"""One module per `python -m trainer <command>`."""
