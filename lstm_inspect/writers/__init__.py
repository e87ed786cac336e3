"""Output files: atomic replacement (`atomic`) and the streaming `.npz` writer (`npz`)."""
