"""io_uring data plane: ctypes bindings (liburing.py), the Python echo server (echo.py),
the native binary's supervisor (native.py) and `fastpath uring` (cli.py)."""
