"""User-facing errors: the CLI prints these as one line and exits non-zero; the server turns them into 4xx."""


class UserError(ValueError):
    """A mistake in what the user asked for (a flag, a path, a dataset row). The message says what and where."""


class Terminated(BaseException):
    """SIGTERM arrived (kill, docker stop, a scheduler). Raised in the main thread by the handler the CLI installs,
    so that the run unwinds as on Ctrl-C: dataloader workers are stopped, temp files removed, nothing half saved.
    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def user_error_types() -> tuple[type[BaseException], ...]:
    # Imported lazily so that the CLI's import stays light.
    from swiftlite.media import MediaError
    from swiftlite.models.registry import UnknownModelError
    from swiftlite.templates.base import TemplateError

    return (UserError, MediaError, TemplateError, UnknownModelError)
