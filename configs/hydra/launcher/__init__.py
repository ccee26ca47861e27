"""Hydra launcher configs (SLURM through hydra-submitit-launcher)."""
