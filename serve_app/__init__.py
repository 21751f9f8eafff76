"""accuwatt: text classification on Ray Serve, with the energy of every request."""

__version__ = "0.1.0"
