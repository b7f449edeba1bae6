"""Profiles: named sets of global options in ``$XDG_CONFIG_HOME/process-comms/config.toml``.

A profile names a broker (one URL or a cluster's several), the exchange and queue names (a ``prefix``, or each
name), the timeout and the store. It is chosen with ``--profile P`` or ``PROCESS_COMMS_PROFILE``; an option on
the command line beats the profile, and the profile beats ``PROCESS_COMMS_BROKER`` and the defaults::

    [profiles.aiida]
    broker = ["amqp://aiida:secret@rmq1:5672/aiida", "amqp://aiida:secret@rmq2:5672/aiida"]
    prefix = "aiida-6f1c2d"            # aiida-6f1c2d.messages, aiida-6f1c2d.tasks, aiida-6f1c2d.process.queue
    timeout = 60
    store = "postgresql://aiida@db/aiida"   # what the commands read; the worker's --persister by default
    task_queue_type = "quorum"              # the worker's --task-queue-type by default

The naming convention (:func:`prefix_names`) is the one the examples and AiiDA use.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import defaults
from ..transports.rmq._topology import QUEUE_TYPES
from .base import DEFAULT_TIMEOUT, EXIT_USAGE, CliError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the same parser, from PyPI (setup.cfg)
    import tomli as tomllib

__all__ = ["ENV_PROFILE", "NAME_OPTIONS", "Profile", "apply_profile", "config_path", "load_profile", "prefix_names"]

ENV_PROFILE = "PROCESS_COMMS_PROFILE"
#: The options that name the broker objects, as ``connect()`` calls them.
NAME_OPTIONS = ("message_exchange", "task_exchange", "task_queue")
_KEYS = ("broker", "prefix", *NAME_OPTIONS, "timeout", "store", "task_queue_type")


def prefix_names(prefix: str) -> dict[str, str]:
    """``<prefix>.messages``, ``<prefix>.tasks`` and ``<prefix>.process.queue``, as ``connect()`` options."""
    return {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.process.queue",
    }


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/process-comms/config.toml`` (``~/.config/...`` when the variable is unset or empty)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "process-comms" / "config.toml"


@dataclass(frozen=True)
class Profile:
    """One profile of the config file; ``None`` where it says nothing."""

    name: str
    broker: str | None = None
    names: Mapping[str, str] | None = None
    timeout: float | None = None
    store: str | None = None
    task_queue_type: str | None = None


def _usage(message: str) -> CliError:
    return CliError(message, EXIT_USAGE)


def _text(value: object, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _usage(f"{key} in {where} must be a non-empty string")
    return value.strip()


def _parse(name: str, table: object, where: str) -> Profile:
    if not isinstance(table, dict):
        raise _usage(f"{where} must be a table ([profiles.{name}])")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise _usage(f"unknown key {unknown[0]!r} in {where} (known: {', '.join(_KEYS)})")
    broker = table.get("broker")
    if isinstance(broker, list):
        broker = ",".join(_text(one, "every broker", where) for one in broker) if broker else None
        if broker is None:
            raise _usage(f"broker in {where} is an empty list")
    elif broker is not None:
        broker = _text(broker, "broker", where)
    names: dict[str, str] = {}
    if "prefix" in table:
        names.update(prefix_names(_text(table["prefix"], "prefix", where)))
    names.update({key: _text(table[key], key, where) for key in NAME_OPTIONS if key in table})  # beat the prefix
    timeout = table.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise _usage(f"timeout in {where} must be a number greater than 0, not {timeout!r}")
        timeout = float(timeout)
    store = table.get("store")
    queue_type = table.get("task_queue_type")
    if queue_type is not None and queue_type not in QUEUE_TYPES:
        raise _usage(f"task_queue_type in {where} must be one of {', '.join(QUEUE_TYPES)}, not {queue_type!r}")
    store = None if store is None else _text(store, "store", where)
    return Profile(name, broker, names or None, timeout, store, queue_type)


def load_profile(name: str, path: Path | None = None) -> Profile:
    """The profile ``name`` of the config file; a missing file or profile, or a bad value, is a usage error."""
    path = config_path() if path is None else path
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise _usage(f"no profile {name!r}: there is no config file {path}") from None
    except OSError as exc:
        raise _usage(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise _usage(f"the config file {path} is not valid TOML: {exc}") from None
    profiles = document.get("profiles", {})
    if not isinstance(profiles, dict):
        raise _usage(f"'profiles' in {path} must be a table of profiles ([profiles.NAME])")
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise _usage(f"no profile {name!r} in {path} (profiles: {known})")
    return _parse(name, profiles[name], f"profile {name!r} of {path}")


def apply_profile(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Profile | None:
    """Fill the global options of ``args`` in place: the command line, then ``--prefix``, the profile, the defaults.

    ``args`` is what :func:`.main.build_parser` parsed: every global option, ``store`` and ``task_queue_type``
    are attributes of it (None when not given; :func:`.base.add_command`).

    Afterwards ``args.message_exchange``, ``args.task_exchange`` and ``args.timeout`` are set, ``args.task_queue``
    is a name or None (the task exchange's name, as kiwipy does), ``args.broker`` a URL or None (then
    ``PROCESS_COMMS_BROKER``), ``args.store`` a URL or None. Returns the profile used, if any.
    """
    env = os.environ if env is None else env
    name = args.profile or env.get(ENV_PROFILE) or None
    profile = load_profile(name, config_path(env)) if name else None
    names: dict[str, str] = dict(profile.names or {}) if profile else {}
    if args.prefix:
        names = prefix_names(args.prefix)  # the command line's convention replaces the profile's names
    fallback = {"message_exchange": defaults.MESSAGE_EXCHANGE, "task_exchange": defaults.TASK_EXCHANGE}
    for key in NAME_OPTIONS:
        if getattr(args, key) is None:
            setattr(args, key, names.get(key, fallback.get(key)))
    if args.broker is None and profile is not None:
        args.broker = profile.broker
    if args.timeout is None:
        args.timeout = profile.timeout if profile and profile.timeout else DEFAULT_TIMEOUT
    if args.store is None:
        args.store = profile.store if profile else None
    if args.task_queue_type is None:  # the worker's option; the profile's for any command
        args.task_queue_type = profile.task_queue_type if profile else None
    return profile
