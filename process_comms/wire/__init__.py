"""What travels, and nothing that moves it: message bodies, the codecs, object loaders, reply envelopes.

No module here does I/O; :mod:`process_comms.transports` carries what these build.
"""
