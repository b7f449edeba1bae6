"""The benchmark workloads, by what they measure (letters a-h, codec, facade, wakeup)."""
