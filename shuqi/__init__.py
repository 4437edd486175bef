"""The `shuqi` command line: the composition root that wires vouchers, gateway, scheduler and workers."""
