"""Backbones turn inputs into features. Each declares its `modality` for the config checks."""
