"""The one place Kelpie's version lives: the agent's --version and the API's OpenAPI info."""

__version__ = "0.1.0"
