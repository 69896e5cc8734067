"""paystream core: money, domain types, settings, codec and errors shared by every component."""

__version__ = "0.1.0"


def _quiet_authlib() -> None:
    """confluent-kafka's schema-registry client imports authlib, which forces its
    deprecation warnings to "always" and then warns about its own httpx module on
    import, in every process. Nothing we can act on; keep it out of operators' logs."""
    import warnings

    try:
        import authlib.deprecate  # noqa: F401  (installs authlib's filter first)
    except ImportError:
        return
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")


_quiet_authlib()
