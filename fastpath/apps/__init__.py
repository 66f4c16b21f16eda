"""The XDP applications, one package each. They declare their program spec, chain slot and
commands to the runtime (`fastpath.bpf`), which never imports them."""
