"""User-facing errors: the CLI prints these as one line and exits non-zero; the server turns them into 4xx."""


class UserError(ValueError):
    """A mistake in what the user asked for (a flag, a path, a dataset row). The message says what and where."""


def user_error_types() -> tuple[type[BaseException], ...]:
    # Imported lazily so that the CLI's import stays light.
    from swiftlite.media import MediaError
    from swiftlite.models.registry import UnknownModelError
    from swiftlite.templates.base import TemplateError

    return (UserError, MediaError, TemplateError, UnknownModelError)
