"""Flag declarations that accept ms-swift's spellings.

Every flag is declared with both the underscore spelling ms-swift uses (`--model_type`) and the dash
spelling (`--model-type`). Boolean flags are declared as `--flag/--no_flag` pairs; `normalise_argv` below
rewrites ms-swift's `--flag true|false` into those, and `--dataset a.json b.json` (ms-swift's nargs='+')
into repeated options, before click parses the command line.

ms-swift 3.x/4.x renamed many 2.x flags (`--sft_type` -> `--train_type` -> `--tuner_type`, `--ckpt_dir` ->
`--adapters`, `--dataset_test_ratio` -> `--split_dataset_ratio`, ...). The newer names are declared as aliases
on the same flag line, so `--help` lists both; `normalise_argv` also rewrites the few 3.x/4.x *values* that
differ (VALUE_ALIASES: `--target_modules all-linear`, `--deepspeed zero2`, `--truncation_strategy left`,
`--infer_backend transformers`) and refuses two spellings of one flag given with different values.
docs/flags.md lists every pair.
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


# ms-swift 3.x/4.x values -> the values the 2.x spellings take, by parameter name (compared case-insensitively).
VALUE_ALIASES = {
    # 3.x/4.x `all-linear` on a multimodal model means the language model's linear layers, and --freeze_vit
    # false / --freeze_aligner false widen it: exactly what DEFAULT means here (2.x's ALL also takes the vision
    # tower whatever --freeze_vit says).
    "lora_target_modules": {"all-linear": "DEFAULT"},
    "deepspeed": {"zero2": "default-zero2", "zero3": "default-zero3"},
    "truncation_strategy": {"left": "truncation_left"},
    "infer_backend": {"transformers": "pt"},
}


def _with_dashes(names) -> list[str]:
    """Each `--a_b` followed by `--a-b`, without duplicates, in order."""
    result: list[str] = []
    for name in names:
        for spelling in (name, "--" + name[2:].replace("_", "-")):
            if spelling not in result:
                result.append(spelling)
    return result


def opt(name: str, help: str, *aliases: str, **kwargs):
    """An option named `--name` and `--name-with-dashes` (plus aliases, each with its dashed twin), documented
    in --help."""
    return typer.Option(*_with_dashes([f"--{name}", *aliases]), help=help, **kwargs)


def flag(name: str, help: str, *aliases: str, **kwargs):
    """A boolean option: `--name`, `--name true|false`, `--no_name`, in both spellings (aliases likewise)."""
    names = []
    for spelling in _with_dashes([f"--{name}", *(f"--{alias.lstrip('-')}" for alias in aliases)]):
        bare = spelling[2:]
        names.append(f"{spelling}/--no{'-' if '-' in bare else '_'}{bare}")
    return typer.Option(*names, help=help + " [accepts --flag, --flag true|false]", **kwargs)


def _spelling(option: str) -> str:
    """The spelling an option string belongs to: `--no-use-hf` and `--use_hf` are both `use_hf`."""
    name = option.lstrip("-").replace("-", "_")
    return name[3:] if name.startswith("no_") else name


def normalise_argv(argv: list[str], command) -> list[str]:
    """Rewrite ms-swift style arguments for click. `command` is the click command being invoked.

    `--flag true|false` -> `--flag`/`--no_flag`; `--dataset a b` -> `--dataset a --dataset b`; ms-swift 3.x/4.x
    values -> ours (VALUE_ALIASES). Two spellings of one flag with different values are an error naming both.
    """
    param_of: dict[str, object] = {}
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option":
            for option in list(param.opts) + list(param.secondary_opts):
                param_of[option] = param

    given: dict[str, tuple[str, object]] = {}  # parameter name -> (first option string used, its value)

    def note(param, option: str, value) -> None:
        first = given.setdefault(param.name, (option, value))
        if _spelling(first[0]) != _spelling(option) and first[1] != value:
            raise click_errors.UsageError(
                f"{first[0]} {show(first[1])} and {option} {show(value)} are two spellings of the same flag "
                "(ms-swift 2.x and 3.x/4.x names): give one of them")

    def show(value) -> str:
        return " ".join(value) if isinstance(value, tuple) else str(value)

    def alias_value(param, value: str) -> str:
        return VALUE_ALIASES.get(param.name, {}).get(value.lower(), value)

    result: list[str] = []
    index = 0
    while index < len(argv):
        argument = argv[index]
        name, equals, inline_value = argument.partition("=")
        param = param_of.get(name)
        if param is None:
            result.append(argument)
        elif param.is_flag and param.secondary_opts:
            value = inline_value if equals else None
            if value is None and index + 1 < len(argv) and argv[index + 1].lower() in TRUE_WORDS | FALSE_WORDS:
                value = argv[index + 1]
                index += 1
            if name in param.secondary_opts:  # --no_flag
                on, off = param.opts[param.secondary_opts.index(name)], name
                value = "false" if value is None or value.lower() in TRUE_WORDS else "true"
            else:
                on, off = name, param.secondary_opts[param.opts.index(name)]
            if value is None or value.lower() in TRUE_WORDS:
                result.append(on)
                note(param, name, "true")
            elif value.lower() in FALSE_WORDS:
                result.append(off)
                note(param, name, "false")
            else:
                raise click_errors.BadParameter(f"expected true or false, got {value!r}", param_hint=name)
        elif param.multiple and not equals:
            values = []
            while index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                values.append(alias_value(param, argv[index + 1]))
                index += 1
            if not values:
                result.append(argument)  # click reports the missing value
            for value in values:
                result += [name, value]
            note(param, name, tuple(values))
        elif param.is_flag:
            result.append(argument)
        else:
            if equals:
                value = inline_value
            elif index + 1 < len(argv) and argv[index + 1].partition("=")[0] not in param_of:
                value = argv[index + 1]
                index += 1
            else:
                result.append(argument)  # click reports the missing value
                index += 1
                continue
            value = alias_value(param, value)
            result += [name, value]
            note(param, name, (value,) if param.multiple else value)
        index += 1
    return result


def python_keywords(function, flags: dict) -> dict:
    """Keyword arguments for `function` (a command) given with any flag spelling as Python names.

    `sft_main(train_type="lora", target_modules=["all-linear"])` -> {"sft_type": "lora", "lora_target_modules":
    ["DEFAULT"]}: aliases map to the parameter they belong to and ms-swift 3.x/4.x values are translated, as on
    the command line; two spellings of one parameter with different values are a TypeError naming both.
    """
    import typing

    owner: dict[str, str] = {}
    for name, hint in typing.get_type_hints(function, include_extras=True).items():
        for info in typing.get_args(hint)[1:]:
            declared = [getattr(info, "default", None), *(getattr(info, "param_decls", None) or ())]
            for declaration in declared:
                if isinstance(declaration, str) and declaration.startswith("--"):
                    owner.setdefault(declaration.split("/")[0][2:].replace("-", "_"), name)
    result: dict = {}
    spelled: dict[str, str] = {}
    for keyword, value in flags.items():
        name = owner.get(keyword, keyword)
        values = VALUE_ALIASES.get(name, {})
        if isinstance(value, str):
            value = values.get(value.lower(), value)
        elif isinstance(value, (list, tuple)):
            value = [values.get(item.lower(), item) if isinstance(item, str) else item for item in value]
        if name in result and result[name] != value:
            raise TypeError(f"{spelled[name]}={result[name]!r} and {keyword}={value!r} are two spellings of the same "
                            "flag: give one of them")
        result[name], spelled[name] = value, keyword
    return result


def flag_groups(cls, values: dict, command: str):
    """A command's flags as `cls`, a frozen dataclass of frozen dataclass groups (training/flags.py,
    server/flags.py), from the flat mapping of the command's parameters: each flag in exactly one group."""
    import dataclasses
    import typing

    groups = typing.get_type_hints(cls)  # {"model": ModelFlags, ...}
    names = [field.name for group in groups.values() for field in dataclasses.fields(group)]
    if set(names) != set(values):
        raise TypeError(f"{cls.__name__}: expected the flags of {command}; missing "
                        f"{sorted(set(names) - set(values))}, unknown {sorted(set(values) - set(names))}")
    return cls(**{name: group(**{field.name: values[field.name] for field in dataclasses.fields(group)})
                  for name, group in groups.items()})
