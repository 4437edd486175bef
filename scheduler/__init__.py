"""The Ray-based GPU job scheduler (a later issue): admission by compute vouchers, fair share, metering."""
