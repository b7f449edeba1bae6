"""What travels, and nothing that moves it: ``messages`` (what a message is and how it is read: message bodies,
object loaders, our launch options, the task envelope and the reply, our AMQP header extensions, a record's
status), ``codec`` (the codecs, with the flow-YAML fast path) and ``types`` (the protocol's vocabulary: the state
names, the names both sides spell alike such as broadcast subjects and task queue names, and the data with types:
a pid, status, record, summary, worker info); ``listing`` holds the listing rules. ``names``, ``states``,
``launch_options``, ``loaders``, ``extensions`` and ``status`` keep their old import paths.

No module here does I/O; :mod:`process_comms.transports` carries what these build.
"""
