"""The training loop shared by every mode, its persisted state, and the LR schedule."""
