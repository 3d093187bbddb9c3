"""How an exception is reported in one line of a message, for every module that wraps one."""


def describe_error(error):
    """An exception's message on one line (or its type when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__
