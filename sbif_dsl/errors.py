"""Every exception a user can cause, in one place, so the CLI can map them to exit codes."""

MAX_PROBLEM_CHARS = 2000  # one problem is one line of at most this many characters


class SbifError(Exception):
    """Base class. `exit_code` is what the CLI returns."""

    exit_code = 1


class SpecError(SbifError):
    """A spec that cannot be accepted: one line per problem, with file, line and field path."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = [one_line(p) for p in problems]
        super().__init__("\n".join(self.problems))

    def __reduce__(self):  # errors travel from Ray workers to the driver by pickle
        return (type(self), (self.problems,))


class UsageError(SbifError):
    """Bad command-line input (an unknown checkpoint step, a malformed --set)."""

    exit_code = 2


class ContractError(SbifError):
    """User code (a `kind: python` factory) broke the model/data contract."""

    exit_code = 2


class NonFiniteError(SbifError):
    """A sampler chain produced NaN/Inf; the stage is not stored."""

    def __init__(self, chain: int, draw: int, context: str = ""):
        self.chain, self.draw, self.context = chain, draw, context
        where = f"{context}: " if context else ""
        super().__init__(
            f"{where}chain {chain} became non-finite at draw {draw}. "
            "hint: use a smaller sampler.eps or a larger sampler.gamma (localization)."
        )

    def __reduce__(self):
        return (type(self), (self.chain, self.draw, self.context))


class CacheLockedError(SbifError):
    """Another process holds the cache's write lock."""


class MissingResultsError(SbifError):
    """A report or query needs results that are not in the cache."""


def one_line(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """`text` as one printable line: control and other unprintable characters escaped, cut to `limit` characters
    (a spec's bytes reach messages through field names and values; they must not break lines or drive a terminal)."""
    text = str(text)
    n = len(text)
    text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if n > limit or len(text) > limit:
        text = text[: limit - 40] + f"… ({n} characters in all)"
    return text


STORAGE_HINT = (
    "hint: free space (or fix the permissions) and run again: completed stages are kept and nothing half-written "
    "counts as done; or use --cache on another disk"
)
