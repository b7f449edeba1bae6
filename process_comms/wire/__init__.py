"""What travels, and nothing that moves it: message bodies, the codecs, object loaders, reply envelopes, and the
protocol's data with types (``types``: a pid, status, record, summary, worker info; ``states``: the state names;
``names``: the names both sides spell alike, such as broadcast subjects and task queue names).

No module here does I/O; :mod:`process_comms.transports` carries what these build.
"""
