"""GPU and model profiles: data files, loaders, HF config reading and local GPU detection."""
