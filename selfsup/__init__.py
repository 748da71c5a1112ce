"""selfsup: self-supervised pretraining of foundation-model backbones."""

__version__ = "0.1.0"
