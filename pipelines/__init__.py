"""Drivers that span stages (SynGym -> encoder -> Gym-QA -> bridge): the quickstart and the encoder comparison."""
