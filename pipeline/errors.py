"""User-facing errors: raised for bad input, printed as one line by the CLI."""


class UserError(Exception):
    """A problem with the user's input (file, key, camera, model...).

    The message names the offending thing; the CLI prints it as a single line
    and exits non-zero instead of showing a traceback.
    """
