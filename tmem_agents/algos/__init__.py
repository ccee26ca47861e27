"""PPO with a constant-size recurrent state."""
