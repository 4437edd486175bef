"""The voucher ledger and state store shared by gateway, scheduler and workers.

This package imports none of the services. `vouchers.factory.open_stores(url, ...)` opens a `Stores`
bundle: one small protocol per concept (`ledger`, `journal`, `directory`, `catalog`, `rates`, `answers`,
`registry`, `events`), each with a SQLite and a Redis implementation. Settings: `vouchers.settings`.
"""
