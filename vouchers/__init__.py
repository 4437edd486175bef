"""The voucher ledger and state store shared by gateway, scheduler and workers.

This package imports none of the services. Use `open_store(url, clock)` to get a `Store`.
"""
