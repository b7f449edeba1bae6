"""Benchmarks of process_comms against plumpy 0.26 + kiwipy 0.9 on RabbitMQ (see ``benchmarks/run.py``)."""
