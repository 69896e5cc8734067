"""paystream core: money, domain types, settings, codec and errors shared by every component."""

__version__ = "0.1.0"
