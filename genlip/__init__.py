"""GenLIP-Train: generative language-image pre-training of vision encoders at scale."""

__version__ = "0.1.0"
