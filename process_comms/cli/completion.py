"""``process-comms completion bash|zsh|fish``: print a shell completion script, generated from the parser.

Install: ``source <(process-comms completion bash)`` in ``~/.bashrc`` (zsh: the same after ``compinit``;
fish: ``process-comms completion fish | source`` in ``config.fish``). Commands, options and their choices are
completed; PIDs are completed from ``process-comms list`` (bounded by 2 s), with the ``--profile``,
``--prefix`` and names typed so far.

Generated here from the argparse parser (:class:`.base.Parser` keeps its arguments), not by a library: the CLI is
on argparse, not click, so click's completion does not apply; shtab writes static bash and zsh scripts but has no
fish (https://github.com/tqdm/shtab/issues/134, open); argcomplete covers bash, zsh and fish but runs the
command itself on every Tab (a Python start and the CLI's imports per key press) through its own shell function,
where these scripts answer commands, options and choices without starting Python (tests/cli/test_profiles.py
runs them in bash, zsh and fish).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._output import PROG
from .base import EXIT_OK, CliError, Parser, add_command

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["SHELLS", "register", "run", "script"]

SHELLS = ("bash", "zsh", "fish")
#: Global options passed on to ``list`` when completing a PID (their values have no ':' that shells split at).
_PASSED = ("--profile", "--prefix", "--message-exchange", "--task-exchange", "--task-queue")
_PID_LIST = "list --limit 200 --timeout 2"


@dataclass
class _Option:
    flags: list[str]
    help: str
    takes_value: bool
    choices: list[str]


@dataclass
class _Command:
    name: str
    help: str
    options: list[_Option] = field(default_factory=list)
    pids: bool = False
    choices: list[str] = field(default_factory=list)  # of its positional argument, if it has choices


def register(subparsers: SubParsers) -> None:
    """Add ``completion``."""
    p = add_command(subparsers, "completion", "print a shell completion script (bash, zsh or fish)")
    p.add_argument("shell", choices=SHELLS, help="the shell")
    p.set_defaults(run=run, needs_broker=False)


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every argument of one of our parsers (:class:`.base.Parser` keeps the list)."""
    if not isinstance(parser, Parser):
        raise TypeError(f"completion describes a {PROG} parser (base.Parser), not {type(parser).__name__}")
    return parser.arguments


def _options(parser: argparse.ArgumentParser, skip: set[str]) -> list[_Option]:
    options = []
    for action in _arguments(parser):
        flags = [flag for flag in action.option_strings if flag not in skip]
        if flags and action.help is not argparse.SUPPRESS:
            choices = [str(choice) for choice in action.choices or ()]
            help_text = " ".join(str(action.help or "").split()).replace("%%", "%")
            options.append(_Option(flags, help_text, action.nargs != 0, choices))
    return options


def _model(parser: argparse.ArgumentParser) -> tuple[list[_Option], list[_Command]]:
    global_options = _options(parser, set())
    global_flags = {flag for option in global_options for flag in option.flags}
    global_options = [option for option in global_options if option.flags != ["--version"]]  # before a command only
    commands: list[_Command] = []
    for action in _arguments(parser):
        if action.nargs != argparse.PARSER or not isinstance(action.choices, dict):
            continue  # not the subcommands (base.add_subcommands)
        for name, sub in action.choices.items():
            # base.add_command gives each command its help text as its description too
            command = _Command(name, str(sub.description or ""), _options(sub, global_flags))
            for positional in _arguments(sub):
                if not positional.option_strings and positional.dest != "help":
                    command.pids = command.pids or positional.metavar == "PID"
                    command.choices += [str(choice) for choice in positional.choices or ()]
            commands.append(command)
    return global_options, commands


def _words(values: list[str]) -> str:
    return " ".join(values)


def _with_choices(options: list[_Option]) -> list[_Option]:
    """The options whose value is one of a few choices (each flag once)."""
    seen: set[str] = set()
    found = []
    for option in options:
        if option.takes_value and option.choices and option.flags[0] not in seen:
            seen.update(option.flags)
            found.append(option)
    return found


