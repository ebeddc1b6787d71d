"""The error of a build folder whose own state is damaged (exit status 6): a ledger part, ``build.json`` or
``publish.json`` that cannot be read, or a name in them that is not one the build writes. The message
names the file and what to do (most often ``emilia-pipe repair OUT``); nothing is deleted or published."""
from __future__ import annotations


class DamagedStateError(RuntimeError):
    """Part of a build's own state cannot be read or is not this build's."""
