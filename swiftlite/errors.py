"""User-facing errors: the CLI prints these as one line and exits non-zero; the server turns them into 4xx."""

from __future__ import annotations

import errno
import os


class UserError(ValueError):
    """A mistake in what the user asked for (a flag, a path, a dataset row). The message says what and where."""


class Terminated(BaseException):
    """SIGTERM arrived (kill, docker stop, a scheduler). Raised in the main thread by the handler the CLI installs,
    so that the run unwinds as on Ctrl-C: dataloader workers are stopped, temp files removed, nothing half saved.
    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""


_HANDLER_PID: list[int] = []  # the process that installed raise_terminated


def unwind_on_sigterm() -> None:
    """Make SIGTERM raise Terminated in this process (call from the main thread)."""
    import signal

    _HANDLER_PID[:] = [os.getpid()]
    signal.signal(signal.SIGTERM, raise_terminated)


def raise_terminated(signum, frame) -> None:
    if _HANDLER_PID and os.getpid() != _HANDLER_PID[0]:
        # A forked child (a dataloader worker) inherits the handler; it must end as SIGTERM ends a process, not
        # unwind into its parent's code (its exit would print a traceback).
        import signal

        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated()


def user_error_types() -> tuple[type[BaseException], ...]:
    # Imported lazily so that the CLI's import stays light.
    from swiftlite.media import MediaError
    from swiftlite.models.registry import UnknownModelError
    from swiftlite.templates.base import TemplateError

    return (UserError, MediaError, TemplateError, UnknownModelError)


def disk_full(error: BaseException, directory, unwritten: str) -> UserError | None:
    """A UserError naming the disk and the directory when `error` means the disk is full, else None.

    A full disk reaches us in several forms: OSError ENOSPC/EDQUOT from Python, "os error 28" from safetensors'
    Rust writer, and from torch.save only "unexpected pos" or "file write failed" (then the free space decides).
    unwritten: what was not written (the caller has removed what it had half written).
    """
    import shutil

    text = str(error)
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or (
        "os error 28" in text)
    directory = os.path.abspath(directory)
    existing = directory
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if not full and ("unexpected pos" in text or "file write failed" in text):
        full = free < (1 << 20)
    if not full:
        return None
    mount = existing
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return UserError(f"no space left on the disk mounted at {mount} ({free:,} bytes free), which holds {directory}: "
                     f"{unwritten}; free some space or choose another directory")
