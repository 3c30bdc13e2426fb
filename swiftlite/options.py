"""Flag declarations that accept ms-swift's spellings.

Every flag is declared with both the underscore spelling ms-swift uses (`--model_type`) and the dash
spelling (`--model-type`). Boolean flags are declared as `--flag/--no_flag` pairs; `normalise_argv` below
rewrites ms-swift's `--flag true|false` into those, and `--dataset a.json b.json` (ms-swift's nargs='+')
into repeated options, before click parses the command line.
"""

from __future__ import annotations

import typer

try:  # typer >= 0.20 vendors click as typer._click; older typer uses the click package
    from typer._click import core as click_core
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    import click as click_core
    from click import exceptions as click_errors

TRUE_WORDS = {"true", "1", "yes", "y", "on"}
FALSE_WORDS = {"false", "0", "no", "n", "off"}


def opt(name: str, help: str, *aliases: str, **kwargs):
    """An option named `--name` and `--name-with-dashes` (plus aliases), documented in --help."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    names += list(aliases)
    return typer.Option(*names, help=help, **kwargs)


def flag(name: str, help: str, **kwargs):
    """A boolean option: `--name`, `--name true|false`, `--no_name`, in both spellings."""
    names = [f"--{name}/--no_{name}"]
    if "_" in name:
        dashed = name.replace("_", "-")
        names.append(f"--{dashed}/--no-{dashed}")
    return typer.Option(*names, help=help + " [accepts --flag, --flag true|false]", **kwargs)


def normalise_argv(argv: list[str], command) -> list[str]:
    """Rewrite ms-swift style arguments for click. `command` is the click command being invoked."""

    boolean_names: dict[str, tuple[str, str]] = {}
    multiple_names: set[str] = set()
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option":
            continue
        if param.is_flag and param.secondary_opts:
            for on, off in zip(param.opts, param.secondary_opts):
                boolean_names[on] = (on, off)
        if param.multiple:
            multiple_names.update(param.opts)

    result: list[str] = []
    index = 0
    while index < len(argv):
        argument = argv[index]
        name, _, inline_value = argument.partition("=")
        if name in boolean_names:
            on, off = boolean_names[name]
            value = inline_value if inline_value else None
            if value is None and index + 1 < len(argv) and argv[index + 1].lower() in TRUE_WORDS | FALSE_WORDS:
                value = argv[index + 1]
                index += 1
            if value is None or value.lower() in TRUE_WORDS:
                result.append(on)
            elif value.lower() in FALSE_WORDS:
                result.append(off)
            else:
                raise click_errors.BadParameter(f"expected true or false, got {value!r}", param_hint=name)
        elif name in multiple_names and not inline_value:
            values = []
            while index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                values.append(argv[index + 1])
                index += 1
            if not values:
                result.append(argument)  # click reports the missing value
            for value in values:
                result += [name, value]
        else:
            result.append(argument)
        index += 1
    return result
