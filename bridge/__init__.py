"""Q-Former bridge from the frozen SeFAR encoder to an LLM."""
