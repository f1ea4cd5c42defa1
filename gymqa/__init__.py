"""Gym-QA: build the multiple-choice benchmark from FineGym annotations and score answers (no torch)."""
