"""albef-lab: ALBEF (Align before Fuse) vision-language pre-training, faithful and fast."""

__version__ = "0.1.0"
