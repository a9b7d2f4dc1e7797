"""The one error the link library raises for bad input (a corrupt link file, samples
that do not match, an impossible budget). It is a ``ValueError`` so pure code can
catch it as such; the application turns it into the one-line user error."""


class LinksError(ValueError):
    """Bad input to the link library; the message names the file, model or key."""
