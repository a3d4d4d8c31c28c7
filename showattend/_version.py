"""The package version (one source: the package, pyproject.toml and the User-Agent of URL fetches read it)."""
__version__ = "0.1.0"
