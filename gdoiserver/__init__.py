"""gdoiserver: a multi-DOI ISAKMP key server (GDOI GCKS and group member)."""

__version__ = "0.1.0"
