"""ESMTP parameters of MAIL FROM and RCPT TO, checked and decoded.

MAIL takes SIZE (RFC 1870), BODY (RFC 6152), RET and ENVID (RFC 3461), SMTPUTF8 (RFC 6531)
and AUTH (RFC 4954, accepted and ignored); RCPT takes NOTIFY and ORCPT (RFC 3461). Pure
functions: they return the decoded values or raise ReplyError with the exact reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.smtp.address import ReplyError, is_xtext

Params = dict[str, str | None]  # as parse_path gives them: upper-case key -> value or None


@dataclass(frozen=True)
class MailParams:
    """What the MAIL FROM parameters said."""

    size: int = 0  # SIZE=, 0 when not given
    body: str = "7BIT"  # BODY= 7BIT or 8BITMIME
    smtputf8: bool = False
    ret: str | None = None  # RET= FULL or HDRS
    envid: str | None = None  # ENVID=, as xtext


@dataclass(frozen=True)
class RcptParams:
    """What the RCPT TO parameters said."""

    notify: str | None = None  # NOTIFY=, e.g. "SUCCESS,FAILURE"
    orcpt: str | None = None  # ORCPT=, e.g. "rfc822;user@example.com"


def mail_params(params: Params, *, esmtp: bool, max_size: int) -> MailParams:
    """Check MAIL FROM's parameters (esmtp: the client said EHLO, not HELO)."""
    if not esmtp and params:
        raise ReplyError(555, "5.5.4", "Error: parameters need EHLO")
    smtputf8 = "SMTPUTF8" in params
    if smtputf8 and params["SMTPUTF8"] is not None:
        raise ReplyError(501, "5.5.4", "Error: SMTPUTF8 takes no value")
    size, body, ret, envid = 0, "7BIT", None, None
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not (value.isascii() and value.isdigit()):
                raise ReplyError(501, "5.5.4", "Error: bad SIZE parameter")
            if int(value) > max_size:
                raise ReplyError(552, "5.3.4", "Message size exceeds fixed maximum message size")
            size = int(value)
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise ReplyError(501, "5.5.4", "Error: BODY must be 7BIT or 8BITMIME")
            body = value.upper()
        elif key == "RET":
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise ReplyError(501, "5.5.4", "Error: RET must be FULL or HDRS")
            ret = value.upper()
        elif key == "ENVID":
            if value is None or len(value) > 100 or not is_xtext(value):
                raise ReplyError(501, "5.5.4", "Error: bad ENVID parameter")
            envid = value
        elif key in ("SMTPUTF8", "AUTH"):
            pass  # AUTH=<> (RFC 4954 5) is accepted and ignored
        else:
            raise ReplyError(555, "5.5.4", f"Error: unsupported parameter {key}")
    return MailParams(size=size, body=body, smtputf8=smtputf8, ret=ret, envid=envid)


def rcpt_params(params: Params) -> RcptParams:
    """Check RCPT TO's parameters."""
    notify = orcpt = None
    for key, value in params.items():
        if key == "NOTIFY":
            words = (value or "").upper().split(",")
            if (
                not value
                or not set(words) <= {"NEVER", "SUCCESS", "FAILURE", "DELAY"}
                or ("NEVER" in words and len(words) > 1)
            ):
                raise ReplyError(501, "5.5.4", "Error: bad NOTIFY parameter")
            notify = ",".join(words)
        elif key == "ORCPT":
            if (
                not value
                or ";" not in value
                or len(value) > 500
                or not is_xtext(value.partition(";")[2])
            ):
                raise ReplyError(501, "5.5.4", "Error: bad ORCPT parameter")
            orcpt = value
        else:
            raise ReplyError(555, "5.5.4", f"Error: unsupported parameter {key}")
    return RcptParams(notify=notify, orcpt=orcpt)
