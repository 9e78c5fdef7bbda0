"""Memory terms (one small function each) and their assembly into the phases of a training step."""