def _free_values(options: list[_Option]) -> list[str]:
    """The flags of the options that take a free value (a URL, a number, a name)."""
    return sorted({flag for option in options if option.takes_value and not option.choices for flag in option.flags})


def _bash(global_options: list[_Option], commands: list[_Command]) -> str:
    every = global_options + [option for command in commands for option in command.options]
    value_flags = sorted({flag for option in every if option.takes_value for flag in option.flags})
    cases = [
        f'        {"|".join(o.flags)}) COMPREPLY=($(compgen -W "{_words(o.choices)}" -- "$cur")); return ;;'
        for o in _with_choices(every)
    ]
    cases.append(f"        {'|'.join(_free_values(every))}) COMPREPLY=(); return ;;  # a value: nothing to offer")
    option_cases = [
        f'        {command.name}) options+=" {_words([f for o in command.options for f in o.flags])}" ;;'
        for command in commands
        if command.options
    ]
    pid_commands = "|".join(command.name for command in commands if command.pids) or "-"
    choice_cases = [
        f'        {command.name}) COMPREPLY=($(compgen -W "{_words(command.choices)}" -- "$cur")) ;;'
        for command in commands
        if command.choices
    ]
    return f"""# bash completion for {PROG}: source <({PROG} completion bash)
_process_comms_pids() {{
    # the pids of `{PROG} {_PID_LIST}`, with the options typed so far that name the broker objects
    command "$@" {_PID_LIST} 2>/dev/null | awk 'NR > 1 {{ print $1 }}'
}}

_process_comms() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local commands="{_words([command.name for command in commands])}"
    local value_options=" {_words(value_flags)} "
    local passed_options=" {_words(list(_PASSED))} "
    local cmd="" word i
    local -a passed=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if [[ $value_options == *" $word "* ]]; then
            [[ $passed_options == *" $word "* ]] && passed+=("$word" "${{COMP_WORDS[i+1]}}")
            i=$((i + 1))
        elif [[ -z $cmd && " $commands " == *" $word "* ]]; then
            cmd=$word
        fi
    done
    case $prev in
{chr(10).join(cases)}
    esac
    if [[ $cur == -* ]]; then
        local options="{_words([f for o in global_options for f in o.flags])}"
        [[ -z $cmd ]] && options+=" --version"
        case $cmd in
{chr(10).join(option_cases)}
        esac
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
    elif [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
    else
        case $cmd in
        {pid_commands})
            COMPREPLY=($(compgen -W "$(_process_comms_pids "${{COMP_WORDS[0]}}" "${{passed[@]}}")" -- "$cur")) ;;
{chr(10).join(choice_cases)}
        esac
    fi
}}
complete -F _process_comms {PROG}
"""


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_described(name: str, text: str) -> str:
    return _zsh_quote(f"{name}:{text.replace(':', chr(92) + ':')}")


