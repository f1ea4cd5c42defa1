"""Video reading, dual-level temporal sampling, dataset indexes and the SynGym synthetic set."""
