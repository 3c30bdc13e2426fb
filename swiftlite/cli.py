"""The `mm` command. Maps subcommands to the functions of their modules and imports nothing heavy.

`mm sft|infer|export|deploy|list`; each subcommand's flags are the typed parameters of its function.
Errors in what the user typed (a flag, a path, a dataset row) print one line and exit non-zero.
"""

from __future__ import annotations

import sys

import typer

from swiftlite import deploy, export, infer, listing, sft

app = typer.Typer(
    name="mm",
    help="swiftlite: fine-tune, merge, chat with and serve multimodal LLMs (ms-swift compatible flags).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
app.command("sft", help=sft.__doc__.split("\n\n")[0])(sft.sft)
app.command("infer", help=infer.__doc__.split("\n\n")[0])(infer.infer)
app.command("export", help=export.__doc__.split("\n\n")[0])(export.export)
app.command("deploy", help=deploy.__doc__.split("\n\n")[0])(deploy.deploy)
app.command("list", help=listing.__doc__.split("\n\n")[0])(listing.list_command)


def main(argv: list[str] | None = None) -> int:
    from swiftlite.cpu_defaults import apply_cpu_defaults
    from swiftlite.options import click_core, click_errors, normalise_argv

    apply_cpu_defaults()  # before any subcommand imports torch: its OpenMP runtime reads the policy once

    argv = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    prog = "mm"
    try:
        if argv and argv[0] in getattr(command, "commands", {}):
            prog = f"mm {argv[0]}"
            argv = [argv[0]] + normalise_argv(argv[1:], command.commands[argv[0]])
        command.main(argv, prog_name="mm", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as error:
        print(error.ctx.get_help())
        return 0
    except click_errors.UsageError as error:
        hint = f" (see `{prog} --help`)"
        print(f"{prog}: error: {error.format_message()}{hint}", file=sys.stderr)
        return 2
    except click_core.Exit as error:
        return error.exit_code
    except click_core.Abort:
        print(f"{prog}: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        from swiftlite.errors import user_error_types

        if isinstance(error, user_error_types()):
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 1
        raise
    return 0


def entry() -> None:
    code = main()
    # The process ends here: skip the garbage collector's pass over every object of torch and transformers
    # at interpreter shutdown (seconds after a training or inference run). atexit handlers still run.
    import gc

    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
