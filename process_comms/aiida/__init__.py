"""aiida-core's broker plugin on process_comms (``pip install process_comms[aiida]``).

The entry point ``process_comms.rabbitmq`` in aiida-core's ``aiida.brokers`` group (setup.cfg) names
:class:`~process_comms.aiida.broker.ProcessCommsBroker`; a profile whose ``process_control.backend`` is that
name runs its daemon and ``verdi`` on process_comms (docs/migrating.md, "AiiDA"). Nothing else in the package
imports this subpackage, so the core never needs aiida-core.
"""
