"""Hydra configuration files shipped with tmem-agents."""
