"""Checks of correctness: every block against PyTorch (verify), whole images against
diffusers (reference)."""