def _zsh(global_options: list[_Option], commands: list[_Command]) -> str:
    every = global_options + [option for command in commands for option in command.options]
    value_flags = sorted({flag for option in every if option.takes_value for flag in option.flags})
    cases = [f"        {'|'.join(o.flags)}) compadd -- {_words(o.choices)}; return ;;" for o in _with_choices(every)]
    cases.append(f"        {'|'.join(_free_values(every))}) _message 'a value'; return ;;")

    def described(options: list[_Option]) -> str:
        return " ".join(_zsh_described(flag, option.help) for option in options for flag in option.flags)

    option_cases = [f"        {c.name}) options+=({described(c.options)}) ;;" for c in commands if c.options]
    pid_commands = "|".join(command.name for command in commands if command.pids) or "-"
    choice_cases = [f"        {c.name}) compadd -- {_words(c.choices)} ;;" for c in commands if c.choices]
    return f"""#compdef {PROG}
# zsh completion for {PROG}: source <({PROG} completion zsh), after compinit
_process_comms_pids() {{
    command "$@" {_PID_LIST} 2>/dev/null | awk 'NR > 1 {{ print $1 }}'
}}

_process_comms() {{
    local -a commands=({" ".join(_zsh_described(c.name, c.help) for c in commands)})
    local -a command_names=({_words([command.name for command in commands])})
    local -a value_options=({_words(value_flags)})
    local -a passed_options=({_words(list(_PASSED))})
    local cmd="" word i
    local -a passed=()
    for (( i = 2; i < CURRENT; i++ )); do
        word=${{words[i]}}
        if (( ${{value_options[(Ie)$word]}} )); then
            (( ${{passed_options[(Ie)$word]}} )) && passed+=("$word" "${{words[i+1]}}")
            (( i++ ))
        elif [[ -z $cmd ]] && (( ${{command_names[(Ie)$word]}} )); then
            cmd=$word
        fi
    done
    case ${{words[CURRENT-1]}} in
{chr(10).join(cases)}
    esac
    if [[ ${{words[CURRENT]}} == -* ]]; then
        local -a options=({described(global_options)})
        [[ -z $cmd ]] && options+=('--version:print the version and exit')
        case $cmd in
{chr(10).join(option_cases)}
        esac
        _describe -t options option options
    elif [[ -z $cmd ]]; then
        _describe -t commands command commands
    else
        case $cmd in
        {pid_commands}) compadd -- ${{(f)"$(_process_comms_pids ${{words[1]}} $passed)"}} ;;
{chr(10).join(choice_cases)}
        esac
    fi
}}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _process_comms "$@"
else
    compdef _process_comms {PROG}
fi
"""


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_option(option: _Option, condition: str | None) -> str:
    parts = [f"complete -c {PROG}"]
    if condition:
        parts.append(f"-n {_fish_quote(condition)}")
    for flag in option.flags:
        parts.append(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
    if option.takes_value:
        parts.append("-x" if option.choices else "-r")
    if option.choices:
        parts.append(f"-a {_fish_quote(_words(option.choices))}")
    parts.append(f"-d {_fish_quote(option.help)}")
    return " ".join(parts)


def _fish(global_options: list[_Option], commands: list[_Command]) -> str:
    names = _words([command.name for command in commands])
    lines = [
        f"# fish completion for {PROG}: {PROG} completion fish | source",
        "function __process_comms_pids",
        "    set -l tokens (commandline -opc)",
        "    set -l passed",
        "    for i in (seq 2 (math (count $tokens) - 1))",
        f"        if contains -- $tokens[$i] {_words(list(_PASSED))}",
        "            set -a passed $tokens[$i] $tokens[(math $i + 1)]",
        "        end",
        "    end",
        f"    command $tokens[1] $passed {_PID_LIST} 2>/dev/null | tail -n +2 | string match -r '^\\S+'",
        "end",
        "",
        f"complete -c {PROG} -f",
    ]
    lines += [
        f"complete -c {PROG} -n {_fish_quote(f'not __fish_seen_subcommand_from {names}')} "
        f"-a {command.name} -d {_fish_quote(command.help)}"
        for command in commands
    ]
    lines += [_fish_option(option, None) for option in global_options]
    lines.append(
        f"complete -c {PROG} -n {_fish_quote(f'not __fish_seen_subcommand_from {names}')} -l version "
        "-d 'print the version and exit'"
    )
    for command in commands:
        seen = f"__fish_seen_subcommand_from {command.name}"
        lines += [_fish_option(option, seen) for option in command.options]
        if command.pids:
            lines.append(f"complete -c {PROG} -n {_fish_quote(seen)} -a '(__process_comms_pids)'")
        if command.choices:
            lines.append(f"complete -c {PROG} -n {_fish_quote(seen)} -a {_fish_quote(_words(command.choices))}")
    return "\n".join(lines) + "\n"


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script of ``shell`` for ``parser`` (the ``process-comms`` parser)."""
    global_options, commands = _model(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](global_options, commands)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print the script of the parser that parsed this command line; nothing is sent to the broker."""
    if ctx.parser is None:
        raise CliError("completion needs the command's parser: run it through process-comms")
    ctx.out.write(script(args.shell, ctx.parser))
    ctx.out.flush()
    return EXIT_OK
