"""What travels, and nothing that moves it: message bodies, the codecs, object loaders, reply envelopes, and the
protocol's vocabulary (``types``: the state names, the names both sides spell alike such as broadcast subjects
and task queue names, and the data with types: a pid, status, record, summary, worker info; ``names`` and
``states`` keep their old import paths).

No module here does I/O; :mod:`process_comms.transports` carries what these build.
"""
