"""io_uring data plane: ctypes bindings (structs, liburing, ring, bufring), probes (rawring,
probe), the Python echo server (echo_core, echo, echo_serve), the native binary's supervisor
(native) and `fastpath uring` (cli)."""
