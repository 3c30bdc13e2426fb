"""The `mm` command. Maps subcommands to the functions of their modules and imports nothing heavy.

`mm sft|infer|export|deploy|list`; each subcommand's flags are the typed parameters of its function.
Errors in what the user typed (a flag, a path, a dataset row) print one line and exit non-zero.
"""

from __future__ import annotations

import errno
import sys

import typer

from swiftlite import deploy, export, infer, listing, sft
from swiftlite.errors import Terminated, unwind_on_sigterm

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
    _unwind_on_sigterm(argv[:1])
    try:
        if argv and argv[0] in getattr(command, "commands", {}):
            prog = f"mm {argv[0]}"
            argv = [argv[0]] + normalise_argv(argv[1:], command.commands[argv[0]])
        # Not standalone, click hands back what `typer.Exit(code)` carried (the torchrun relaunch's failure,
        # for one) as this return value: it is the exit code, so that `mm sft ... && mm export ...` stops.
        code = command.main(argv, prog_name="mm", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as error:
        print(error.ctx.get_help())
        return 0
    except click_errors.UsageError as error:
        hint = f" (see `{prog} --help`)"
        print(f"{prog}: error: {error.format_message()}{hint}", file=sys.stderr)
        return 2
    except click_core.Exit as error:
        return error.exit_code
    except (click_core.Abort, KeyboardInterrupt):
        # click turns Ctrl-C (KeyboardInterrupt, and an EOFError) into Abort. 130 = 128 + SIGINT, as shells do.
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return 143  # 128 + SIGTERM
    except Exception as error:
        from swiftlite.errors import disk_full, user_error_types

        if isinstance(error, user_error_types()):
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 1
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):  # a write of its own
            import os

            where = os.path.dirname(os.path.abspath(error.filename)) if error.filename else os.getcwd()
            print(f"{prog}: error: {disk_full(error, where, 'the command stopped')}", file=sys.stderr)
            return 1
        raise
    if code == 130:  # typer's form of Ctrl-C (KeyboardInterrupt becomes Exit(130)), or a relaunch interrupted
        print(f"{prog}: interrupted", file=sys.stderr)
    return code if isinstance(code, int) else 0


def _unwind_on_sigterm(command: list[str]) -> None:
    """SIGTERM's default action ends the process on the spot: no `finally`, no atexit, so dataloader workers
    were left running and temp files behind. Turn it into an exception instead (not for `mm deploy`, whose
    server handles SIGTERM itself with a graceful shutdown)."""
    import threading

    if command != ["deploy"] and threading.current_thread() is threading.main_thread():
        unwind_on_sigterm()


def entry() -> None:
    code = main()
    # The process ends here: skip the garbage collector's pass over every object of torch and transformers
    # at interpreter shutdown (seconds after a training or inference run). atexit handlers still run.
    import gc

    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
