"""Money: exact decimals from partner strings, never binary floats."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from projections.goal_stats import format_amount

# A plain decimal: optional sign, digits with an optional fraction, optional exponent.
# ASCII digits only: Decimal() also reads other scripts' digits ("\u0663" is 3).
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")
MAX_INTEGER_DIGITS = 15
MAX_FRACTION_DIGITS = 8


class AmountError(ValueError):
    pass


def parse_amount(raw: str) -> Decimal:
    """The exact value of a partner's ``sum``; AmountError when it is not a plain number.

    Refused: unreplaced macros (``{sum}``), ``NaN``/``Infinity``, commas, digits other
    than ASCII's, anything with more than 15 integer digits or 8 decimal places (no
    currency needs more, and bounded values keep exact sums exact). Surrounding
    whitespace is ignored, and an exponent (``1e3``) is a decimal number too.
    """
    text = raw.strip()
    if "{" in text or "}" in text:
        raise AmountError("the amount holds an unreplaced macro")
    if not _DECIMAL.fullmatch(text):
        raise AmountError("the amount is not a decimal number")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
        raise AmountError("the amount is not a decimal number") from exc
    if not value.is_finite():  # pragma: no cover - the regex admits only finite numbers
        raise AmountError("the amount is not finite")
    _, digits, exponent = value.normalize().as_tuple()
    assert isinstance(exponent, int)
    if value and (
        max(0, len(digits) + exponent) > MAX_INTEGER_DIGITS or -exponent > MAX_FRACTION_DIGITS
    ):
        raise AmountError(
            f"the amount must have at most {MAX_INTEGER_DIGITS} integer digits "
            f"and {MAX_FRACTION_DIGITS} decimal places"
        )
    return value


__all__ = ["AmountError", "format_amount", "parse_amount"]
