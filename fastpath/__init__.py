"""fastpath: kernel-bypass packet processing driven from Python."""

__version__ = "0.1.0"
