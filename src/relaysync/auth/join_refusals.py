"""Why a master refuses a join: the `code` of POST /api/join's refusal, beside its `detail`.

The agent words its error by the code (a token to renew, a name to change, a certificate
request the master cannot sign), and only a body with a code is the master's own: a 409 or 400
from a proxy in front of the master is shown as what it is, an unexpected answer.
"""

from __future__ import annotations

from enum import StrEnum


class JoinRefusal(StrEnum):
    """The codes of the master's refusals of a join, and their HTTP status (`status`)."""

    TOKEN = "token_refused"  # unknown, revoked or expired, or another fleet's join string
    NAME_INVALID = "name_invalid"  # not a DNS label, or the master's own
    NAME_TAKEN = "name_taken"  # another server has it, in some case
    CSR_REFUSED = "csr_refused"  # the certificate request is malformed or its key not EC

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS = {
    JoinRefusal.TOKEN: 403,
    JoinRefusal.NAME_INVALID: 400,
    JoinRefusal.NAME_TAKEN: 409,
    JoinRefusal.CSR_REFUSED: 400,
}
